"""ContMix ablation block: key table, parameter counts, NATTEN semantics, parity with PyTorch."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from sgdnet_jax import porting
from sgdnet_jax.models import contmix
from tests import reference_tables, tolerances
from third_party.torch_reference import contmix as torch_contmix

KEY_TABLE_NAME = "keys_contmix_dynconvblock_dim256_ctx16.tsv"
# The block parity runs in float64 on both sides: a float32 chain of normalisations, attention and
# pooling only agrees to a noise floor no bound derives. float64 rounding through the block stays
# below 1e-12 of its O(1) outputs; 1e-9 is the float64 bound of tests/conftest.py.
TOLERANCE = 1e-9


def _read_key_table():
  return reference_tables.read_table(KEY_TABLE_NAME)


def test_torch_reference_keys_match_table():
  block = torch_contmix.DynamicConvBlock(256, ctx_dim=64)
  parameters = dict(block.named_parameters())
  rows = []
  for key, tensor in block.state_dict().items():
    is_parameter = key in parameters
    rows.append(
      (
        key,
        str(tuple(tensor.shape)),
        str(tensor.dtype).replace("torch.", ""),
        "parameter" if is_parameter else "buffer",
        str(is_parameter and parameters[key].requires_grad),
        str(tensor.numel()),
      )
    )
  assert rows == _read_key_table()


@pytest.mark.parametrize("dim, expected", [(256, 938_972), (512, 3_543_804), (1024, 13_766_972)])
def test_trainable_parameter_count(dim, expected):
  model = contmix.DynamicConvBlock(dim)
  x = jax.ShapeDtypeStruct((1, 8, 8, dim), jnp.float32)
  ctx = jax.ShapeDtypeStruct((1, 8, 8, 16), jnp.float32)
  shapes = jax.eval_shape(lambda x, ctx: model.init(jax.random.key(0), x, ctx, train=False), x, ctx)
  count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes["params"]))
  assert count == expected


def test_neighborhood_aggregate_and_bias_follow_natten():
  """Brute force over explicit border-shifted windows, bias indexed by key - query position."""
  rng = np.random.default_rng(0)
  batch, height, width, groups, channels, kernel = 2, 6, 9, 2, 3, 5
  attn = rng.normal(size=(batch, height, width, groups, kernel * kernel)).astype(np.float32)
  value = rng.normal(size=(batch, height, width, groups, channels)).astype(np.float32)
  rpb = rng.normal(size=(groups, 2 * kernel - 1, 2 * kernel - 1)).astype(np.float32)
  expected_out = np.zeros_like(value)
  expected_bias = np.zeros((height, width, groups, kernel * kernel), np.float32)
  term_sizes = np.zeros_like(value)  # sum of |attn * value| over each window
  for i in range(height):
    for j in range(width):
      top = min(max(i - kernel // 2, 0), height - kernel)
      left = min(max(j - kernel // 2, 0), width - kernel)
      window = value[:, top : top + kernel, left : left + kernel].reshape(
        batch, kernel * kernel, groups, channels
      )
      expected_out[:, i, j] = np.einsum("bgk,bkgc->bgc", attn[:, i, j], window)
      term_sizes[:, i, j] = np.einsum("bgk,bkgc->bgc", np.abs(attn[:, i, j]), np.abs(window))
      for a in range(kernel):
        for b in range(kernel):
          expected_bias[i, j, :, a * kernel + b] = rpb[
            :, top + a - i + kernel - 1, left + b - j + kernel - 1
          ]
  out = contmix.neighborhood_aggregate(jnp.asarray(attn), jnp.asarray(value), kernel)
  bias = contmix.relative_position_bias(jnp.asarray(rpb), height, width, kernel)
  # Two float32 sums of kernel^2 terms each (ours and numpy's).
  bound = 2 * tolerances.rounding(np.float32, kernel * kernel, term_sizes.max())
  np.testing.assert_allclose(np.asarray(out), expected_out, rtol=0, atol=bound)
  np.testing.assert_array_equal(np.asarray(bias), expected_bias)


@pytest.mark.parametrize(
  "size, out_size", [((16, 16), (7, 7)), ((7, 8), (5, 6)), ((10, 7), (6, 4)), ((5, 3), (7, 7))]
)
def test_adaptive_avg_pool_matches_torch(size, out_size):
  x = torch.randn(2, 3, *size)
  expected = F.adaptive_avg_pool2d(x, out_size).permute(0, 2, 3, 1).numpy()
  out = contmix.adaptive_avg_pool(jnp.asarray(x.permute(0, 2, 3, 1).numpy()), out_size)
  # Two float32 averages (ours and torch's) of windows up to ceil(in / out) + 1 wide per axis.
  window = int(np.prod([-(-i // o) + 1 for i, o in zip(size, out_size)]))
  bound = 2 * tolerances.rounding(np.float32, window, float(x.abs().max()))
  np.testing.assert_allclose(np.asarray(out), expected, rtol=0, atol=bound)


def test_rejects_context_of_wrong_width():
  model = contmix.DynamicConvBlock(32, ctx_dim=64)
  with pytest.raises(ValueError, match="ctx_dim // 4 = 16"):
    model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 32)), jnp.zeros((1, 8, 8, 8)), train=False)


def _randomise(block: torch_contmix.DynamicConvBlock) -> None:
  """Non-trivial values for every norm, GRN and bias table (convs keep torch's random init)."""
  with torch.no_grad():
    for module in block.modules():
      if isinstance(module, nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.1)
        module.running_mean.normal_(0.0, 0.1)
        module.running_var.uniform_(0.5, 1.5)
      elif isinstance(module, nn.LayerNorm):
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.1)
      elif isinstance(module, torch_contmix.GRN):
        module.gamma.normal_(0.0, 0.5)
        module.beta.normal_(0.0, 0.1)
    block.rpb1.normal_(0.0, 1.0)
    block.rpb2.normal_(0.0, 1.0)


def _nhwc(t: torch.Tensor) -> jnp.ndarray:
  return jnp.asarray(t.permute(0, 2, 3, 1).numpy())


def _max_error(ours, theirs: torch.Tensor) -> float:
  return float(np.max(np.abs(np.asarray(ours) - theirs.permute(0, 2, 3, 1).numpy())))


@pytest.mark.parametrize(
  "train, height, width",
  [(False, 16, 16), (False, 9, 12), (False, 5, 6), (False, 6, 4), (True, 16, 16), (True, 5, 6)],
)
def test_parity_with_torch_reference(train, height, width):
  with jax.enable_x64(True):
    _check_parity_in_float64(train, height, width)


def _check_parity_in_float64(train, height, width):
  dim = 32
  torch.manual_seed(0)
  reference = torch_contmix.DynamicConvBlock(dim, ctx_dim=64).double()
  _randomise(reference)
  x = torch.randn(2, dim, height, width, dtype=torch.float64)
  ctx = torch.randn(2, 16, height, width, dtype=torch.float64)

  model = contmix.DynamicConvBlock(dim, ctx_dim=64, dtype=jnp.float64)
  template = jax.eval_shape(
    lambda: model.init(jax.random.key(0), _nhwc(x), _nhwc(ctx), train=False)
  )
  # Strict: every torch key fills a Flax leaf of the right shape, and every leaf is filled.
  variables = porting.convert_state_dict(reference.state_dict(), template).variables
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {np.dtype(np.float64)}

  reference.train(train)
  with torch.no_grad():
    expected_x, expected_ctx = reference(x, ctx)
  apply = jax.jit(
    lambda variables, x, ctx: model.apply(variables, x, ctx, train=train, mutable=["batch_stats"])
  )
  (out_x, out_ctx), updates = apply(variables, _nhwc(x), _nhwc(ctx))
  assert out_x.dtype == out_ctx.dtype == jnp.float64
  # Train mode moves the running statistics as torch does; eval mode leaves them alone.
  expected_stats = porting.convert_state_dict(reference.state_dict(), template).variables[
    "batch_stats"
  ]
  stats_error = jax.tree.map(
    lambda a, b: float(np.max(np.abs(np.asarray(a) - b))), updates["batch_stats"], expected_stats
  )
  assert max(jax.tree.leaves(stats_error)) <= TOLERANCE

  assert out_x.shape == (2, height, width, dim) and out_ctx.shape == (2, height, width, 16)
  assert float(jnp.std(out_x)) > 0.1  # the comparison is not between near-constant maps
  assert _max_error(out_x, expected_x) <= TOLERANCE
  assert _max_error(out_ctx, expected_ctx) <= TOLERANCE
