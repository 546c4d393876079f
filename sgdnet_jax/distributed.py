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
    jax.distributed.initialize(
      coordinator_address=coordinator,
      num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
      process_id=int(os.environ["JAX_PROCESS_ID"]),
    )
  else:
    jax.distributed.initialize()


def barrier(name: str, timeout_s: float = 3600.0):
  """Waits until every process reaches `name`, through the coordination service.

  No device collective is involved, so it is safe before the first one: gloo connects its
  peers at the first collective and gives up after a fixed timeout, which a process still
  compiling (minutes on a loaded host) would exceed.
  """
  if jax.process_count() == 1:
    return
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top

  jax_distributed.global_state.client.wait_at_barrier(name, int(timeout_s * 1000))


class CompiledOnAllProcesses:
  """A jitted function compiled at its first call, which then waits for every process.

  Every later call reuses that executable, so its arguments must keep their shapes and
  shardings (fixed-size batches). The first collective then starts on all processes together.
  """

  def __init__(self, jitted, name: str):
    self._jitted, self._name, self._compiled = jitted, name, None

  def __call__(self, *args):
    if self._compiled is None:
      self._compiled = self._jitted.lower(*args).compile()
      barrier(f"compiled:{self._name}")
    return self._compiled(*args)


def from_process0(name: str, value: str, timeout_s: float = 600.0) -> str:
  """Process 0's `value` on every process, through the coordination service (no collective).

  Lets the other processes learn the outcome of a step only process 0 takes (the workdir lock),
  instead of waiting for it at the next barrier.
  """
  if jax.process_count() == 1:
    return value
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top

  client = jax_distributed.global_state.client
  if jax.process_index() == 0:
    client.key_value_set(name, value)
    return value
  return client.blocking_key_value_get(name, int(timeout_s * 1000))
