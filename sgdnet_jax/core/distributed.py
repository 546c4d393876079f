"""Multi-host start-up through `jax.distributed`, decided by JAX's own cluster detection.

`config.distributed`:
- 'auto' (default) initialises exactly where `jax.distributed.initialize()` can bootstrap a run
  of more than one process: `JAX_COORDINATOR_ADDRESS` set (with `JAX_NUM_PROCESSES` and
  `JAX_PROCESS_ID`, as `launch/local_multiprocess.sh` sets them), or one of JAX's cluster
  environments (`jax._src.clusters.ClusterEnv` subclasses, asked in JAX's order): SLURM inside an
  `srun` step, Open MPI's `mpirun`, a multi-host Cloud TPU VM (metadata server), a GKE TPU slice,
  an indexed Kubernetes Job (with `jax[k8s]`). An `salloc` shell (no job step), a one-task step
  and a single machine stay one process.
- 'on' always initialises, leaving the detection (and its errors) to JAX.
- 'off' never.

CPU processes use gloo collectives. Every run states at start what JAX got (`describe`).
"""

import itertools
import os

import jax
from jax._src import clusters
from jax.experimental import multihost_utils

from sgdnet_jax.core import backend, errors

MODES = ("auto", "on", "off")


def detected_cluster() -> type[clusters.ClusterEnv] | None:
  """The cluster environment `jax.distributed.initialize()` would bootstrap from, or None.

  The same classes in the same order as JAX's auto-detection, opt-in ones (mpi4py) excluded.
  """
  return next(
    (
      env
      for env in clusters.ClusterEnv._cluster_types  # JAX's own registry.
      if not env.opt_in_only_method and env.is_env_present()
    ),
    None,
  )


def local_gpu_ids(cluster: type[clusters.ClusterEnv] | None) -> list[int] | None:
  """The GPU ordinals this process claims, or None to keep JAX's choice.

  Under SLURM and Open MPI, JAX claims GPU `[local process id]`: right when every process of a
  node sees every GPU of the node (`launch/slurm_gpu.sbatch` asks for that). A launcher that
  already bound the process to one GPU (`srun --gpus-per-task=1`, `--gpu-bind`) leaves it one
  visible GPU, ordinal 0, and JAX's choice would name a GPU the process cannot see.
  """
  if cluster is None or os.environ.get("JAX_LOCAL_DEVICE_IDS"):
    return None
  if cluster.get_local_process_id() is None:
    return None
  visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
  return [0] if len(visible) == 1 else None


def _explicit_arguments() -> dict:
  """`JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`, which JAX itself does not read."""
  try:
    return {
      "num_processes": int(os.environ["JAX_NUM_PROCESSES"]),
      "process_id": int(os.environ["JAX_PROCESS_ID"]),
    }
  except (KeyError, ValueError) as error:
    raise errors.UserError(
      "JAX_COORDINATOR_ADDRESS is set without integer JAX_NUM_PROCESSES and JAX_PROCESS_ID: set "
      "both (launch/local_multiprocess.sh does) or unset JAX_COORDINATOR_ADDRESS"
    ) from error


_source = "one process"
_described = False


def initialize(mode: str = "auto"):
  """Calls `jax.distributed.initialize` once when `mode` and the environment ask for it.

  Then every process prints once what JAX gave it (`describe`): one line per process, since
  each claims devices of its own (under SLURM, GPU `SLURM_LOCALID` of its node).
  """
  global _source, _described
  if mode not in MODES:
    raise errors.ConfigError(
      f"config.distributed is {mode!r}: use one of {', '.join(MODES)} (--config.distributed=auto)"
    )
  if mode != "off" and not jax.distributed.is_initialized():
    cluster = detected_cluster()
    explicit = bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))
    if mode == "on" or explicit or (cluster is not None and cluster.get_process_count() > 1):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
      if explicit and cluster is None:
        jax.distributed.initialize(**_explicit_arguments())
        _source = "JAX_COORDINATOR_ADDRESS"
      else:
        jax.distributed.initialize(local_device_ids=local_gpu_ids(cluster))
        _source = cluster.name if cluster is not None else "jax.distributed"
      _connect_cpu_collectives()
  if not _described:
    _described = True
    print(describe(), flush=True)
    backend.check_expected()  # a launcher's SGDNET_JAX_PLATFORM: stop on another backend


def _connect_cpu_collectives():
  """Connects gloo's CPU collectives now, while every process is at the same point.

  Gloo connects the processes at their first collective and gives up after 30 s, and the first
  collective of a run (Orbax's directory sync) can come minutes apart on processes that compile
  at different speeds. The connection made here serves every later collective over all devices.
  """
  if jax.process_count() > 1 and jax.devices()[0].platform == "cpu":
    multihost_utils.sync_global_devices("sgdnet_jax:connect_cpu_collectives")


def describe() -> str:
  """One line: this process among how many, through what, its devices and the global ones.

  Local devices are named by their ordinal on the host (for GPUs, the CUDA device index).
  """
  local = [
    f"{d.platform}:{d.id if d.local_hardware_id is None else d.local_hardware_id}"
    for d in jax.local_devices()
  ]
  platforms = sorted({d.platform for d in jax.devices()})
  return (
    f"jax: process {jax.process_index()} of {jax.process_count()} ({_source}), "
    f"local devices {len(local)} [{', '.join(local)}], "
    f"global devices {jax.device_count()} ({', '.join(platforms)})"
  )


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

  def compile(self, *args):
    """Compiles for `args` unless done, then waits for every process; runs nothing."""
    if self._compiled is None:
      self._compiled = self._jitted.lower(*args).compile()
      barrier(f"compiled:{self._name}")

  def __call__(self, *args):
    self.compile(*args)
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


_exchanges = itertools.count()  # Every process exchanges in the same order: the same keys.


def all_values(name: str, value: str, timeout_s: float = 600.0) -> list[str]:
  """Every process's `value`, in process order, on every process (coordination service).

  For decisions all processes must take alike from what each saw on its own (whether it could
  restore a checkpoint), and for what each must hand to process 0 (its input position).
  """
  if jax.process_count() == 1:
    return [value]
  from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top

  client = jax_distributed.global_state.client
  key = f"{name}#{next(_exchanges)}"
  client.key_value_set(f"{key}/{jax.process_index()}", value)
  return [
    client.blocking_key_value_get(f"{key}/{index}", int(timeout_s * 1000))
    for index in range(jax.process_count())
  ]
