"""Torch-compatible layers equal their PyTorch counterparts on fixed arrays.

The parities run in float64 on both sides (`jax.enable_x64`, torch doubles), so the bounds are
float64 rounding of the reductions involved (tests/conftest.py); the matrix-product convolution
paths are checked in float32 and float64.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sgdnet_jax.models import layers
from tests import tolerances


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
def test_resize_bilinear_matches_torch_align_corners_false(src, dst, x64):
  x = np.random.default_rng(0).normal(size=(2, *src, 3))
  ours = layers.resize_bilinear(jnp.asarray(x), dst)
  ref = F.interpolate(_nchw(x), size=dst, mode="bilinear", align_corners=False)
  # Four taps per output with weights in [0, 1], each weight a few roundings: 8 terms per side.
  bound = 2 * tolerances.rounding(np.float64, 8, np.abs(x).max())
  np.testing.assert_allclose(ours, _nhwc(ref), rtol=0, atol=bound)


@pytest.mark.parametrize("size", [8, 9, 7])
def test_pools_match_torch(size, x64):
  x = np.random.default_rng(1).normal(size=(2, size, size + 1, 4))
  t = _nchw(x)
  np.testing.assert_array_equal(
    layers.max_pool_3x3_s2(jnp.asarray(x)), _nhwc(F.max_pool2d(t, 3, 2, 1))
  )
  bound = 2 * tolerances.rounding(np.float64, 9, np.abs(x).max())  # averages of up to 9 values
  for stride in (1, 2):
    np.testing.assert_allclose(
      layers.avg_pool_3x3_count_pad(jnp.asarray(x), stride),
      _nhwc(F.avg_pool2d(t, 3, stride, 1, count_include_pad=True)),
      rtol=0,
      atol=bound,
    )
    np.testing.assert_allclose(
      layers.avg_pool_ceil_exclude_pad(jnp.asarray(x), stride),
      _nhwc(F.avg_pool2d(t, stride, stride, ceil_mode=True, count_include_pad=False)),
      rtol=0,
      atol=bound,
    )


def test_conv2d_matches_torch_with_dilation_groups_and_stride(x64):
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 9, 9, 8))
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
    torch_conv = torch.nn.Conv2d(8, 8, **kwargs).double()
    module = layers.Conv2d(8, **dict(kwargs.items()))
    params = {
      "kernel": jnp.asarray(torch_conv.weight.detach().numpy().transpose(2, 3, 1, 0)),
      "bias": jnp.asarray(torch_conv.bias.detach().numpy()),
    }
    ours = module.apply({"params": params}, jnp.asarray(x))
    assert ours.dtype == jnp.float64
    # kh * kw * C / groups products and the bias per output, |weight| <= 1 / sqrt(fan_in).
    terms = kwargs["kernel_size"] ** 2 * 8 // kwargs.get("groups", 1) + 1
    bound = 2 * tolerances.rounding(np.float64, terms, terms * np.abs(x).max())
    np.testing.assert_allclose(ours, _nhwc(torch_conv(_nchw(x))), rtol=0, atol=bound)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
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
  kernel_size, padding, dilation, groups, stride, im2col_max_pixels, dtype, monkeypatch
):
  # 1x1 (matrix product), depthwise (shifted sums) and conv2d_cpu (matrix-product backward; patch
  # matrix on small maps) against conv_general_dilated, in float32 and in float64.
  monkeypatch.setattr(layers, "IM2COL_MAX_PIXELS", im2col_max_pixels)
  with jax.enable_x64(dtype == jnp.float64):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2, 7, 8, 6)), dtype)
    kernel = jnp.asarray(rng.normal(size=(kernel_size, kernel_size, 6 // groups, 6)), dtype)
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

    ours = lambda x, k: module.apply({"params": {"kernel": k}}, x)
    expected, generic_vjp = jax.vjp(generic, x, kernel)
    got, ours_vjp = jax.vjp(ours, x, kernel)
    assert got.dtype == expected.dtype == dtype
    cotangent = jnp.asarray(rng.normal(size=expected.shape), dtype)
    # Each result is a sum of products: forward over kh * kw * C / groups, the input gradient over
    # as many, the kernel gradient over the output pixels. The same linear maps applied to
    # absolute values give the sum of the products' magnitudes.
    terms = max(kernel_size**2 * 6 // groups, int(np.prod(expected.shape[:3])))
    sizes = [generic(jnp.abs(x), jnp.abs(kernel))]
    sizes += jax.vjp(generic, jnp.abs(x), jnp.abs(kernel))[1](jnp.abs(cotangent))
    for a, b, size in zip([got, *ours_vjp(cotangent)], [expected, *generic_vjp(cotangent)], sizes):
      bound = 2 * tolerances.rounding(dtype, terms, np.asarray(size))
      np.testing.assert_array_less(
        np.abs(np.asarray(a) - np.asarray(b)), bound + np.finfo(dtype).tiny
      )


def test_default_initialisers_have_torch_bounds():
  variables = layers.Conv2d(16, 3).init(jax.random.PRNGKey(0), jnp.zeros((1, 5, 5, 8)))
  bound = 1 / np.sqrt(8 * 9)
  for leaf in (variables["params"]["kernel"], variables["params"]["bias"]):
    assert float(jnp.max(jnp.abs(leaf))) <= bound and float(jnp.max(jnp.abs(leaf))) > 0.8 * bound


def test_batchnorm_train_step_moves_running_statistics_like_torch(x64):
  x = np.random.default_rng(3).normal(2.0, 3.0, size=(4, 5, 6, 7))
  torch_bn = torch.nn.BatchNorm2d(7).double()
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
  assert ours.dtype == updated["batch_stats"]["mean"].dtype == jnp.float64
  # Statistics of n = 120 values per channel: relative to their magnitudes, within n eps (float64)
  # on each side; the normalised outputs are O(|x| / std) = O(10).
  n = x.size // x.shape[-1]
  bound = 2 * tolerances.rounding(np.float64, n, np.abs(x).max())
  np.testing.assert_allclose(ours, _nhwc(ref), rtol=0, atol=bound)
  np.testing.assert_allclose(
    updated["batch_stats"]["mean"], torch_bn.running_mean.numpy(), rtol=0, atol=bound
  )
  np.testing.assert_allclose(
    updated["batch_stats"]["var"],
    torch_bn.running_var.numpy(),
    rtol=2 * tolerances.rounding(np.float64, n),
  )
  torch_bn.eval()
  variables["batch_stats"] = updated["batch_stats"]
  np.testing.assert_allclose(
    module.apply(variables, jnp.asarray(x), train=False),
    _nhwc(torch_bn(_nchw(x))),
    rtol=0,
    atol=bound,
  )


def test_safe_sqrt_value_and_gradient():
  x = jnp.array([0.0, 1e-20, 4.0])
  np.testing.assert_allclose(layers.safe_sqrt(x), [0.0, 0.0, 2.0])
  grad = jax.grad(lambda v: jnp.sum(layers.safe_sqrt(v)))(x)
  assert bool(jnp.all(jnp.isfinite(grad))) and float(grad[2]) == pytest.approx(0.25)


@pytest.mark.parametrize("height", [8, 24])  # patch-matrix forward on 2x8x8 maps, convolution above
def test_lax_and_cpu_matmul_convolutions_agree(height):
  rng = np.random.default_rng(4)
  channels, kernel_size = 16, 3
  x = jnp.asarray(rng.normal(size=(2, height, height, channels)), jnp.float32)
  module = layers.Conv2d(channels, kernel_size, padding=2, dilation=2)
  variables = module.init(jax.random.PRNGKey(0), x)

  def value_and_grads(impl):
    def loss(variables, x):
      with layers.conv_impl(impl):
        return jnp.sum(jnp.sin(module.apply(variables, x)))

    with layers.conv_impl(impl):
      y = module.apply(variables, x)
    return y, jax.grad(loss, (0, 1))(variables, x)

  # Each output sums kernel_size**2 * channels float32 products.
  # Outputs and the input gradient sum kernel_size**2 * channels float32 products, the kernel
  # gradient one per pixel: the error bound scales with the larger reduction and the magnitude.
  reduction = max(kernel_size**2 * channels, x.size // channels)
  lax_result, matmul_result = value_and_grads("lax"), value_and_grads("cpu_matmul")
  for got, expected in zip(
    jax.tree_util.tree_leaves(matmul_result), jax.tree_util.tree_leaves(lax_result)
  ):
    scale = max(1.0, float(np.max(np.abs(expected))))
    np.testing.assert_allclose(got, expected, atol=np.finfo(np.float32).eps * reduction * scale)


def test_cpu_matmul_convolution_exports_with_a_symbolic_batch():
  module = layers.Conv2d(4, 3, padding=1)
  variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 4)))
  spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape("n, 8, 8, 4"), jnp.float32)

  def forward(x):
    with layers.conv_impl("cpu_matmul"):
      return module.apply(variables, x)

  exported = jax.export.export(jax.jit(forward), platforms=["cpu"])(spec)
  assert "stablehlo.convolution" not in exported.mlir_module()  # 8x8 maps: the patch matrix.
  x = np.random.default_rng(5).normal(size=(3, 8, 8, 4)).astype(np.float32)
  with layers.conv_impl("lax"):
    expected = module.apply(variables, x)
  np.testing.assert_allclose(exported.call(x), expected, atol=8 * np.finfo(np.float32).eps * 36)
