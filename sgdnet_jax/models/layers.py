"""Torch-compatible building blocks: convolutions, normalisation, resizing, initialisers.

Every layer here mirrors one PyTorch layer closely enough that weights port one-to-one and
outputs agree to float precision: explicit paddings, PyTorch default initialisers and BatchNorm
with PyTorch's running-statistics update. Layout is NHWC throughout.
"""
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]
IntPair = Union[int, Tuple[int, int]]

# PyTorch's default Conv/Linear init: kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in)).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# kaiming_normal(mode='fan_out', nonlinearity='relu'), used by Res2Net's convolutions.
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _pair(value: IntPair) -> Tuple[int, int]:
  return (value, value) if isinstance(value, int) else tuple(value)


def torch_default_bias_init(fan_in: int) -> Initializer:
  """PyTorch's default bias init, U(+-1/sqrt(fan_in)), which depends on the kernel's fan-in."""
  bound = 1.0 / np.sqrt(fan_in) if fan_in > 0 else 0.0

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class Conv2d(nn.Module):
  """`torch.nn.Conv2d` in NHWC with explicit symmetric padding.

  Parameters are `kernel` (kh, kw, in/groups, out) and `bias` (out,).
  """
  features: int
  kernel_size: IntPair = 1
  stride: IntPair = 1
  padding: IntPair = 0
  dilation: IntPair = 1
  groups: int = 1
  use_bias: bool = True
  kernel_init: Initializer = torch_default_kernel_init
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kh, kw = _pair(self.kernel_size)
    in_features = x.shape[-1]
    if in_features % self.groups:
      raise ValueError(f"{self.name}: {in_features} input channels not divisible by groups={self.groups}")
    kernel = self.param("kernel", self.kernel_init, (kh, kw, in_features // self.groups, self.features))
    ph, pw = _pair(self.padding)
    dtype = self.dtype or x.dtype
    y = jax.lax.conv_general_dilated(
        x.astype(dtype), kernel.astype(dtype),
        window_strides=_pair(self.stride),
        padding=((ph, ph), (pw, pw)),
        rhs_dilation=_pair(self.dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=self.groups)
    if self.use_bias:
      fan_in = kh * kw * in_features // self.groups
      bias = self.param("bias", torch_default_bias_init(fan_in), (self.features,))
      y = y + bias.astype(dtype)
    return y


class BatchNorm(nn.Module):
  """`torch.nn.BatchNorm2d` (eps 1e-5, torch momentum 0.1 = flax momentum 0.9).

  Normalises with the biased batch variance and updates `batch_stats.var` with the unbiased one,
  exactly as PyTorch does, so running statistics move the same way after a step. Statistics and
  the normalisation are computed in float32 whatever the compute dtype. Under `jit` with a
  globally sharded batch the mean and variance are global (synchronised BN).
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,))
    bias = self.param("bias", nn.initializers.zeros, (features,))
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
    x32 = x.astype(jnp.float32)
    if train:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x32, axes)
      var = jnp.mean(jnp.square(x32 - mean), axes)
      if not self.is_initializing():
        count = int(np.prod([x.shape[a] for a in axes]))
        unbiased = var * (count / max(count - 1, 1))
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased
    else:
      mean, var = ra_mean.value, ra_var.value
    mul = scale * jax.lax.rsqrt(var + self.epsilon)
    y = x32 * mul + (bias - mean * mul)
    return y.astype(self.dtype or x.dtype)


class LayerNorm(nn.Module):
  """Channels-last LayerNorm over C (PyTorch `nn.LayerNorm(C)` on NHWC), computed in float32."""
  epsilon: float = 1e-6
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,))
    bias = self.param("bias", nn.initializers.zeros, (features,))
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, -1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), -1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
    return y.astype(self.dtype or x.dtype)


class PReLU(nn.Module):
  """`torch.nn.PReLU()`: one shared slope, initialised to 0.25."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    slope = self.param("weight", nn.initializers.constant(0.25), (1,))
    return jnp.where(x >= 0, x, slope.astype(x.dtype) * x)


class ConvBN(nn.Module):
  """Conv2d followed by BatchNorm and an optional activation.

  `conv_name`/`bn_name` follow the upstream attribute names so that PyTorch keys map one-to-one
  (for example `conv`/`bn` in CTO's Conv1x1, `0`/`1` in an `nn.Sequential`).
  """
  features: int
  kernel_size: IntPair = 1
  stride: IntPair = 1
  padding: IntPair = 0
  dilation: IntPair = 1
  use_bias: bool = False
  activation: Optional[Callable[[Array], Array]] = None
  conv_name: str = "conv"
  bn_name: str = "bn"
  kernel_init: Initializer = torch_default_kernel_init
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    x = Conv2d(self.features, self.kernel_size, self.stride, self.padding, self.dilation,
               use_bias=self.use_bias, kernel_init=self.kernel_init, dtype=self.dtype,
               name=self.conv_name)(x)
    x = BatchNorm(dtype=self.dtype, name=self.bn_name)(x, train)
    return self.activation(x) if self.activation is not None else x


def leaky_relu_02(x: Array) -> Array:
  return nn.leaky_relu(x, 0.2)


def resize_bilinear(x: Array, size: Sequence[int]) -> Array:
  """`F.interpolate(x, size, mode='bilinear', align_corners=False)` for NHWC arrays.

  `antialias=False` is essential: with antialiasing, downsampling differs from PyTorch.
  """
  height, width = size
  if x.shape[1:3] == (height, width):
    return x
  return jax.image.resize(x, (x.shape[0], height, width, x.shape[-1]), "bilinear",
                          antialias=False).astype(x.dtype)


def max_pool_3x3_s2(x: Array) -> Array:
  """`nn.MaxPool2d(3, stride=2, padding=1)`: padding never wins (-inf)."""
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                               ((0, 0), (1, 1), (1, 1), (0, 0)))


def avg_pool_3x3_count_pad(x: Array, stride: int) -> Array:
  """`nn.AvgPool2d(3, stride, padding=1)` with count_include_pad=True: borders divide by 9."""
  summed = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, stride, stride, 1),
                                 ((0, 0), (1, 1), (1, 1), (0, 0)))
  return summed / 9.0


def avg_pool_ceil_exclude_pad(x: Array, stride: int) -> Array:
  """`nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)`.

  For odd sizes the last window is partial and averages only the pixels it covers.
  """
  if stride == 1:
    return x
  height, width = x.shape[1:3]
  pad_h = -height % stride
  pad_w = -width % stride
  window = (1, stride, stride, 1)
  padding = ((0, 0), (0, pad_h), (0, pad_w), (0, 0))
  summed = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, window, padding)
  if pad_h == 0 and pad_w == 0:
    return summed / float(stride * stride)
  ones = jnp.ones((1, height, width, 1), x.dtype)
  counts = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, window, padding)
  return summed / counts


def safe_sqrt(x: Array, eps: float = 1e-12) -> Array:
  """sqrt with a finite gradient at 0 (double-where), so flat regions give no NaN gradients.

  Deviation from upstream (plain sqrt): the value is identical for x > 0 and 0 at x == 0.
  """
  positive = x > eps
  safe_x = jnp.where(positive, x, 1.0)
  return jnp.where(positive, jnp.sqrt(safe_x), 0.0)


SOBEL_X = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float32)
SOBEL_Y = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], np.float32)


def sobel_of_channel_sum(x: Array) -> Tuple[Array, Array]:
  """Sobel responses (gx, gy) of the channel sum, each (B, H, W, 1), zero padding 1.

  This is what a dense Conv2d(C -> C_out, 3x3) with the same Sobel kernel for every
  (out, in) pair computes for each output channel, at a fraction of the cost. The kernels are
  constants, never parameters. Cross-correlation, as in PyTorch.
  """
  summed = jnp.sum(x.astype(jnp.float32), axis=-1, keepdims=True)
  kernels = jnp.asarray(np.stack([SOBEL_X, SOBEL_Y], axis=-1)[:, :, None, :])  # (3, 3, 1, 2)
  g = jax.lax.conv_general_dilated(summed, kernels, (1, 1), ((1, 1), (1, 1)),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return g[..., :1], g[..., 1:]
