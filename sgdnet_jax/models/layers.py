"""Torch-compatible building blocks: convolutions, normalisation, resizing, initialisers.

Every layer here mirrors one PyTorch layer closely enough that weights port one-to-one and
outputs agree to float precision: explicit paddings, PyTorch default initialisers and BatchNorm
with PyTorch's running-statistics update. Layout is NHWC throughout.
"""

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]
IntPair = int | tuple[int, int]

# PyTorch's default Conv/Linear init: kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in)).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# kaiming_normal(mode='fan_out', nonlinearity='relu'), used by Res2Net's convolutions.
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _pair(value: IntPair) -> tuple[int, int]:
  return (value, value) if isinstance(value, int) else tuple(value)


def param_dtype(compute_dtype: Dtype) -> Dtype:
  """Dtype of parameters, BN statistics and accumulations: float64 under float64, else float32.

  float64 (tests only, with `jax_enable_x64`) keeps the whole computation in float64, so layout
  equivalence can be checked without float32 rounding; bfloat16 and float32 accumulate in float32.
  """
  return jnp.promote_types(compute_dtype, jnp.float32)


def torch_default_bias_init(fan_in: int) -> Initializer:
  """PyTorch's default bias init, U(+-1/sqrt(fan_in)), which depends on the kernel's fan-in."""
  bound = 1.0 / np.sqrt(fan_in) if fan_in > 0 else 0.0

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


# How Conv2d lowers its stride-1 ungrouped convolutions: 'cpu_matmul' (`conv2d_cpu`), 'lax'
# (`lax.conv_general_dilated`) or 'auto' ('cpu_matmul' when the tracing backend is the CPU).
CONV_IMPLS = ("auto", "lax", "cpu_matmul")
_conv_impl = contextvars.ContextVar("conv_impl", default="auto")


@contextlib.contextmanager
def conv_impl(impl: str) -> Iterator[None]:
  """Every Conv2d traced inside the block uses `impl` (one of CONV_IMPLS).

  A context rather than a module field, so the choice reaches every convolution without being
  threaded through each module and leaves the parameter tree untouched. An exported model sets
  it from its target platforms, never from the machine that traces it.
  """
  if impl not in CONV_IMPLS:
    raise ValueError(f"model.conv_impl must be one of {CONV_IMPLS}, got {impl!r}")
  token = _conv_impl.set(impl)
  try:
    yield
  finally:
    _conv_impl.reset(token)


def _use_cpu_matmul() -> bool:
  impl = _conv_impl.get()
  return impl == "cpu_matmul" or (impl == "auto" and jax.default_backend() == "cpu")


class Conv2d(nn.Module):
  """`torch.nn.Conv2d` in NHWC with explicit symmetric padding.

  Parameters are `kernel` (kh, kw, in/groups, out) and `bias` (out,). Same arithmetic, faster
  lowerings (XLA:CPU runs the backward pass of `conv_general_dilated` 2-10x slower than its
  forward): unpadded 1x1 convolutions are one matrix product, small stride-1 depthwise ones (up
  to 3x3) a sum of shifted views, and on CPU other stride-1 convolutions take the matrix-product
  backward pass of `conv2d_cpu` (see `conv_impl`).
  """

  features: int
  kernel_size: IntPair = 1
  stride: IntPair = 1
  padding: IntPair = 0
  dilation: IntPair = 1
  groups: int = 1
  use_bias: bool = True
  kernel_init: Initializer = torch_default_kernel_init
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kh, kw = _pair(self.kernel_size)
    in_features = x.shape[-1]
    if in_features % self.groups:
      raise ValueError(
        f"{self.name}: {in_features} input channels not divisible by groups={self.groups}"
      )
    dtype = self.dtype or x.dtype
    kernel_shape = (kh, kw, in_features // self.groups, self.features)
    kernel = self.param("kernel", self.kernel_init, kernel_shape, param_dtype(dtype))
    padding, stride, dilation = _pair(self.padding), _pair(self.stride), _pair(self.dilation)
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    if (kh, kw) == (1, 1) and self.groups == 1 and padding == (0, 0):
      y = pointwise_conv(x[:, :: stride[0], :: stride[1]], kernel)
    elif self.groups == in_features == self.features and stride == (1, 1) and kh * kw <= 9:
      y = depthwise_conv(x, kernel, padding, dilation)
    elif self.groups == 1 and stride == (1, 1) and _use_cpu_matmul():
      y = conv2d_cpu(x, kernel, padding, dilation)
    else:
      y = _lax_conv(x, kernel, padding, dilation, stride, self.groups)
    if self.use_bias:
      fan_in = kh * kw * in_features // self.groups
      bias_init = torch_default_bias_init(fan_in)
      bias = self.param("bias", bias_init, (self.features,), param_dtype(dtype))
      y = y + bias.astype(dtype)
    return y


def pointwise_conv(x: Array, kernel: Array) -> Array:
  """1x1 convolution as a (pixels, C_in) x (C_in, C_out) matrix product."""
  *spatial, channels = x.shape
  return jnp.dot(x.reshape(-1, channels), kernel[0, 0]).reshape(*spatial, kernel.shape[-1])


def _output_hw(x: Array, kernel_hw, padding, dilation) -> tuple[int, int]:
  """Output height and width of a stride-1 convolution."""
  return tuple(
    size + 2 * p - d * (k - 1) for size, k, p, d in zip(x.shape[1:3], kernel_hw, padding, dilation)
  )


def _shifted_views(
  x: Array, kernel_hw: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int]
):
  """The kh*kw views of the padded x that a stride-1 convolution multiplies, HWIO tap order."""
  (kh, kw), (ph, pw), (dh, dw) = kernel_hw, padding, dilation
  height, width = _output_hw(x, kernel_hw, padding, dilation)
  padded = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
  return [
    padded[:, i * dh : i * dh + height, j * dw : j * dw + width]
    for i in range(kh)
    for j in range(kw)
  ]


def _im2col(x: Array, kernel_hw, padding, dilation) -> Array:
  """(pixels, kh*kw*C) patch matrix of a stride-1 convolution (rows match kernel.reshape)."""
  return jnp.concatenate(_shifted_views(x, kernel_hw, padding, dilation), -1).reshape(
    -1, kernel_hw[0] * kernel_hw[1] * x.shape[-1]
  )


# Output pixels (batch included) up to which `conv2d_cpu` runs as one patch-matrix product: the
# small maps of wide layers (CTO's head at 8x8 x 2304 channels), where XLA:CPU's convolution
# reaches a third of its matrix-product speed.
IM2COL_MAX_PIXELS = 256


def _few_pixels(batch, height: int, width: int) -> bool:
  """Whether batch*height*width <= IM2COL_MAX_PIXELS; a symbolic batch (an export) counts as 1."""
  return (batch if isinstance(batch, int) else 1) * height * width <= IM2COL_MAX_PIXELS


def _lax_conv(x, kernel, padding, dilation, stride=(1, 1), groups=1):
  return jax.lax.conv_general_dilated(
    x,
    kernel,
    window_strides=stride,
    padding=tuple((p, p) for p in padding),
    rhs_dilation=dilation,
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=groups,
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d_cpu(
  x: Array, kernel: Array, padding: tuple[int, int], dilation: tuple[int, int]
) -> Array:
  """Stride-1, ungrouped NHWC/HWIO convolution with a matrix-product backward pass.

  The kernel gradient is one (C x pixels) @ (pixels x O) product per tap instead of XLA:CPU's
  weight-gradient convolution (2-3x slower); on maps of at most IM2COL_MAX_PIXELS output pixels
  the forward pass and the input gradient are patch-matrix products as well.
  """
  return _conv2d_cpu_fwd(x, kernel, padding, dilation)[0]


def _conv2d_cpu_fwd(x, kernel, padding, dilation):
  kh, kw, _, features = kernel.shape
  height, width = _output_hw(x, (kh, kw), padding, dilation)
  if _few_pixels(x.shape[0], height, width):
    y = jnp.dot(_im2col(x, (kh, kw), padding, dilation), kernel.reshape(-1, features))
    y = y.reshape(x.shape[0], height, width, features)
  else:
    y = _lax_conv(x, kernel, padding, dilation)
  return y, (x, kernel)


def _conv2d_cpu_bwd(padding, dilation, residuals, grad):
  x, kernel = residuals
  kh, kw, _, features = kernel.shape
  g = grad.reshape(-1, features)
  contract_pixels = (((0,), (0,)), ((), ()))
  if _few_pixels(*grad.shape[:3]):
    cols, cols_vjp = jax.vjp(lambda x: _im2col(x, (kh, kw), padding, dilation), x)
    (dx,) = cols_vjp(jnp.dot(g, kernel.reshape(-1, features).T))
    dkernel = jax.lax.dot_general(cols, g, contract_pixels).reshape(kernel.shape)
  else:
    _, conv_vjp = jax.vjp(lambda x: _lax_conv(x, kernel, padding, dilation), x)
    (dx,) = conv_vjp(grad)
    views = _shifted_views(x, (kh, kw), padding, dilation)
    dkernel = jnp.stack(
      [jax.lax.dot_general(v.reshape(g.shape[0], -1), g, contract_pixels) for v in views]
    ).reshape(kernel.shape)
  return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


conv2d_cpu.defvjp(_conv2d_cpu_fwd, _conv2d_cpu_bwd)


def depthwise_conv(
  x: Array, kernel: Array, padding: tuple[int, int], dilation: tuple[int, int]
) -> Array:
  """Stride-1 depthwise convolution (kernel (kh, kw, 1, C)) as a sum of shifted views.

  Accumulates in float32 (float64 for float64, as a convolution does) and returns x's dtype.
  """
  kh, kw = kernel.shape[:2]
  accumulate = param_dtype(x.dtype)
  taps = kernel[:, :, 0].reshape(kh * kw, -1).astype(accumulate)
  out = 0.0
  for tap, view in zip(taps, _shifted_views(x, (kh, kw), padding, dilation)):
    out = out + view.astype(accumulate) * tap
  return out.astype(x.dtype)


class BatchNorm(nn.Module):
  """`torch.nn.BatchNorm2d` (eps 1e-5, torch momentum 0.1 = flax momentum 0.9).

  Normalises with the biased batch variance and updates `batch_stats.var` with the unbiased one,
  exactly as PyTorch does, so running statistics move the same way after a step. Statistics and
  the normalisation are computed in `param_dtype` (float32 unless float64). Under `jit` with a
  globally sharded batch the mean and variance are global (synchronised BN).
  """

  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    features = x.shape[-1]
    dtype = param_dtype(self.dtype or x.dtype)
    scale = self.param("scale", nn.initializers.ones, (features,), dtype)
    bias = self.param("bias", nn.initializers.zeros, (features,), dtype)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), dtype))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), dtype))
    x32 = x.astype(dtype)
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
  """Channels-last LayerNorm over C (PyTorch `nn.LayerNorm(C)` on NHWC), in `param_dtype`."""

  epsilon: float = 1e-6
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    features = x.shape[-1]
    dtype = param_dtype(self.dtype or x.dtype)
    scale = self.param("scale", nn.initializers.ones, (features,), dtype)
    bias = self.param("bias", nn.initializers.zeros, (features,), dtype)
    x32 = x.astype(dtype)
    mean = jnp.mean(x32, -1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), -1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
    return y.astype(self.dtype or x.dtype)


class PReLU(nn.Module):
  """`torch.nn.PReLU()`: one shared slope, initialised to 0.25."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    slope = self.param("weight", nn.initializers.constant(0.25), (1,), param_dtype(x.dtype))
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
  activation: Callable[[Array], Array] | None = None
  conv_name: str = "conv"
  bn_name: str = "bn"
  kernel_init: Initializer = torch_default_kernel_init
  dtype: Dtype | None = None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    x = Conv2d(
      self.features,
      self.kernel_size,
      self.stride,
      self.padding,
      self.dilation,
      use_bias=self.use_bias,
      kernel_init=self.kernel_init,
      dtype=self.dtype,
      name=self.conv_name,
    )(x)
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
  return jax.image.resize(
    x, (x.shape[0], height, width, x.shape[-1]), "bilinear", antialias=False
  ).astype(x.dtype)


def max_pool_3x3_s2(x: Array) -> Array:
  """`nn.MaxPool2d(3, stride=2, padding=1)`: padding never wins (-inf)."""
  return jax.lax.reduce_window(
    x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
  )


def avg_pool_3x3_count_pad(x: Array, stride: int) -> Array:
  """`nn.AvgPool2d(3, stride, padding=1)` with count_include_pad=True: borders divide by 9."""
  summed = jax.lax.reduce_window(
    x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, stride, stride, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
  )
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


def sobel_of_channel_sum(x: Array) -> tuple[Array, Array]:
  """Sobel responses (gx, gy) of the channel sum, each (B, H, W, 1), zero padding 1.

  This is what a dense Conv2d(C -> C_out, 3x3) with the same Sobel kernel for every
  (out, in) pair computes for each output channel, at a fraction of the cost. The kernels are
  constants, never parameters. Cross-correlation, as in PyTorch.
  """
  summed = jnp.sum(x.astype(param_dtype(x.dtype)), axis=-1, keepdims=True)
  kernels = np.stack([SOBEL_X, SOBEL_Y], axis=-1)[:, :, None, :].astype(summed.dtype)  # (3,3,1,2)
  g = jax.lax.conv_general_dilated(
    summed, kernels, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  return g[..., :1], g[..., 1:]


def sobel_gate(x: jax.Array, gx: jax.Array, gy: jax.Array) -> jax.Array:
  """`sigmoid(sqrt(gx^2 + gy^2)) * x` with a finite gradient where the magnitude is 0."""
  magnitude = safe_sqrt(jnp.square(gx) + jnp.square(gy))
  return (jax.nn.sigmoid(magnitude) * x.astype(param_dtype(x.dtype))).astype(x.dtype)
