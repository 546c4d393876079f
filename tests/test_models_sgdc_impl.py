"""The patch-free SGDC dynamic convolution: its hand-written backward pass and its memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import test_util as jtu

from sgdnet_jax.models import sgdc
from tests import tolerances


def _inputs(seed, batch, height, width, channels, heads, kernel, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(batch, height, width, channels)), dtype)
  logits = rng.normal(size=(batch, height, width, heads, kernel * kernel))
  float_dtype = jnp.promote_types(dtype, jnp.float32)  # the kernels' and weights' dtype
  kernels = jax.nn.softmax(jnp.asarray(logits, float_dtype), axis=-1)
  weights = jnp.asarray(rng.normal(size=x.shape), float_dtype)
  return x, kernels, weights


@pytest.mark.parametrize(
  "heads,kernel,height,width", [(4, 7, 9, 6), (2, 5, 5, 8), (1, 3, 4, 4), (2, 1, 3, 5)]
)
def test_shifted_gradients_match_the_patch_implementation(heads, kernel, height, width):
  x, kernels, cotangent = _inputs(0, 2, height, width, 4 * heads, heads, kernel)
  expected_out, expected_vjp = jax.vjp(sgdc.dynamic_conv_patches, x, kernels)
  out = sgdc.dynamic_conv_shifted(x, kernels)
  got = jax.jit(lambda x, k, g: jax.vjp(sgdc.dynamic_conv_shifted, x, k)[1](g))(
    x, kernels, cotangent
  )
  # float32 sums of products on both sides: kernel^2 taps per output and input gradient, C / heads
  # channels per kernel gradient; the same maps on absolute values bound the products' sizes.
  terms = max(kernel * kernel, x.shape[-1] // heads)
  sizes = [sgdc.dynamic_conv_patches(jnp.abs(x), kernels)]
  sizes += jax.vjp(sgdc.dynamic_conv_patches, jnp.abs(x), kernels)[1](jnp.abs(cotangent))
  for g, e, size in zip([out, *got], [expected_out, *expected_vjp(cotangent)], sizes):
    assert g.shape == e.shape and g.dtype == e.dtype
    bound = 2 * tolerances.rounding(np.float32, terms, np.asarray(size))
    np.testing.assert_array_less(np.abs(np.asarray(g) - np.asarray(e)), bound + 1e-38)


def test_shifted_gradients_pass_numerical_checks_to_second_order():
  # In float64, where finite differences are accurate: check_grads' float64 default tolerances.
  with jax.enable_x64(True):
    x, kernels, _ = _inputs(1, 1, 5, 4, 4, 2, 3, jnp.float64)
    jtu.check_grads(sgdc.dynamic_conv_shifted, (x, kernels), order=2, modes=["rev"])


def test_shifted_keeps_input_dtype_and_float32_kernel_gradients_in_bfloat16():
  x, kernels, weights = _inputs(2, 1, 6, 6, 8, 2, 3, jnp.bfloat16)
  out = sgdc.dynamic_conv_shifted(x, kernels)
  assert out.dtype == jnp.bfloat16
  reference = sgdc.dynamic_conv_patches(x.astype(jnp.float32), kernels)
  # float32 accumulation of exact bfloat16 inputs (error ~ 9 float32 eps of the products' sizes),
  # then one rounding to bfloat16 (eps / 2 relative): within one bfloat16 eps of the sizes.
  size = np.asarray(sgdc.dynamic_conv_patches(jnp.abs(x).astype(jnp.float32), kernels))
  bound = tolerances.rounding(jnp.bfloat16, 1, size)
  np.testing.assert_array_less(np.abs(out.astype(jnp.float32) - reference), bound + 1e-38)
  loss = lambda x, k: jnp.sum(sgdc.dynamic_conv_shifted(x, k).astype(jnp.float32) * weights)
  dx, dk = jax.grad(loss, (0, 1))(x, kernels)
  assert dx.dtype == jnp.bfloat16 and dk.dtype == jnp.float32


def test_shifted_rejects_kernels_that_do_not_fit():
  x, kernels, _ = _inputs(3, 1, 4, 4, 8, 2, 3)
  with pytest.raises(ValueError, match="odd k\\*k taps"):
    sgdc.dynamic_conv_shifted(x, kernels[..., :8])
  with pytest.raises(ValueError, match="do not fit"):
    sgdc.dynamic_conv_shifted(x[:, :3], kernels)


def test_shifted_backward_never_holds_a_patch_sized_buffer():
  # 49 taps: the patch tensor alone is 49x the input. The patch-free backward's temporaries are a
  # few padded input-sized buffers (x, g and the kernels), and its peak stays far below a quarter
  # of the patch implementation's.
  x, kernels, weights = _inputs(4, 1, 32, 32, 64, 4, 7)
  x_bytes = x.size * x.dtype.itemsize

  def memory(fn):
    grad = jax.jit(jax.grad(lambda x, k: jnp.vdot(fn(x, k), weights), (0, 1)))
    analysis = grad.lower(x, kernels).compile().memory_analysis()
    peak = (
      analysis.temp_size_in_bytes + analysis.argument_size_in_bytes + analysis.output_size_in_bytes
    )
    return analysis.temp_size_in_bytes, peak

  (shifted_temp, shifted_peak), (patches_temp, patches_peak) = (
    memory(sgdc.dynamic_conv_shifted),
    memory(sgdc.dynamic_conv_patches),
  )
  assert patches_temp > 49 * x_bytes
  assert shifted_temp < 8 * x_bytes
  assert shifted_peak < 0.25 * patches_peak
