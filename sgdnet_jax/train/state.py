"""Train state, device mesh and shardings: sharding is configuration (`config.mesh`).

The mesh has a `data` axis and an optional `fsdp` axis. Batches are split over both; parameters
and optimiser state are replicated, or with fsdp > 1 sharded along their largest divisible
dimension when they are large enough to be worth it. The same code runs on one CPU, on fake CPU
devices and on a pod.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jnp.ndarray

  def variables(self):
    return {"params": self.params, "batch_stats": self.batch_stats}


def make_mesh(mesh_config: ml_collections.ConfigDict, devices=None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  fsdp = mesh_config.fsdp
  data = mesh_config.data if mesh_config.data > 0 else len(devices) // max(fsdp, 1)
  if data * fsdp != len(devices):
    raise ValueError(
      f"config.mesh data={mesh_config.data} x fsdp={fsdp} does not match the "
      f"{len(devices)} available devices"
    )
  return Mesh(np.asarray(devices).reshape(data, fsdp), BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_sharding(abstract_tree, mesh: Mesh, min_size: int):
  """Replicated leaves, or for fsdp > 1 the largest dimension divisible by fsdp sharded."""
  fsdp = mesh.shape["fsdp"]

  def spec(leaf):
    if fsdp == 1 or leaf.ndim == 0 or int(np.prod(leaf.shape)) < min_size:
      return replicated(mesh)
    for axis in np.argsort(leaf.shape)[::-1]:
      if leaf.shape[axis] % fsdp == 0:
        parts = [None] * leaf.ndim
        parts[axis] = "fsdp"
        return NamedSharding(mesh, P(*parts))
    return replicated(mesh)

  return jax.tree_util.tree_map(spec, abstract_tree)


def create_state(
  model, tx, image_shape: tuple[int, ...], rng: jax.Array, mesh: Mesh, min_size: int
) -> tuple[TrainState, TrainState]:
  """Initialises the state directly in its sharded layout; returns (state, its shardings)."""

  def init(rng):
    params_rng, state_rng = jax.random.split(rng)
    variables = model.init({"params": params_rng}, jnp.zeros(image_shape, jnp.float32), train=False)
    params = variables["params"]
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get("batch_stats", {}),
      opt_state=tx.init(params),
      rng=state_rng,
    )

  abstract = jax.eval_shape(init, rng)
  shardings = param_sharding(abstract, mesh, min_size)
  state = jax.jit(init, out_shardings=shardings)(rng)
  return state, shardings


def global_batch(local_batch, mesh: Mesh):
  """Per-host numpy arrays -> global jax arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return jax.tree_util.tree_map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
  )
