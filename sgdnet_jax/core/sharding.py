"""Device mesh and shardings: sharding is configuration (`config.mesh`).

The mesh has a `data` axis and an optional `fsdp` axis. Batches are split over both; parameters
and optimiser state are replicated, or with fsdp > 1 sharded along their largest divisible
dimension when they are large enough to be worth it. The same code runs on one CPU, on fake CPU
devices and on a pod; training and evaluation both lay their arrays out through here.
"""

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sgdnet_jax.core import errors

BATCH_AXES = ("data", "fsdp")


def make_mesh(mesh_config: ml_collections.ConfigDict, devices=None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  fsdp = mesh_config.fsdp
  data = mesh_config.data if mesh_config.data > 0 else len(devices) // max(fsdp, 1)
  if data * fsdp != len(devices):
    raise errors.ConfigError(
      f"config.mesh data={mesh_config.data} x fsdp={fsdp} does not match the "
      f"{len(devices)} available devices; set config.mesh.data=0 (all devices) or a product that "
      "matches"
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


def global_batch(local_batch, mesh: Mesh):
  """Per-host numpy arrays -> global jax arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return jax.tree_util.tree_map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
  )
