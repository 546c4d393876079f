#!/usr/bin/env bash
# One sgdnet_jax command on every task of the current SLURM allocation, through srun.
#   launch/slurm_task.sh [--dry-run] COMMAND [ARGS...]   (in sbatch or salloc, from the repo root)
# The per-allocation work of every SLURM launcher: launch/slurm_gpu.sbatch runs `train "$@"` with
# it, and a sweep's job array (one allocation per array task, the same #SBATCH layout) runs
# `train` and then `evaluate` of its task's point with it, one call each.
# srun starts SLURM_NTASKS processes, one per GPU (see launch/slurm_gpu.sbatch), and each
# initialises jax.distributed through JAX's SLURM detection: --config.distributed=auto comes
# before ARGS, so a --config.distributed in ARGS wins.
# --dry-run prints the srun command instead of running it (outside an allocation too); --help
# prints this text. Both may stand anywhere on the line; any other option before COMMAND is refused.
# Environment: PYTHON (default .venv/bin/python), XLA_PYTHON_CLIENT_MEM_FRACTION (default 0.9).
# In a job with GPUs (SLURM_JOB_GPUS / SLURM_GPUS_ON_NODE) PYTHON's JAX must run on them
# (python -m sgdnet_jax.core.backend cuda), else the job stops before srun.
set -euo pipefail
usage="usage: launch/slurm_task.sh [--dry-run] COMMAND [ARGS...] (inside a SLURM allocation)"
for arg in "$@"; do
  if [[ "$arg" == -h || "$arg" == --help ]]; then
    awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}"
    exit 0
  fi
done
dry_run=0
words=()
for arg in "$@"; do
  if [[ "$arg" == --dry-run ]]; then dry_run=1; else words+=("$arg"); fi
done
set -- ${words[@]+"${words[@]}"}
if (($# == 0)); then
  echo "error: give the sgdnet_jax command to run (e.g. train); $usage" >&2
  exit 2
fi
command=$1
shift
if [[ "$command" == -* ]]; then
  echo "error: unknown option '$command' (this script takes --dry-run and --help); $usage" >&2
  exit 2
fi
if ((!dry_run)) && [[ -z "${SLURM_JOB_ID:-}" ]]; then
  echo "error: no SLURM allocation (SLURM_JOB_ID unset): run inside sbatch or salloc; $usage" >&2
  exit 2
fi
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
# Since Slurm 22.05 srun does not inherit the batch script's --cpus-per-task: pass it on.
step=(srun --kill-on-bad-exit=1 ${SLURM_CPUS_PER_TASK:+--cpus-per-task=${SLURM_CPUS_PER_TASK}}
  "${PYTHON:-.venv/bin/python}" -m sgdnet_jax.main "$command" --config.distributed=auto "$@")
if ((dry_run)); then
  printf '%q ' "${step[@]}" | sed 's/ $/\n/'
  exit 0
fi
# A job with GPUs needs JAX's CUDA build: stop in one line before srun if this venv has another.
if [[ -n "${SLURM_JOB_GPUS:-${SLURM_GPUS_ON_NODE:-}}" && "${SLURM_GPUS_ON_NODE:-}" != 0 ]]; then
  "${PYTHON:-.venv/bin/python}" -m sgdnet_jax.core.backend cuda
fi
echo "slurm: job ${SLURM_JOB_ID}${SLURM_ARRAY_TASK_ID:+ array task ${SLURM_ARRAY_TASK_ID}}:" \
  "${SLURM_NTASKS:-?} tasks on ${SLURM_JOB_NUM_NODES:-?} nodes (${SLURM_JOB_NODELIST:-?}): $command"
exec "${step[@]}"
