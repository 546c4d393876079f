#!/usr/bin/env bash
# `train` on one TPU VM worker, as launch/tpu_pod.sh run starts it there; records how it ended.
#   launch/tpu_worker.sh [--restart] STATUS_FILE TRAIN_ARGS...
# Runs `$PYTHON -m sgdnet_jax.main train TRAIN_ARGS` (PYTHON defaults to .venv/bin/python) and
# writes its exit status to STATUS_FILE when it ends (0 finished, 75 stopped with a checkpoint,
# anything else failed); that status is also this script's. With --restart, an exit 75 starts
# train again after RESTART_PAUSE_S seconds (default 30): the run resumes from its checkpoint.
# SIGTERM (launch/tpu_pod.sh stop) is passed on to train, which saves and exits 75, and ends the
# loop. --help prints this text.
set -uo pipefail
for arg in "$@"; do
  if [[ "$arg" == -h || "$arg" == --help ]]; then
    awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}"
    exit 0
  fi
done
usage="usage: launch/tpu_worker.sh [--restart] STATUS_FILE TRAIN_ARGS..."
restart=0
if [[ "${1:-}" == --restart ]]; then
  restart=1
  shift
fi
if (($# < 2)); then
  echo "error: give STATUS_FILE and train's arguments; $usage" >&2
  exit 2
fi
status_file=$1
shift
mkdir -p "$(dirname "$status_file")"
stopping=0
child=""
trap 'stopping=1; [[ -n "$child" ]] && kill -TERM "$child" 2>/dev/null' TERM
while :; do
  rm -f "$status_file"
  "${PYTHON:-.venv/bin/python}" -m sgdnet_jax.main train "$@" &
  child=$!
  # A SIGTERM between the start and `child=$!` found no child to pass on to: pass it on now.
  ((stopping)) && kill -TERM "$child" 2>/dev/null
  status=0
  wait "$child" || status=$?
  # A trapped SIGTERM interrupts `wait` (status > 128): wait again for the command's own status,
  # which bash keeps when the command ended meanwhile (127: the status was collected already);
  # again while it still runs and another SIGTERM interrupts that wait.
  if ((stopping)); then
    again=0
    wait "$child" 2>/dev/null || again=$?
    while ((again > 128)) && kill -0 "$child" 2>/dev/null; do
      again=0
      wait "$child" 2>/dev/null || again=$?
    done
    ((again != 127)) && status=$again
  fi
  echo "$status" >"$status_file"
  if ((restart && status == 75 && !stopping)); then
    echo "tpu_worker: train stopped with a checkpoint (exit 75): restarting in" \
      "${RESTART_PAUSE_S:-30} s"
    sleep "${RESTART_PAUSE_S:-30}"
    continue
  fi
  exit "$status"
done
