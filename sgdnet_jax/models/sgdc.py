"""Structure-Guided Dynamic Convolution (official `sgdc.py`, SPEC §2.2, §3.3).

A parameter head on `x + proj(guidance)` predicts two gates and, per head and pixel, a k x k
kernel (softmax over the taps). The local branch is a gated depthwise 3x3 conv; the dynamic branch
applies the predicted kernels to the LayerNorm-ed input. Two implementations of the dynamic branch:
`patches` (the paper's patch extraction + einsum, materialising the k^2-times larger patch tensor)
and `shifted` (a sum over the k^2 shifted views with a hand-written backward pass; nothing
k^2-sized is ever stored or recomputed).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgdnet_jax.models import knockouts as knockout_lib
from sgdnet_jax.models import layers

GUIDANCE_SOURCES = ("sge", "self")
FORMS = ("official", "paper")
DYNAMIC_IMPLS = ("patches", "shifted")


def _geometry(x: jax.Array, kernels: jax.Array) -> tuple[int, int, int]:
  """(heads, k, r) of a dynamic convolution; checks the shapes agree."""
  heads, taps = kernels.shape[-2:]
  k = math.isqrt(taps)
  if k * k != taps or k % 2 != 1:
    raise ValueError(f"dynamic kernels need an odd k*k taps axis, got {taps}")
  if kernels.shape[:3] != x.shape[:3] or x.shape[-1] % heads:
    raise ValueError(f"kernels {kernels.shape} do not fit x {x.shape} (B, H, W, heads, k*k)")
  return heads, k, k // 2


def _split_heads(x: jax.Array, heads: int) -> jax.Array:
  """(B, H, W, C) -> (B, H, W, heads, C / heads): heads are contiguous channel groups."""
  return x.reshape(*x.shape[:3], heads, x.shape[-1] // heads)


def _pad_hw(x: jax.Array, r: int) -> jax.Array:
  return jnp.pad(x, ((0, 0), (r, r), (r, r)) + ((0, 0),) * (x.ndim - 3))


def dynamic_conv_patches(x: jax.Array, kernels: jax.Array) -> jax.Array:
  """Per-pixel, per-head k x k filtering via explicit patches (zero padding).

  x: (B, H, W, C); kernels: (B, H, W, heads, k*k), taps in row-major (ky, kx) order. The patch
  tensor (B, H, W, heads, C / heads, k*k) is torch's `unfold` (channel-major, then taps). It is
  built from k*k slices rather than `conv_general_dilated_patches`, whose backward pass XLA:CPU
  runs as a dense convolution with a (k*k*C)-channel identity kernel (minutes, tens of GB).
  """
  b, h, w, c = x.shape
  heads, k, r = _geometry(x, kernels)
  padded = _pad_hw(_split_heads(x, heads), r)
  patches = jnp.stack(
    [padded[:, ky : ky + h, kx : kx + w] for ky in range(k) for kx in range(k)], -1
  )
  return jnp.einsum("bhwgct,bhwgt->bhwgc", patches, kernels.astype(x.dtype)).reshape(b, h, w, c)


@jax.custom_vjp
def dynamic_conv_shifted(x: jax.Array, kernels: jax.Array) -> jax.Array:
  """Same result as `dynamic_conv_patches`, as a sum of k*k shifted, weighted views of x.

  With d_t = (ky - r, kx - r), out[p] = sum_t x[p + d_t] * K[p, t] per head (zero outside the
  image). The backward pass is written out so that memory stays O(B*H*W*C):
    dx[q] = sum_t g[q - d_t] * K[q - d_t, t]   (the same shifted sum, over g and K),
    dK[p, t] = sum_c x[p + d_t, c] * g[p, c]   (one channel reduction per tap).
  Only x and the kernels are kept for it. Accumulation is in `layers.param_dtype` (float32,
  float64 for float64); the output has x's dtype and the kernels keep theirs (the softmax's).
  """
  return _shifted_forward(x, kernels)


def _in_row_blocks(height: int, block_sum, shape, dtype) -> jax.Array:
  """Assembles (B, height, ...) from `block_sum(start, rows)` over two row blocks, in a loop.

  The loop boundary makes XLA materialise the operands and the result of the k*k-term sums:
  unrolled in the surrounding program, XLA fuses such a sum into its producers (softmax,
  LayerNorm, the incoming gradient) and consumers, re-evaluating it there up to k*k times.
  """
  rows = (height + 1) // 2

  def block(i, out):
    start = jnp.minimum(i * rows, height - rows)  # an odd height overlaps one row, same values
    return jax.lax.dynamic_update_slice_in_dim(out, block_sum(start, rows), start, axis=1)

  return jax.lax.fori_loop(0, 2, block, jnp.zeros(shape, dtype))


def _shifted_forward(x: jax.Array, kernels: jax.Array) -> jax.Array:
  b, h, w, c = x.shape
  heads, k, r = _geometry(x, kernels)
  padded = _pad_hw(_split_heads(x, heads), r)
  accumulate = layers.param_dtype(x.dtype)

  def block_sum(start, rows):
    x_rows = jax.lax.dynamic_slice_in_dim(padded, start, rows + 2 * r, axis=1).astype(accumulate)
    k_rows = jax.lax.dynamic_slice_in_dim(kernels, start, rows, axis=1).astype(accumulate)
    out = 0.0
    for ky in range(k):
      for kx in range(k):
        out = out + x_rows[:, ky : ky + rows, kx : kx + w] * k_rows[..., ky * k + kx, None]
    return out

  out = _in_row_blocks(h, block_sum, (b, h, w, heads, c // heads), accumulate)
  return out.reshape(b, h, w, c).astype(x.dtype)


def _shifted_fwd(x: jax.Array, kernels: jax.Array):
  return _shifted_forward(x, kernels), (x, kernels)


def _shifted_bwd(residuals, grad: jax.Array):
  x, kernels = residuals
  b, h, w, c = x.shape
  heads, k, r = _geometry(x, kernels)
  accumulate = layers.param_dtype(x.dtype)
  g = _split_heads(grad, heads).astype(accumulate)
  # dx: tap (ky, kx) of output pixel q - d_t lands on q; in padded coordinates that pixel is at
  # q + (2r - ky, 2r - kx). Zero padding of g and K drops the taps of pixels outside the image.
  g_padded, k_padded = _pad_hw(g, r), _pad_hw(kernels.astype(accumulate), r)

  def block_sum(start, rows):
    g_rows = jax.lax.dynamic_slice_in_dim(g_padded, start, rows + 2 * r, axis=1)
    k_rows = jax.lax.dynamic_slice_in_dim(k_padded, start, rows + 2 * r, axis=1)
    dx = 0.0
    for ky in range(k):
      for kx in range(k):
        oy, ox = 2 * r - ky, 2 * r - kx
        weight = k_rows[:, oy : oy + rows, ox : ox + w, :, ky * k + kx, None]
        dx = dx + g_rows[:, oy : oy + rows, ox : ox + w] * weight
    return dx

  dx = _in_row_blocks(h, block_sum, g.shape, accumulate)
  # dK: one tap per iteration keeps a single shifted view alive (XLA:CPU materialises the view
  # feeding each channel reduction; unrolled, that would be the patch tensor again).
  x_padded = _pad_hw(_split_heads(x, heads), r)

  def tap(t, dk):
    view = jax.lax.dynamic_slice(x_padded, (0, t // k, t % k, 0, 0), g.shape)
    column = jnp.sum(view.astype(accumulate) * g, axis=-1, keepdims=True)
    return jax.lax.dynamic_update_slice(dk, column, (0, 0, 0, 0, t))

  dk = jax.lax.fori_loop(0, k * k, tap, jnp.zeros(kernels.shape, accumulate))
  return dx.reshape(b, h, w, c).astype(x.dtype), dk.astype(kernels.dtype)


dynamic_conv_shifted.defvjp(_shifted_fwd, _shifted_bwd)

DYNAMIC_CONV = {"patches": dynamic_conv_patches, "shifted": dynamic_conv_shifted}


class DropPath(nn.Module):
  """Stochastic depth per sample (rng stream 'dropout'); identity when the rate is 0."""

  rate: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool):
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, 0.0).astype(x.dtype)


class SGDC(nn.Module):
  """SGDC(dim = input channels, guide_ch inferred) with the ablation switches of SPEC §3.3.

  Attributes:
    num_heads: kernel groups; each head shares one k x k kernel across C/heads channels.
    kernel_size: k of the dynamic kernel (odd).
    guidance: 'sge' feeds `x + proj_guidance(resize(g))` to the parameter head; 'self' feeds x.
    local_branch / dynamic_branch: switch the two branches (at least one must be on).
    form: 'official' (upstream code: local branch on raw x, layer scales) or 'paper' (Eqs. 3-4:
      local branch on LN(x), no layer scales).
    impl: 'patches' or 'shifted' implementation of the dynamic branch (equal results).
  """

  num_heads: int = 4
  kernel_size: int = 7
  guidance: str = "sge"
  local_branch: bool = True
  dynamic_branch: bool = True
  form: str = "official"
  impl: str = "shifted"
  mlp_ratio: float = 4.0
  layer_scale_init: float = 1e-6
  drop_path: float = 0.0
  dtype: Any | None = None
  knockouts: tuple[str, ...] = ()  # 'sgdc.local=off' / 'sgdc.dynamic=off' (models/knockouts.py)

  def _check(self, dim: int):
    if self.guidance not in GUIDANCE_SOURCES:
      raise ValueError(
        f"model.sgdc.guidance must be one of {GUIDANCE_SOURCES}, got {self.guidance!r}"
      )
    if self.form not in FORMS:
      raise ValueError(f"model.sgdc.form must be one of {FORMS}, got {self.form!r}")
    if self.impl not in DYNAMIC_IMPLS:
      raise ValueError(f"model.sgdc.impl must be one of {DYNAMIC_IMPLS}, got {self.impl!r}")
    if not (self.local_branch or self.dynamic_branch):
      raise ValueError("model.sgdc: local_branch and dynamic_branch cannot both be off")
    if self.kernel_size % 2 != 1:
      raise ValueError(f"model.sgdc.kernel_size must be odd, got {self.kernel_size}")
    if dim % self.num_heads:
      raise ValueError(
        f"SGDC: {dim} channels not divisible by model.sgdc.num_heads={self.num_heads}"
      )

  @nn.compact
  def __call__(self, x, guidance, train: bool):
    b, h, w, dim = x.shape
    self._check(dim)
    official = self.form == "official"
    accumulate = layers.param_dtype(self.dtype or x.dtype)
    if official:
      layer_scale = nn.initializers.constant(self.layer_scale_init)
      ls1 = self.param("ls1", layer_scale, (dim,), accumulate)
      ls2 = self.param("ls2", layer_scale, (dim,), accumulate)
    conv = lambda features, name: layers.Conv2d(features, 1, dtype=self.dtype, name=name)

    head_input = x
    if self.guidance == "sge":
      g = layers.resize_bilinear(guidance.astype(x.dtype), (h, w))
      head_input = x + conv(dim, "proj_guidance")(g)
    taps = self.kernel_size**2
    gate_channels = (dim if self.local_branch else 0) + (dim if self.dynamic_branch else 0)
    params = conv(gate_channels + (self.num_heads * taps if self.dynamic_branch else 0), "attn")(
      head_input
    )

    # A knocked-out branch is not computed; the gates keep the layout the parameters were built for.
    local = self.local_branch and knockout_lib.SGDC_LOCAL_OFF not in self.knockouts
    dynamic = self.dynamic_branch and knockout_lib.SGDC_DYNAMIC_OFF not in self.knockouts
    needs_norm1 = dynamic or (local and not official)
    xn = layers.LayerNorm(1e-6, self.dtype, name="norm1")(x) if needs_norm1 else None
    y = 0.0
    offset = dim if self.local_branch else 0
    if local:
      gate1 = jax.nn.sigmoid(params[..., :dim])
      local_in = x if official else xn
      y = layers.Conv2d(dim, 3, padding=1, groups=dim, dtype=self.dtype, name="dwconv")(
        local_in * gate1
      )
    if dynamic:
      gate2 = jax.nn.sigmoid(params[..., offset : offset + dim])
      logits = params[..., offset + dim :].reshape(b, h, w, self.num_heads, taps)
      kernels = jax.nn.softmax(logits.astype(accumulate), axis=-1)
      y = y + DYNAMIC_CONV[self.impl](xn, kernels) * gate2

    drop = DropPath(self.drop_path)
    if local or dynamic:  # both knocked out: the token mixer adds nothing
      y = y * ls1.astype(y.dtype) if official else y
      x = x + drop(y, train)
    hidden = int(dim * self.mlp_ratio)
    m = layers.LayerNorm(1e-6, self.dtype, name="norm2")(x)
    m = conv(dim, "mlp_2")(nn.gelu(conv(hidden, "mlp_0")(m), approximate=False))
    m = m * ls2.astype(m.dtype) if official else m
    return x + drop(m, train)
