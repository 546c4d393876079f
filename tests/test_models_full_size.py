"""The one full-size forward: standard widths, 64x64 input, eval mode."""

import jax
import jax.numpy as jnp
import numpy as np

from configs import common
from sgdnet_jax import models


def test_full_width_sgdnet_forward_at_64px():
  config = common.model_config("sgdnet", 1)
  config.trans_patch_sizes = (8, 4, 2, 1)  # x1 is 16x16 at this input size.
  module = models.build(config)
  images = jax.random.normal(jax.random.PRNGKey(0), (1, 64, 64, 3))
  # At the tests' XLA flags (tests/conftest.py): 29 s here against 38 s at optimisation level 2.
  variables = jax.jit(lambda x: module.init(jax.random.PRNGKey(1), x))(images)
  out = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, images)
  assert out["o1"].shape == (1, 64, 64, 1) and out["edge"].shape == (1, 64, 64, 1)
  assert out["aux"]["x4"].shape == (1, 2, 2, 2048) and out["aux"]["guidance"].shape == (
    1,
    16,
    16,
    16,
  )
  for key in ("o1", "o2", "o3", "edge"):
    assert bool(jnp.all(jnp.isfinite(out[key])))
  edge = np.asarray(out["edge"])
  assert edge.min() >= 0.0 and edge.max() <= 1.0
