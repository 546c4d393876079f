"""Torch-compatible layers equal their PyTorch counterparts on fixed arrays."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sgdnet_jax.models import layers


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


def _nhwc(t):
  return np.transpose(t.detach().numpy(), (0, 2, 3, 1))


@pytest.mark.parametrize(
  "src,dst",
  [
    ((64, 64), (8, 8)),
    ((8, 8), (64, 64)),
    ((16, 16), (32, 32)),
    ((7, 5), (16, 11)),
    ((17, 13), (4, 6)),
    ((64, 64), (16, 16)),
  ],
)
def test_resize_bilinear_matches_torch_align_corners_false(src, dst):
  x = np.random.default_rng(0).normal(size=(2, *src, 3)).astype(np.float32)
  ours = layers.resize_bilinear(jnp.asarray(x), dst)
  ref = F.interpolate(_nchw(x), size=dst, mode="bilinear", align_corners=False)
  np.testing.assert_allclose(ours, _nhwc(ref), atol=1e-5)


@pytest.mark.parametrize("size", [8, 9, 7])
def test_pools_match_torch(size):
  x = np.random.default_rng(1).normal(size=(2, size, size + 1, 4)).astype(np.float32)
  t = _nchw(x)
  np.testing.assert_allclose(
    layers.max_pool_3x3_s2(jnp.asarray(x)), _nhwc(F.max_pool2d(t, 3, 2, 1)), atol=1e-6
  )
  for stride in (1, 2):
    np.testing.assert_allclose(
      layers.avg_pool_3x3_count_pad(jnp.asarray(x), stride),
      _nhwc(F.avg_pool2d(t, 3, stride, 1, count_include_pad=True)),
      atol=1e-6,
    )
    np.testing.assert_allclose(
      layers.avg_pool_ceil_exclude_pad(jnp.asarray(x), stride),
      _nhwc(F.avg_pool2d(t, stride, stride, ceil_mode=True, count_include_pad=False)),
      atol=1e-6,
    )


def test_conv2d_matches_torch_with_dilation_groups_and_stride():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 9, 9, 8)).astype(np.float32)
  for kwargs in (
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, padding=2, dilation=2),
    dict(kernel_size=3, padding=1, groups=8),
    dict(kernel_size=1),
    dict(kernel_size=1, stride=2),
    dict(kernel_size=3, padding=2, dilation=2, groups=8),
    dict(kernel_size=3, groups=8),
    dict(kernel_size=5, padding=2, groups=8),
  ):
    torch_conv = torch.nn.Conv2d(8, 8, **kwargs)
    module = layers.Conv2d(8, **dict(kwargs.items()))
    params = {
      "kernel": jnp.asarray(torch_conv.weight.detach().numpy().transpose(2, 3, 1, 0)),
      "bias": jnp.asarray(torch_conv.bias.detach().numpy()),
    }
    ours = module.apply({"params": params}, jnp.asarray(x))
    np.testing.assert_allclose(ours, _nhwc(torch_conv(_nchw(x))), atol=1e-5)


@pytest.mark.parametrize("im2col_max_pixels", [0, 256])
@pytest.mark.parametrize(
  "kernel_size,padding,dilation,groups,stride",
  [
    (1, 0, 1, 1, 1),
    (1, 0, 1, 1, 2),
    (3, 1, 1, 6, 1),
    (3, 2, 2, 6, 1),
    (3, 1, 1, 1, 1),
    (3, 2, 2, 1, 1),
    (3, 0, 1, 1, 1),
    (3, 1, 1, 1, 2),
  ],
)
def test_matmul_and_shifted_convolutions_have_the_generic_gradients(
  kernel_size, padding, dilation, groups, stride, im2col_max_pixels, monkeypatch
):
  # 1x1 (matrix product), depthwise (shifted sums) and conv2d_cpu (matrix-product backward; patch
  # matrix on small maps) against conv_general_dilated.
  monkeypatch.setattr(layers, "IM2COL_MAX_PIXELS", im2col_max_pixels)
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(2, 7, 8, 6)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(kernel_size, kernel_size, 6 // groups, 6)), jnp.float32)
  weights = jnp.asarray(rng.normal(size=(2, 8, 8, 6)), jnp.float32)
  module = layers.Conv2d(6, kernel_size, stride, padding, dilation, groups, use_bias=False)

  def generic(x, kernel):
    return jax.lax.conv_general_dilated(
      x,
      kernel,
      (stride, stride),
      ((padding, padding),) * 2,
      rhs_dilation=(dilation, dilation),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=groups,
    )

  def loss(fn):
    return lambda x, k: jnp.sum(
      jnp.sin(fn(x, k)) * weights[:, : fn(x, k).shape[1], : fn(x, k).shape[2]]
    )

  ours = lambda x, k: module.apply({"params": {"kernel": k}}, x)
  np.testing.assert_allclose(ours(x, kernel), generic(x, kernel), atol=1e-5)
  for got, expected in zip(
    jax.grad(loss(ours), (0, 1))(x, kernel), jax.grad(loss(generic), (0, 1))(x, kernel)
  ):
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-5)


def test_default_initialisers_have_torch_bounds():
  variables = layers.Conv2d(16, 3).init(jax.random.PRNGKey(0), jnp.zeros((1, 5, 5, 8)))
  bound = 1 / np.sqrt(8 * 9)
  for leaf in (variables["params"]["kernel"], variables["params"]["bias"]):
    assert float(jnp.max(jnp.abs(leaf))) <= bound and float(jnp.max(jnp.abs(leaf))) > 0.8 * bound


def test_batchnorm_train_step_moves_running_statistics_like_torch():
  x = np.random.default_rng(3).normal(2.0, 3.0, size=(4, 5, 6, 7)).astype(np.float32)
  torch_bn = torch.nn.BatchNorm2d(7)
  with torch.no_grad():
    torch_bn.weight.uniform_(0.5, 1.5)
    torch_bn.bias.uniform_(-1, 1)
  torch_bn.train()
  ref = torch_bn(_nchw(x))
  module = layers.BatchNorm()
  variables = {
    "params": {
      "scale": jnp.asarray(torch_bn.weight.detach().numpy()),
      "bias": jnp.asarray(torch_bn.bias.detach().numpy()),
    },
    "batch_stats": {"mean": jnp.zeros(7), "var": jnp.ones(7)},
  }
  ours, updated = module.apply(variables, jnp.asarray(x), train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(ours, _nhwc(ref), atol=1e-5)
  np.testing.assert_allclose(
    updated["batch_stats"]["mean"], torch_bn.running_mean.numpy(), atol=1e-6
  )
  np.testing.assert_allclose(updated["batch_stats"]["var"], torch_bn.running_var.numpy(), rtol=1e-6)
  torch_bn.eval()
  variables["batch_stats"] = updated["batch_stats"]
  np.testing.assert_allclose(
    module.apply(variables, jnp.asarray(x), train=False), _nhwc(torch_bn(_nchw(x))), atol=1e-5
  )


def test_safe_sqrt_value_and_gradient():
  x = jnp.array([0.0, 1e-20, 4.0])
  np.testing.assert_allclose(layers.safe_sqrt(x), [0.0, 0.0, 2.0])
  grad = jax.grad(lambda v: jnp.sum(layers.safe_sqrt(v)))(x)
  assert bool(jnp.all(jnp.isfinite(grad))) and float(grad[2]) == pytest.approx(0.25)
