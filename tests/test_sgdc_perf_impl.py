"""The patch-free SGDC dynamic convolution: its hand-written backward pass and its memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import test_util as jtu

from sgdnet_jax.models import sgdc


def _inputs(seed, batch, height, width, channels, heads, kernel, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(batch, height, width, channels)), dtype)
  logits = rng.normal(size=(batch, height, width, heads, kernel * kernel))
  kernels = jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  weights = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  return x, kernels, weights


@pytest.mark.parametrize(
  "heads,kernel,height,width", [(4, 7, 9, 6), (2, 5, 5, 8), (1, 3, 4, 4), (2, 1, 3, 5)]
)
def test_shifted_gradients_match_the_patch_implementation(heads, kernel, height, width):
  x, kernels, weights = _inputs(0, 2, height, width, 4 * heads, heads, kernel)
  loss = lambda fn: lambda x, k: jnp.sum(jnp.sin(fn(x, k)) * weights)
  np.testing.assert_allclose(
    sgdc.dynamic_conv_shifted(x, kernels), sgdc.dynamic_conv_patches(x, kernels), atol=1e-5
  )
  expected = jax.grad(loss(sgdc.dynamic_conv_patches), (0, 1))(x, kernels)
  got = jax.jit(jax.grad(loss(sgdc.dynamic_conv_shifted), (0, 1)))(x, kernels)
  for g, e in zip(got, expected):
    assert g.shape == e.shape and g.dtype == e.dtype
    np.testing.assert_allclose(g, e, atol=1e-5, rtol=1e-5)


def test_shifted_gradients_pass_numerical_checks_to_second_order():
  x, kernels, _ = _inputs(1, 1, 5, 4, 4, 2, 3)
  jtu.check_grads(
    sgdc.dynamic_conv_shifted, (x, kernels), order=2, modes=["rev"], atol=2e-2, rtol=2e-2
  )


def test_shifted_keeps_input_dtype_and_float32_kernel_gradients_in_bfloat16():
  x, kernels, weights = _inputs(2, 1, 6, 6, 8, 2, 3, jnp.bfloat16)
  out = sgdc.dynamic_conv_shifted(x, kernels)
  assert out.dtype == jnp.bfloat16
  reference = sgdc.dynamic_conv_patches(x.astype(jnp.float32), kernels)
  np.testing.assert_allclose(out.astype(jnp.float32), reference, atol=3e-2)
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
