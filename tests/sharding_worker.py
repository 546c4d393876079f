"""One training step on 1 device and on 8 devices as 4 (data) x 2 (fsdp); prints JSON.

Run as a subprocess: the 8 fake CPU devices must be requested before JAX starts. Compared: the
loss and gradient norm of the real jitted train step, the BatchNorm statistics it updates (global
under jit), and the gradients, each relative to the scale of the whole quantity. Parameters after
the Adam update are not compared leaf by leaf: Adam's first step is lr * sign(g), and the biases of
convolutions followed by BatchNorm have an exactly zero true gradient, so their update is the
sign of rounding noise on any device layout.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax

jax.config.update("jax_default_prng_impl", "rbg")

import numpy as np

from sgdnet_jax import config_utils, models
from sgdnet_jax.train import loop, losses, optimizer
from sgdnet_jax.train import state as state_lib


def run(config, mesh_shape, devices, batch):
  config.mesh.data, config.mesh.fsdp = mesh_shape
  mesh = state_lib.make_mesh(config.mesh, devices)
  model = models.build(config.model)
  tx, schedule = optimizer.make_optimizer(config.optimizer, 10, 20)
  state, shardings = state_lib.create_state(
    model, tx, (1, 32, 32, 3), jax.random.PRNGKey(0), mesh, min_size=256
  )
  global_batch = state_lib.global_batch(batch, mesh)

  def gradients(params, batch_stats, batch):
    def loss_fn(params):
      outputs, _ = model.apply(
        {"params": params, "batch_stats": batch_stats},
        batch["image"],
        train=True,
        mutable=["batch_stats"],
      )
      return losses.total_loss(outputs, batch["mask"], config.loss)[0]

    return jax.grad(loss_fn)(params)

  grads = jax.jit(gradients)(state.params, state.batch_stats, global_batch)
  step = loop.make_train_step(model, tx, schedule, config.loss, mesh, shardings)
  sharded = sum(
    not leaf.sharding.is_fully_replicated for leaf in jax.tree_util.tree_leaves(state.params)
  )
  state, metrics = step(state, global_batch)
  as_numpy = lambda tree: [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]
  return {
    "loss": float(metrics["loss"]),
    "grad_norm": float(metrics["grad_norm"]),
    "grads": as_numpy(grads),
    "batch_stats": as_numpy(state.batch_stats),
    "sharded": sharded,
  }


def tree_relative_diff(a, b):
  scale = max(float(np.max(np.abs(x))) for x in b)
  return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b)) / scale


def main():
  # The baseline variant compiles fastest; SGDC and SGE are per-sample and per-pixel operations.
  # Dropout is off: the rbg generator's bits are not guaranteed to match across device layouts.
  config = config_utils.load_config(
    "configs/test.py:variant=baseline",
    ["--config.model.trans_patch_sizes=(8, 4, 2, 1)", "--config.model.head_dropout=0.0"],
  )
  rng = np.random.default_rng(0)
  mask = np.zeros((8, 32, 32), np.uint8)
  for i in range(8):
    mask[i, 4 + i : 20 + i, 6 : 26 - i] = 1
  batch = {"image": rng.normal(size=(8, 32, 32, 3)).astype(np.float32), "mask": mask}
  devices = jax.devices()
  assert len(devices) == 8, devices
  reference = run(config, (1, 1), devices[:1], batch)
  sharded = run(config, (4, 2), devices, batch)
  report = {
    "loss": [reference["loss"], sharded["loss"]],
    "loss_relative_diff": abs(sharded["loss"] - reference["loss"]) / abs(reference["loss"]),
    "grad_norm_relative_diff": abs(sharded["grad_norm"] - reference["grad_norm"])
    / reference["grad_norm"],
    "grads_relative_diff": tree_relative_diff(sharded["grads"], reference["grads"]),
    "batch_stats_max_diff": max(
      float(np.max(np.abs(x - y) / np.maximum(1.0, np.abs(y))))
      for x, y in zip(sharded["batch_stats"], reference["batch_stats"])
    ),
    "sharded_param_leaves": sharded["sharded"],
  }
  print(json.dumps(report))


if __name__ == "__main__":
  sys.exit(main())
