#!/usr/bin/env bash
# One sgdnet_jax command on every task of the current SLURM allocation, through srun.
#   launch/slurm_task.sh COMMAND [ARGS...]      (inside sbatch or salloc, in the repository root)
# The per-allocation work of every SLURM launcher: launch/slurm_gpu.sbatch runs `train "$@"` with
# it, and a sweep's job array (one allocation per array task, the same #SBATCH layout) runs
# `train` and then `evaluate` of its task's point with it, one call each.
# srun starts SLURM_NTASKS processes, one per GPU (see launch/slurm_gpu.sbatch), and each
# initialises jax.distributed through JAX's SLURM detection: --config.distributed=auto comes
# before ARGS, so a --config.distributed in ARGS wins.
# Environment: PYTHON (default .venv/bin/python), XLA_PYTHON_CLIENT_MEM_FRACTION (default 0.9).
set -euo pipefail
usage="usage: launch/slurm_task.sh COMMAND [ARGS...] (inside a SLURM allocation)"
command=${1:?$usage}
shift
if [[ -z "${SLURM_JOB_ID:-}" ]]; then
  echo "error: no SLURM allocation (SLURM_JOB_ID unset): run inside sbatch or salloc; $usage" >&2
  exit 2
fi
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
echo "slurm: job ${SLURM_JOB_ID}${SLURM_ARRAY_TASK_ID:+ array task ${SLURM_ARRAY_TASK_ID}}:" \
  "${SLURM_NTASKS:-?} tasks on ${SLURM_JOB_NUM_NODES:-?} nodes (${SLURM_JOB_NODELIST:-?}): $command"
# Since Slurm 22.05 srun does not inherit the batch script's --cpus-per-task: pass it on.
exec srun --kill-on-bad-exit=1 ${SLURM_CPUS_PER_TASK:+--cpus-per-task=${SLURM_CPUS_PER_TASK}} \
  "${PYTHON:-.venv/bin/python}" -m sgdnet_jax.main "$command" --config.distributed=auto "$@"
