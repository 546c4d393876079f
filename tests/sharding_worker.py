"""One real train step on 1 device and on 8 fake CPU devices in several layouts; prints JSON.

Run as a subprocess: the 8 fake CPU devices must be requested before JAX starts. Every layout
starts from the same parameters (initialised once, then placed with the layout's shardings) and
takes the same global batch. Compared with the 1-device step, in float64: the loss, the gradient
of every parameter leaf and the BatchNorm statistics the step updates (global under jit). The
gradient is read from Adam's first moment after the step, (1 - b1) * g exactly (no clipping, no
weight decay), so it is the gradient of the real jitted step. In float32 only the train-mode
loss (one forward pass, global BN statistics) of one 8-device layout is compared: float32 rounding
flips max-pool and ReLU subgradients at near-ties, so only float64 can show that two layouts
compute the same function.
"""

import json
import os
import sys

# After the flags the test run gives every process (tests/conftest.py).
os.environ["XLA_FLAGS"] = (
  f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
)
os.environ["JAX_PLATFORMS"] = "cpu"

import jax

jax.config.update("jax_default_prng_impl", "rbg")

import numpy as np
import optax

from sgdnet_jax import models
from sgdnet_jax.core import config_utils, sharding
from sgdnet_jax.train import loop, losses, optimizer
from sgdnet_jax.train import state as state_lib

# (data, fsdp) meshes compared with the 1-device step in float64; the first is the reference.
FLOAT64_MESHES = ((1, 1), (8, 1), (1, 8), (4, 2))
FLOAT32_MESH = (4, 2)
IMAGE_SHAPE = (8, 32, 32, 3)
# Gradient leaves below this fraction of the largest gradient are zero up to rounding: the biases
# of convolutions followed by BatchNorm, whose output does not depend on them.
ZERO_GRADIENT = 1e-12


def named_leaves(tree) -> dict[str, np.ndarray]:
  """{'resnet/conv1_0/kernel': array, ...} of a pytree, as host arrays."""
  path_leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {
    "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path): np.asarray(leaf)
    for path, leaf in path_leaves
  }


def train_step(config, initial_state, mesh_shape, devices, batch):
  """Loss, gradients and updated BN statistics of one jitted train step on `mesh_shape`."""
  config.mesh.data, config.mesh.fsdp = mesh_shape
  mesh = sharding.make_mesh(config.mesh, devices[: mesh_shape[0] * mesh_shape[1]])
  model = models.build(config.model)
  tx, schedule = optimizer.make_optimizer(config.optimizer, 10, 2)
  shardings = sharding.param_sharding(initial_state, mesh, min_size=256)
  state = jax.device_put(initial_state, shardings)
  step = loop.make_train_step(model, tx, schedule, config.loss, mesh, shardings)
  state, metrics = step(state, sharding.global_batch(batch, mesh))
  (adam,) = [s for s in state.opt_state if isinstance(s, optax.ScaleByAdamState)]
  return {
    "loss": float(metrics["loss"]),
    "grads": named_leaves(jax.tree_util.tree_map(lambda m: m / (1 - config.optimizer.b1), adam.mu)),
    "batch_stats": named_leaves(state.batch_stats),
    "sharded_param_leaves": sum(
      not leaf.sharding.is_fully_replicated for leaf in jax.tree_util.tree_leaves(state.params)
    ),
  }


def float32_loss(config, state, mesh_shape, devices, batch) -> float:
  """The train-mode loss of one float32 forward pass on `mesh_shape`, from `state` rounded."""
  config.mesh.data, config.mesh.fsdp = mesh_shape
  config.model.dtype = "float32"
  mesh = sharding.make_mesh(config.mesh, devices[: mesh_shape[0] * mesh_shape[1]])
  model = models.build(config.model)
  variables = jax.tree_util.tree_map(
    lambda x: np.asarray(x, np.float32), {"params": state.params, "batch_stats": state.batch_stats}
  )
  variables = jax.device_put(variables, sharding.param_sharding(variables, mesh, min_size=256))

  def loss(variables, batch):
    outputs, _ = model.apply(variables, batch["image"], train=True, mutable=["batch_stats"])
    return losses.total_loss(outputs, batch["mask"], config.loss)[0]

  return float(jax.jit(loss)(variables, sharding.global_batch(batch, mesh)))


def initial_state(config):
  """The host copy of the initial train state for `config.model.dtype`."""
  model = models.build(config.model)
  tx, _ = optimizer.make_optimizer(config.optimizer, 10, 2)
  config.mesh.data, config.mesh.fsdp = 1, 1
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  state, _ = state_lib.create_state(
    model, tx, (1,) + IMAGE_SHAPE[1:], jax.random.PRNGKey(0), mesh, min_size=256
  )
  return jax.device_get(state)


def compare(result, reference) -> dict:
  """Differences of one layout's step from the reference step, each relative to its scale."""
  grads, reference_grads = result["grads"], reference["grads"]
  largest = max(float(np.max(np.abs(g))) for g in reference_grads.values())
  grad_diffs = {
    name: float(np.max(np.abs(grads[name] - g))) / largest for name, g in reference_grads.items()
  }
  zero_gradient = sorted(
    name for name, g in reference_grads.items() if np.max(np.abs(g)) <= ZERO_GRADIENT * largest
  )
  stats_diffs = {
    name: float(np.max(np.abs(result["batch_stats"][name] - s)) / np.max(np.abs(s)))
    for name, s in reference["batch_stats"].items()
  }
  worst_grad = max(grad_diffs, key=grad_diffs.get)
  worst_stats = max(stats_diffs, key=stats_diffs.get)
  return {
    "loss": result["loss"],
    "loss_relative_diff": abs(result["loss"] - reference["loss"]) / abs(reference["loss"]),
    "grad_max_diff": grad_diffs[worst_grad],
    "grad_worst_leaf": worst_grad,
    "zero_gradient_leaves": zero_gradient,
    "zero_gradient_max_diff": max((grad_diffs[name] for name in zero_gradient), default=0.0),
    "batch_stats_max_diff": stats_diffs[worst_stats],
    "batch_stats_worst_leaf": worst_stats,
    "sharded_param_leaves": result["sharded_param_leaves"],
  }


def main():
  # The baseline variant compiles fastest; SGDC and SGE are per-sample and per-pixel operations.
  # Depth 14: one Res2Net block a stage has every kind of layer depth 50 has, a third less to
  # compile in each layout.
  # Dropout is off: the rbg generator's bits are not guaranteed to match across device layouts.
  # No gradient clipping or weight decay: Adam's first moment is then the scaled gradient.
  config = config_utils.load_config(
    "configs/test.py:variant=baseline",
    [
      "--config.model.trans_patch_sizes=(8, 4, 2, 1)",
      "--config.model.backbone_depth=14",
      "--config.model.head_dropout=0.0",
      "--config.optimizer.grad_clip=0.0",
      "--config.optimizer.weight_decay=0.0",
    ],
  )
  rng = np.random.default_rng(0)
  batch_size, height, width = IMAGE_SHAPE[:3]
  mask = np.zeros((batch_size, height, width), np.uint8)
  for i in range(batch_size):
    mask[i, 4 + i : 20 + i, 6 : 26 - i] = 1
  batch = {"image": rng.normal(size=IMAGE_SHAPE).astype(np.float32), "mask": mask}
  devices = jax.devices()
  assert len(devices) == 8, devices

  report = {"float64": {}}
  with jax.enable_x64(True):
    config.model.dtype = "float64"
    state = initial_state(config)
    reference, *layouts = FLOAT64_MESHES
    reference64 = train_step(config, state, reference, devices, batch)
    for mesh_shape in layouts:
      result = train_step(config, state, mesh_shape, devices, batch)
      report["float64"][f"{mesh_shape[0]}x{mesh_shape[1]}"] = compare(result, reference64)
  losses32 = [float32_loss(config, state, mesh, devices, batch) for mesh in ((1, 1), FLOAT32_MESH)]
  report["float32"] = {
    "mesh": FLOAT32_MESH,
    "loss": losses32,
    "loss_relative_diff": abs(losses32[1] - losses32[0]) / abs(losses32[0]),
    "loss_terms": batch_size * height * width,
  }
  print(json.dumps(report))


if __name__ == "__main__":
  sys.exit(main())
