"""Structure-Guided Dynamic Convolution (official `sgdc.py`, SPEC §2.2, §3.3).

A parameter head on `x + proj(guidance)` predicts two gates and, per head and pixel, a k x k
kernel (softmax over the taps). The local branch is a gated depthwise 3x3 conv; the dynamic branch
applies the predicted kernels to the LayerNorm-ed input. Two implementations of the dynamic branch:
`patches` (the paper's patch extraction + einsum) and `shifted` (a sum over the k^2 shifted views,
never materialising the k^2-times larger patch tensor, rematerialised in the backward pass).
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgdnet_jax.models import layers

GUIDANCE_SOURCES = ("sge", "self")
FORMS = ("official", "paper")
DYNAMIC_IMPLS = ("patches", "shifted")


def dynamic_conv_patches(x: jax.Array, kernels: jax.Array) -> jax.Array:
  """Per-pixel, per-head k x k filtering via explicit patches (zero padding).

  x: (B, H, W, C); kernels: (B, H, W, heads, k*k), taps in row-major (ky, kx) order.
  """
  b, h, w, c = x.shape
  heads, taps = kernels.shape[-2:]
  k = int(round(taps ** 0.5))
  r = k // 2
  # Feature layout of the patches is channel-major then (ky, kx): torch's unfold order.
  patches = jax.lax.conv_general_dilated_patches(
      x, (k, k), (1, 1), ((r, r), (r, r)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  patches = patches.reshape(b, h, w, heads, c // heads, taps)
  return jnp.einsum("bhwgct,bhwgt->bhwgc", patches, kernels.astype(x.dtype)).reshape(b, h, w, c)


@jax.checkpoint
def dynamic_conv_shifted(x: jax.Array, kernels: jax.Array) -> jax.Array:
  """Same result as `dynamic_conv_patches`, as a sum of k*k shifted, weighted views.

  Memory stays O(B*H*W*C): under `jax.checkpoint` only the inputs are kept for the backward pass.
  """
  b, h, w, c = x.shape
  heads, taps = kernels.shape[-2:]
  k = int(round(taps ** 0.5))
  r = k // 2
  padded = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0))).reshape(b, h + 2 * r, w + 2 * r, heads, c // heads)
  kernels = kernels.astype(x.dtype)
  out = jnp.zeros((b, h, w, heads, c // heads), x.dtype)
  for ky in range(k):
    for kx in range(k):
      view = jax.lax.dynamic_slice(padded, (0, ky, kx, 0, 0), (b, h, w, heads, c // heads))
      out = out + view * kernels[..., ky * k + kx, None]
  return out.reshape(b, h, w, c)


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
  dtype: Optional[Any] = None

  def _check(self, dim: int):
    if self.guidance not in GUIDANCE_SOURCES:
      raise ValueError(f"model.sgdc.guidance must be one of {GUIDANCE_SOURCES}, got {self.guidance!r}")
    if self.form not in FORMS:
      raise ValueError(f"model.sgdc.form must be one of {FORMS}, got {self.form!r}")
    if self.impl not in DYNAMIC_IMPLS:
      raise ValueError(f"model.sgdc.impl must be one of {DYNAMIC_IMPLS}, got {self.impl!r}")
    if not (self.local_branch or self.dynamic_branch):
      raise ValueError("model.sgdc: local_branch and dynamic_branch cannot both be off")
    if self.kernel_size % 2 != 1:
      raise ValueError(f"model.sgdc.kernel_size must be odd, got {self.kernel_size}")
    if dim % self.num_heads:
      raise ValueError(f"SGDC: {dim} channels not divisible by model.sgdc.num_heads={self.num_heads}")

  @nn.compact
  def __call__(self, x, guidance, train: bool):
    b, h, w, dim = x.shape
    self._check(dim)
    official = self.form == "official"
    if official:
      ls1 = self.param("ls1", nn.initializers.constant(self.layer_scale_init), (dim,))
      ls2 = self.param("ls2", nn.initializers.constant(self.layer_scale_init), (dim,))
    conv = lambda features, name: layers.Conv2d(features, 1, dtype=self.dtype, name=name)

    head_input = x
    if self.guidance == "sge":
      g = layers.resize_bilinear(guidance.astype(x.dtype), (h, w))
      head_input = x + conv(dim, "proj_guidance")(g)
    taps = self.kernel_size ** 2
    gate_channels = (dim if self.local_branch else 0) + (dim if self.dynamic_branch else 0)
    params = conv(gate_channels + (self.num_heads * taps if self.dynamic_branch else 0), "attn")(head_input)

    needs_norm1 = self.dynamic_branch or (self.local_branch and not official)
    xn = layers.LayerNorm(1e-6, self.dtype, name="norm1")(x) if needs_norm1 else None
    y = 0.0
    offset = 0
    if self.local_branch:
      gate1 = jax.nn.sigmoid(params[..., :dim])
      offset = dim
      local_in = x if official else xn
      y = layers.Conv2d(dim, 3, padding=1, groups=dim, dtype=self.dtype, name="dwconv")(local_in * gate1)
    if self.dynamic_branch:
      gate2 = jax.nn.sigmoid(params[..., offset:offset + dim])
      logits = params[..., offset + dim:].reshape(b, h, w, self.num_heads, taps)
      kernels = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
      y = y + DYNAMIC_CONV[self.impl](xn, kernels) * gate2

    drop = DropPath(self.drop_path)
    y = y * ls1.astype(y.dtype) if official else y
    x = x + drop(y, train)
    hidden = int(dim * self.mlp_ratio)
    m = layers.LayerNorm(1e-6, self.dtype, name="norm2")(x)
    m = conv(dim, "mlp_2")(nn.gelu(conv(hidden, "mlp_0")(m), approximate=False))
    m = m * ls2.astype(m.dtype) if official else m
    return x + drop(m, train)
