"""Multi-host start-up through `jax.distributed`, driven by the environment.

`config.distributed`: 'auto' (default) initialises when the environment describes more than one
process: SLURM (`SLURM_NTASKS` > 1), an explicit coordinator (`JAX_COORDINATOR_ADDRESS` with
`JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`, as `launch/local_multiprocess.sh` sets), or a multi-host
TPU slice (`TPU_WORKER_HOSTNAMES` naming several hosts); 'off' never; 'on' always, letting JAX
detect the cluster. CPU processes use gloo collectives.
"""
import os

import jax

MODES = ("auto", "on", "off")


def _multi_process_environment() -> bool:
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return True
  return len([h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1


def initialize(mode: str = "auto"):
  """Calls `jax.distributed.initialize` once when `mode` and the environment ask for it."""
  if mode not in MODES:
    raise ValueError(f"config.distributed must be one of {MODES}, got {mode!r}")
  if mode == "off" or (mode == "auto" and not _multi_process_environment()):
    return
  if jax.distributed.is_initialized():
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  coordinator = os.environ.get("JAX_COORDINATOR_ADDRESS")
  if coordinator:
    jax.distributed.initialize(coordinator_address=coordinator,
                               num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                               process_id=int(os.environ["JAX_PROCESS_ID"]))
  else:
    jax.distributed.initialize()
