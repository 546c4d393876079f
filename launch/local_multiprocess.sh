#!/usr/bin/env bash
# Several JAX processes on one machine over loopback (gloo CPU collectives): a multi-host rehearsal.
#   launch/local_multiprocess.sh NUM_PROCESSES --config configs/demo.py --workdir runs/mp [--config.x=y]
# Each process gets one CPU device; process 0 writes metrics and the config. Logs: <workdir>/process_<i>.log
set -euo pipefail
num_processes=${1:?usage: $0 NUM_PROCESSES train-args...}
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
