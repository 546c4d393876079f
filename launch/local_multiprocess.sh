#!/usr/bin/env bash
# Several JAX processes on one machine over loopback (gloo CPU collectives): a multi-host rehearsal.
#   launch/local_multiprocess.sh NUM_PROCESSES --config configs/demo.py --workdir runs/mp [--config.x=y]
# Each process gets one CPU device; process 0 writes metrics and the config. Logs: <workdir>/process_<i>.log
# --help (anywhere) prints this text; the other arguments after NUM_PROCESSES are train's.
set -euo pipefail
usage="usage: launch/local_multiprocess.sh NUM_PROCESSES --config CONFIG --workdir DIR [overrides]"
for arg in "$@"; do
  if [[ "$arg" == -h || "$arg" == --help ]]; then
    awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}"
    exit 0
  fi
done
if [[ ! "${1:-}" =~ ^[1-9][0-9]*$ ]]; then
  echo "error: NUM_PROCESSES must be a positive number, got '${1:-}'; $usage" >&2
  exit 2
fi
num_processes=$1
shift
workdir=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [[ "${args[$i]}" == "--workdir" ]] && workdir="${args[$((i + 1))]}"
done
[[ -n "$workdir" ]] || { echo "error: pass --workdir DIR" >&2; exit 2; }
mkdir -p "$workdir"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python=${PYTHON:-.venv/bin/python}
pids=()
for ((i = 0; i < num_processes; i++)); do
  JAX_PLATFORMS=cpu JAX_COORDINATOR_ADDRESS="127.0.0.1:${port}" JAX_NUM_PROCESSES="$num_processes" \
  JAX_PROCESS_ID="$i" XLA_FLAGS="--xla_force_host_platform_device_count=1" \
    "$python" -m sgdnet_jax.main train "$@" >"$workdir/process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
