"""ContMix ablation block: OverLoCK's `DynamicConvBlock` fed by the SGE guidance (SPEC §3).

Paper Table 4, row (3) "+SGE +ContMix": `x_i <- DynamicConvBlock(C_i, ctx_dim=64)(x_i, g)[0]` with
`g` the 16-channel SGE guidance resized to x_i. Configuration fixed by SPEC §3.2(3): is_first
(no x_scale/h_scale), res_scale=False, no layer scales, drop path 0, DilatedReparamBlock with its
unmerged branches (deploy=False). Parameters use PyTorch's default initialisers, as a standalone
upstream block does (OverLoCK's backbone re-initialises convs with trunc_normal(0.02)).

Submodule and parameter names follow the PyTorch state_dict with the package-wide rule (a numeric
segment joins its parent with '_': `fusion.0.weight` -> `fusion_0/kernel`,
`lepe.0.lk_origin.weight` -> `lepe_0/lk_origin/kernel`, `se_layer.proj.1.weight` ->
`se_layer/proj_1/kernel`, `rpb1`, ...); see
`reference/keys_contmix_dynconvblock_dim256_ctx16.tsv`. GRN `gamma`/`beta` are stored as (C,)
instead of torch's (1, C, 1, 1).

The neighbourhood attention follows NATTEN (`na2d_av`): each pixel mixes a k x k window that is
shifted to stay inside the image at the borders, with NATTEN's relative-position-bias indexing.
It is computed one window row at a time from gathered values (a scan over the k rows), so the
(B, H, W, C, k*k) patch tensor is never built.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sgdnet_jax.models import layers

Array = jax.Array

# The key is pooled to a fixed POOL_SIZE x POOL_SIZE grid of context tokens (the "pooling trap").
POOL_SIZE = 7

# UniRepLKNet's (kernel size, dilation) branches of the DilatedReparamBlock, by large-kernel size.
DILATED_BRANCHES = {
  5: ((3, 1), (3, 2)),
  7: ((5, 1), (3, 1), (3, 2), (3, 3)),
  9: ((5, 1), (7, 1), (5, 2), (3, 3), (3, 4)),
  11: ((5, 1), (7, 1), (5, 2), (3, 3), (3, 4), (3, 5)),
  13: ((5, 1), (7, 1), (7, 2), (3, 3), (3, 4), (3, 5)),
  15: ((5, 1), (7, 1), (7, 2), (3, 3), (3, 5), (3, 7)),
  17: ((5, 1), (7, 1), (9, 2), (3, 4), (3, 5), (3, 7)),
  19: ((5, 1), (7, 1), (9, 1), (9, 2), (3, 4), (3, 5), (3, 7)),
}


def gelu(x: Array) -> Array:
  """Exact (erf) GELU, PyTorch's `nn.GELU()` default."""
  return nn.gelu(x, approximate=False)


def _adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) averaging matrix of `AdaptiveAvgPool` along one axis.

  Output i averages inputs [floor(i*in/out), ceil((i+1)*in/out)), as PyTorch does; windows may
  overlap or repeat when the sizes do not divide.
  """
  matrix = np.zeros((out_size, in_size))  # float64; cast to the accumulation dtype on use.
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -(-((i + 1) * in_size) // out_size)
    matrix[i, start:end] = 1.0 / (end - start)
  return matrix


def adaptive_avg_pool(x: Array, size: Sequence[int]) -> Array:
  """`F.adaptive_avg_pool2d(x, size)` for NHWC arrays, any input and output sizes."""
  height, width = x.shape[1:3]
  out_h, out_w = size
  if (height, width) == (out_h, out_w):
    return x
  accumulate = layers.param_dtype(x.dtype)
  pool_h = jnp.asarray(_adaptive_pool_matrix(height, out_h), accumulate)
  pool_w = jnp.asarray(_adaptive_pool_matrix(width, out_w), accumulate)
  pooled = jnp.einsum("oh,bhwc,pw->bopc", pool_h, x.astype(accumulate), pool_w)
  return pooled.astype(x.dtype)


def attention_size(height: int, width: int, kernel_size: int) -> tuple[int, int]:
  """Upstream's working size: inputs whose shorter side is below the kernel are upsized to it.

  The formula (`int(K / H * W)` in Python floats) is upstream's, so sizes agree exactly.
  """
  if min(height, width) >= kernel_size:
    return height, width
  if height < width:
    size = (kernel_size, int(kernel_size / height * width))
  else:
    size = (int(kernel_size / width * height), kernel_size)
  if min(size) < kernel_size:
    raise ValueError(
      f"ContMix: {height}x{width} input upsizes to {size}, smaller than the kernel {kernel_size}"
    )
  return size


def _window_starts(size: int, kernel_size: int) -> np.ndarray:
  """First index of each pixel's K-wide window, shifted to stay inside [0, size), shape (size,)."""
  return np.clip(np.arange(size) - kernel_size // 2, 0, size - kernel_size)


def _window_offsets(size: int, kernel_size: int) -> np.ndarray:
  """Position of each pixel inside its border-shifted window (0..K-1), shape (size,)."""
  return np.arange(size) - _window_starts(size, kernel_size)


def relative_position_bias(rpb: Array, height: int, width: int, kernel_size: int) -> Array:
  """NATTEN's bias lookup: rpb (G, 2K-1, 2K-1) -> (H, W, G, K*K).

  Tap (a, b) of pixel (i, j) reads rpb[g, a - oi + K - 1, b - oj + K - 1], with (oi, oj) the
  pixel's position inside its shifted window, i.e. the bias depends on key minus query position.
  """
  taps = np.arange(kernel_size)
  rows = taps[None, :] - _window_offsets(height, kernel_size)[:, None] + kernel_size - 1
  cols = taps[None, :] - _window_offsets(width, kernel_size)[:, None] + kernel_size - 1
  bias = rpb[:, rows[:, None, :, None], cols[None, :, None, :]]  # (G, H, W, K, K)
  heads = rpb.shape[0]
  return bias.transpose(1, 2, 0, 3, 4).reshape(height, width, heads, kernel_size * kernel_size)


def neighborhood_aggregate(attn: Array, value: Array, kernel_size: int) -> Array:
  """NATTEN `na2d_av` with border-shifted windows, accumulated in float32 (float64 for float64).

  attn (B, H, W, G, K*K) holds row-major window taps, value (B, H, W, G, c); returns
  (B, H, W, G, c). Tap (a, b) of pixel (i, j) reads value[s_i + a, s_j + b] with the window start
  s_i = clip(i - K//2, 0, H - K), as in upstream's CPU fallback (unpadded unfold, then replicate
  padding).

  A scan over the K window rows gathers, per step, that row's K taps for every pixel, so at most
  K times the value tensor is live (not the K*K of a patch tensor); the rematerialised step keeps
  the backward pass equally small.
  """
  batch, height, width, groups, channels = value.shape
  if height < kernel_size or width < kernel_size:
    raise ValueError(
      f"neighbourhood attention: {height}x{width} input is smaller than the "
      f"{kernel_size}x{kernel_size} window"
    )
  taps = np.arange(kernel_size)
  row_index = jnp.asarray(taps[:, None] + _window_starts(height, kernel_size)[None, :])  # (K, H)
  col_index = (_window_starts(width, kernel_size)[:, None] + taps[None, :]).reshape(-1)
  # (K rows, B, H, W, K cols, G): the weights of one window row, laid out like the gathered taps.
  attn_rows = attn.reshape(batch, height, width, groups, kernel_size, kernel_size)
  attn_rows = attn_rows.transpose(4, 0, 1, 2, 5, 3)
  accumulate = layers.param_dtype(value.dtype)

  @jax.checkpoint
  def add_window_row(out, row):
    rows, weights = row
    window_row = jnp.take(
      jnp.take(value, rows, axis=1, mode="clip"), col_index, axis=2, mode="clip"
    ).reshape(batch, height, width, kernel_size, groups, channels)
    return out + jnp.sum(weights[..., None].astype(accumulate) * window_row, axis=3), None

  out, _ = jax.lax.scan(add_window_row, jnp.zeros(value.shape, accumulate), (row_index, attn_rows))
  return out


def _residual_dw_conv(x: Array, name: str, dtype) -> Array:
  """Upstream `ResDWConv`: x + depthwise 3x3 conv (with bias). Call inside a compact method."""
  channels = x.shape[-1]
  return x + layers.Conv2d(channels, 3, padding=1, groups=channels, dtype=dtype, name=name)(x)


class GRN(nn.Module):
  """ConvNeXt-V2 Global Response Normalisation (keys `gamma`, `beta`, both (C,), init 0)."""

  dtype: Any | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    channels = x.shape[-1]
    dtype = layers.param_dtype(self.dtype or x.dtype)
    gamma = self.param("gamma", nn.initializers.zeros, (channels,), dtype)
    beta = self.param("beta", nn.initializers.zeros, (channels,), dtype)
    x32 = x.astype(dtype)
    # Spatial L2 norm per channel; exact value, zero gradient for an all-zero channel.
    norm = layers.safe_sqrt(jnp.sum(jnp.square(x32), axis=(1, 2), keepdims=True), eps=0.0)
    normalised = norm / (jnp.mean(norm, axis=-1, keepdims=True) + 1e-6)
    return ((gamma * normalised + 1.0) * x32 + beta).astype(self.dtype or x.dtype)


class DilatedReparamBlock(nn.Module):
  """UniRepLKNet's block, unmerged: BN(DW KxK) + sum of BN(dilated DW k x k) branches.

  Keys `lk_origin`, `origin_bn`, `dil_conv_k{k}_{r}`, `dil_bn_k{k}_{r}`; convs have no bias.
  """

  kernel_size: int
  dtype: Any | None = None

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    channels = x.shape[-1]
    dw_conv = lambda kernel, dilation, padding, name: layers.Conv2d(
      channels,
      kernel,
      padding=padding,
      dilation=dilation,
      groups=channels,
      use_bias=False,
      dtype=self.dtype,
      name=name,
    )
    bn = lambda name: layers.BatchNorm(dtype=self.dtype, name=name)
    out = bn("origin_bn")(
      dw_conv(self.kernel_size, 1, self.kernel_size // 2, "lk_origin")(x), train
    )
    for kernel, dilation in DILATED_BRANCHES[self.kernel_size]:
      padding = (dilation * (kernel - 1) + 1) // 2
      branch = dw_conv(kernel, dilation, padding, f"dil_conv_k{kernel}_{dilation}")(x)
      out = out + bn(f"dil_bn_k{kernel}_{dilation}")(branch, train)
    return out


def _fusion(x: Array, features: int, train: bool, dtype) -> Array:
  """Upstream `fusion`: DW3x3 -> BN -> GELU -> Conv1x1 -> GRN (`fusion_0, _1, _3, _4`).

  Call inside a compact method.
  """
  channels = x.shape[-1]
  x = layers.Conv2d(channels, 3, padding=1, groups=channels, dtype=dtype, name="fusion_0")(x)
  x = gelu(layers.BatchNorm(dtype=dtype, name="fusion_1")(x, train))
  x = layers.Conv2d(features, 1, dtype=dtype, name="fusion_3")(x)
  return GRN(dtype=dtype, name="fusion_4")(x)


def _mlp(x: Array, hidden: int, dtype) -> Array:
  """Upstream `mlp`: Conv1x1 -> GELU -> residual DW3x3 -> GRN -> Conv1x1 (`mlp_0, _2, _3, _4`).

  Call inside a compact method.
  """
  features = x.shape[-1]
  x = gelu(layers.Conv2d(hidden, 1, dtype=dtype, name="mlp_0")(x))
  x = _residual_dw_conv(x, "mlp_2", dtype)
  x = GRN(dtype=dtype, name="mlp_3")(x)
  return layers.Conv2d(features, 1, dtype=dtype, name="mlp_4")(x)


def _conv_bn(x: Array, features: int, conv_name: str, bn_name: str, train: bool, dtype) -> Array:
  """Bias-free 1x1 conv then BN, named like the upstream Sequential members. Call inside a
  compact method."""
  x = layers.Conv2d(features, 1, use_bias=False, dtype=dtype, name=conv_name)(x)
  return layers.BatchNorm(dtype=dtype, name=bn_name)(x, train)


class SqueezeExcite(nn.Module):
  """Upstream `SEModule(dim)`: x * sigmoid(Conv1x1(GELU(Conv1x1(mean(x))))), hidden width
  max(16, C // 8) (keys `proj.1`, `proj.3` -> `proj_1`, `proj_3`)."""

  dtype: Any | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    width = max(16, x.shape[-1] // 8)
    pooled = jnp.mean(x.astype(layers.param_dtype(x.dtype)), axis=(1, 2), keepdims=True)
    pooled = pooled.astype(x.dtype)
    hidden = gelu(layers.Conv2d(width, 1, dtype=self.dtype, name="proj_1")(pooled))
    gate = jax.nn.sigmoid(layers.Conv2d(x.shape[-1], 1, dtype=self.dtype, name="proj_3")(hidden))
    return x * gate


class DynamicConvBlock(nn.Module):
  """OverLoCK's context-guided ContMix block (first block of a stage, no layer scales).

  Attributes:
    dim: channels C of x.
    ctx_dim: upstream's context width; the context stream has ctx_dim // 4 channels (64 -> 16,
      the SGE guidance).
    kernel_size: large dynamic kernel K (also the DilatedReparamBlock size).
    smk_size: small dynamic kernel k.
    num_heads: upstream's argument; the block uses G = 2 * num_heads kernel groups.
    mlp_ratio: MLP width multiplier (hidden = int(C * mlp_ratio)).
    dtype: computation dtype (None: the input's); BN/LN/softmax statistics are float32
      (float64 for float64).
  """

  dim: int
  ctx_dim: int = 64
  kernel_size: int = 7
  smk_size: int = 5
  num_heads: int = 2
  mlp_ratio: float = 4.0
  dtype: Any | None = None

  def _check(self, x: Array, ctx: Array) -> None:
    name = type(self).__name__
    if self.kernel_size not in DILATED_BRANCHES:
      raise ValueError(
        f"{name}.kernel_size={self.kernel_size}: expected one of {sorted(DILATED_BRANCHES)}"
      )
    if self.smk_size % 2 == 0 or not 1 <= self.smk_size <= self.kernel_size:
      raise ValueError(f"{name}.smk_size={self.smk_size}: expected an odd size <= kernel_size")
    groups = 2 * self.num_heads
    if self.dim % (2 * groups):
      raise ValueError(f"{name}.dim={self.dim}: must be divisible by 4 * num_heads = {2 * groups}")
    if x.ndim != 4 or ctx.ndim != 4:
      raise ValueError(f"{name}: x and ctx must be NHWC, got shapes {x.shape} and {ctx.shape}")
    if x.shape[-1] != self.dim:
      raise ValueError(f"{name}: x has {x.shape[-1]} channels, expected dim={self.dim}")
    if ctx.shape[-1] != self.ctx_dim // 4:
      raise ValueError(
        f"{name}: ctx has {ctx.shape[-1]} channels, expected ctx_dim // 4 = {self.ctx_dim // 4}"
      )
    if x.shape[:3] != ctx.shape[:3]:
      raise ValueError(
        f"{name}: ctx {ctx.shape} must be resized to x's batch and size {x.shape[:3]} by the caller"
      )

  @nn.compact
  def __call__(self, x: Array, ctx: Array, train: bool) -> tuple[Array, Array]:
    """x (B, H, W, dim), ctx (B, H, W, ctx_dim // 4) -> (x_out like x, ctx_out like ctx)."""
    self._check(x, ctx)
    batch, height, width, channels = x.shape
    small, large = self.smk_size, self.kernel_size
    groups = 2 * self.num_heads
    scale = (channels // groups) ** -0.5
    dtype = self.dtype
    accumulate = layers.param_dtype(dtype or x.dtype)
    rpb_shape = lambda size: (groups, 2 * size - 1, 2 * size - 1)
    rpb_small = self.param("rpb1", nn.initializers.zeros, rpb_shape(small), accumulate)
    rpb_large = self.param("rpb2", nn.initializers.zeros, rpb_shape(large), accumulate)

    x_f = _residual_dw_conv(jnp.concatenate([x, ctx.astype(x.dtype)], axis=-1), "dwconv1", dtype)
    identity = x_f
    x_f = layers.LayerNorm(dtype=dtype, name="norm1")(x_f)
    x = _fusion(x_f, channels, train, dtype)
    gate = nn.silu(_conv_bn(x, channels, "gate_0", "gate_1", train, dtype))
    lepe = DilatedReparamBlock(large, dtype=dtype, name="lepe_0")(x, train)
    lepe = layers.BatchNorm(dtype=dtype, name="lepe_1")(lepe, train)

    # Dynamic kernels: per-pixel query against POOL_SIZE^2 pooled context tokens, projected to
    # k*k + K*K taps per group.
    work_h, work_w = attention_size(height, width, large)
    x = layers.resize_bilinear(x, (work_h, work_w))
    x_f = layers.resize_bilinear(x_f, (work_h, work_w))
    query = (
      _conv_bn(x_f[..., :channels], channels // 2, "weight_query_0", "weight_query_1", train, dtype)
      * scale
    )
    key = _conv_bn(
      adaptive_avg_pool(x_f[..., channels:], (POOL_SIZE, POOL_SIZE)),
      channels // 2,
      "weight_key_1",
      "weight_key_2",
      train,
      dtype,
    )
    group_width = channels // (2 * groups)
    query = query.reshape(batch, work_h, work_w, groups, group_width)
    key = key.reshape(batch, POOL_SIZE * POOL_SIZE, groups, group_width)
    affinity = jnp.einsum("bhwgc,blgc->bhwgl", query, key)
    weights = layers.Conv2d(small * small + large * large, 1, dtype=dtype, name="weight_proj")(
      affinity.reshape(batch, work_h * work_w, groups, POOL_SIZE * POOL_SIZE)
    )
    weights = weights.reshape(batch, work_h, work_w, groups, -1).astype(accumulate)
    attn_small = jax.nn.softmax(
      weights[..., : small * small] + relative_position_bias(rpb_small, work_h, work_w, small),
      axis=-1,
    )
    attn_large = jax.nn.softmax(
      weights[..., small * small :] + relative_position_bias(rpb_large, work_h, work_w, large),
      axis=-1,
    )

    # First half of the channels mixes with the small kernel, second half with the large one.
    values = x.reshape(batch, work_h, work_w, 2, groups, group_width)
    mixed = (
      jnp.concatenate(
        [
          neighborhood_aggregate(attn_small, values[:, :, :, 0], small),
          neighborhood_aggregate(attn_large, values[:, :, :, 1], large),
        ],
        axis=3,
      )
      .reshape(batch, work_h, work_w, channels)
      .astype(x.dtype)
    )
    mixed = adaptive_avg_pool(mixed, (height, width))

    x = _conv_bn(mixed, channels, "dyconv_proj_0", "dyconv_proj_1", train, dtype)
    x = SqueezeExcite(dtype=dtype, name="se_layer")(x + lepe)
    x = layers.BatchNorm(dtype=dtype, name="proj_0")(gate * x, train)
    x = layers.Conv2d(identity.shape[-1], 1, dtype=dtype, name="proj_1")(x)
    x = _residual_dw_conv(identity + x, "dwconv2", dtype)
    hidden = int(channels * self.mlp_ratio)
    x = x + _mlp(layers.LayerNorm(dtype=dtype, name="norm2")(x), hidden, dtype)
    return x[..., :channels], x[..., channels:]
