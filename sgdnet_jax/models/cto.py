"""CTO's modules (Lin et al.): patch transformer, dual-attention head, Sobel gate, EAM, DM decoder.

Names follow the upstream `CTO_net.py` state_dict (SPEC §1.3-§1.7).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgdnet_jax.models import layers

DEFAULT_PATCH_SIZES = (32, 16, 8, 4)


def conv1x1_bn_relu(features: int, dtype, name: str) -> layers.ConvBN:
  """CTO's `Conv1x1`: 1x1 conv with bias, BN, ReLU (keys `conv.*`, `bn.*`)."""
  return layers.ConvBN(features, 1, use_bias=True, activation=nn.relu, dtype=dtype, name=name)


def _to_tokens(x: jax.Array, patch: int) -> jax.Array:
  """(B, H, W, C) -> (B, tokens, patch*patch*C), non-overlapping patches in row-major order."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // patch, patch, w // patch, patch, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def _from_tokens(tokens: jax.Array, patch: int, h: int, w: int) -> jax.Array:
  """Exact inverse of `_to_tokens`."""
  b, _, dim = tokens.shape
  c = dim // (patch * patch)
  x = tokens.reshape(b, h // patch, w // patch, patch, patch, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


class MultiPatchAttention(nn.Module):
  """CTO's `MultiHeadedAttention`: one attention per channel chunk, each over p x p patches.

  Tokens of a chunk are whole patches (dimension d_k*p*p); the scaled dot product is invariant to
  the order of features inside a token, so the NHWC flattening equals upstream's (c, y, x) order.
  """

  patch_sizes: Sequence[int] = DEFAULT_PATCH_SIZES
  dtype: Any | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    b, h, w, c = x.shape
    chunks = len(self.patch_sizes)
    for p in self.patch_sizes:
      if h % p or w % p:
        raise ValueError(
          f"model.trans_patch_sizes={tuple(self.patch_sizes)}: patch size {p} does not divide the "
          f"transformer input {h}x{w} (input size / 4); choose patch sizes that divide it"
        )
    if c % chunks:
      raise ValueError(f"transformer channels {c} not divisible by {chunks} patch sizes")
    conv = lambda name: layers.Conv2d(c, 1, dtype=self.dtype, name=name)
    queries = jnp.split(conv("query_embedding")(x), chunks, axis=-1)
    keys = jnp.split(conv("key_embedding")(x), chunks, axis=-1)
    values = jnp.split(conv("value_embedding")(x), chunks, axis=-1)
    outputs = []
    for p, q, k, v in zip(self.patch_sizes, queries, keys, values):
      q, k, v = (_to_tokens(t, p) for t in (q, k, v))
      scores = jnp.einsum("bqd,bkd->bqk", q, k) / jnp.sqrt(jnp.asarray(q.shape[-1], q.dtype))
      attn = jax.nn.softmax(scores.astype(layers.param_dtype(v.dtype)), axis=-1).astype(v.dtype)
      outputs.append(_from_tokens(jnp.einsum("bqk,bkd->bqd", attn, v), p, h, w))
    y = jnp.concatenate(outputs, axis=-1)
    y = layers.Conv2d(c, 3, padding=1, dtype=self.dtype, name="output_linear_0")(y)
    y = layers.BatchNorm(dtype=self.dtype, name="output_linear_1")(y, train)
    return layers.leaky_relu_02(y)


class FeedForward2D(nn.Module):
  """CTO's FFN2D: dilated 3x3 conv, BN, LeakyReLU(0.2), 3x3 conv, BN, LeakyReLU(0.2)."""

  dtype: Any | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    c = x.shape[-1]
    x = layers.Conv2d(c, 3, padding=2, dilation=2, dtype=self.dtype, name="conv_0")(x)
    x = layers.leaky_relu_02(layers.BatchNorm(dtype=self.dtype, name="conv_1")(x, train))
    x = layers.Conv2d(c, 3, padding=1, dtype=self.dtype, name="conv_3")(x)
    return layers.leaky_relu_02(layers.BatchNorm(dtype=self.dtype, name="conv_4")(x, train))


class TransformerBlock(nn.Module):
  """`out = x + MHA(x); out = out + FFN(out)`; no LayerNorm, no positional embedding."""

  patch_sizes: Sequence[int] = DEFAULT_PATCH_SIZES
  dtype: Any | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    x = x + MultiPatchAttention(self.patch_sizes, self.dtype, name="attention")(x, train)
    return x + FeedForward2D(self.dtype, name="feed_forward")(x, train)


class PatchTransformer(nn.Module):
  """CTO's `PatchTrans` (key prefix `multi_trans.t.`)."""

  patch_sizes: Sequence[int] = DEFAULT_PATCH_SIZES
  dtype: Any | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    return TransformerBlock(self.patch_sizes, self.dtype, name="t")(x, train)


class PositionAttention(nn.Module):
  """DANet position attention: `alpha * (D softmax(B^T C)^T) + x`, alpha initialised to 0."""

  dtype: Any | None = None

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    feat_b = layers.Conv2d(c // 8, 1, dtype=self.dtype, name="conv_b")(x).reshape(b, h * w, -1)
    feat_c = layers.Conv2d(c // 8, 1, dtype=self.dtype, name="conv_c")(x).reshape(b, h * w, -1)
    feat_d = layers.Conv2d(c, 1, dtype=self.dtype, name="conv_d")(x).reshape(b, h * w, c)
    scores = jnp.einsum("bik,bjk->bij", feat_b, feat_c).astype(layers.param_dtype(x.dtype))
    attention = jax.nn.softmax(scores, axis=-1).astype(feat_d.dtype)
    feat_e = jnp.einsum("bij,bjc->bic", attention, feat_d).reshape(b, h, w, c)
    alpha = self.param("alpha", nn.initializers.zeros, (1,), layers.param_dtype(x.dtype))
    return alpha.astype(x.dtype) * feat_e + x


class ChannelAttention(nn.Module):
  """DANet channel attention: softmax(rowmax(XX^T) - XX^T) X, scaled by beta (init 0)."""

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    flat = x.reshape(b, h * w, c)
    affinity = jnp.einsum("bnc,bnd->bcd", flat, flat).astype(layers.param_dtype(x.dtype))
    affinity = jnp.max(affinity, axis=-1, keepdims=True) - affinity
    attention = jax.nn.softmax(affinity, axis=-1).astype(x.dtype)
    feat_e = jnp.einsum("bcd,bnd->bnc", attention, flat).reshape(b, h, w, c)
    beta = self.param("beta", nn.initializers.zeros, (1,), layers.param_dtype(x.dtype))
    return beta.astype(x.dtype) * feat_e + x


class DualAttentionHead(nn.Module):
  """CTO's `_DAHead(in, out, aux=False)`: position and channel branches, summed, Dropout, 1x1."""

  out_features: int = 2048
  dropout_rate: float = 0.1
  dtype: Any | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    inter = x.shape[-1] // 4

    def conv_bn_relu(y, name):
      y = layers.Conv2d(inter, 3, padding=1, use_bias=False, dtype=self.dtype, name=f"{name}_0")(y)
      return nn.relu(layers.BatchNorm(dtype=self.dtype, name=f"{name}_1")(y, train))

    feat_p = conv_bn_relu(x, "conv_p1")
    feat_p = conv_bn_relu(PositionAttention(self.dtype, name="pam")(feat_p), "conv_p2")
    feat_c = conv_bn_relu(x, "conv_c1")
    feat_c = conv_bn_relu(ChannelAttention(name="cam")(feat_c), "conv_c2")
    fused = nn.Dropout(self.dropout_rate, deterministic=not train)(feat_p + feat_c)
    return layers.Conv2d(self.out_features, 1, dtype=self.dtype, name="out_1")(fused)


class EdgeAttentionModule(nn.Module):
  """CTO's EAM: reduced x1 and upsampled reduced x4 -> two ConvBNR 3x3 -> 1x1 edge logits.

  Widths are `channels` (x1 reduction, 64 upstream) and 4 * `channels` (x4 and the blocks).
  """

  channels: int = 64
  dtype: Any | None = None

  @nn.compact
  def __call__(self, x4, x1, train: bool):
    wide = 4 * self.channels
    x1 = conv1x1_bn_relu(self.channels, self.dtype, "reduce1")(x1, train)
    x4 = conv1x1_bn_relu(wide, self.dtype, "reduce4")(x4, train)
    x4 = layers.resize_bilinear(x4, x1.shape[1:3])
    out = jnp.concatenate([x4, x1], axis=-1)
    for index in range(2):
      out = layers.ConvBN(
        wide,
        3,
        padding=1,
        activation=nn.relu,
        conv_name="block_0",
        bn_name="block_1",
        dtype=self.dtype,
        name=f"block_{index}",
      )(out, train)
    return layers.Conv2d(1, 1, dtype=self.dtype, name="block_2")(out)


class DecoderModule(nn.Module):
  """CTO's DM: prediction branch plus reverse attention on the upsampled coarser decoder map.

  Both inputs have `channels` channels (64 upstream); the output too.
  """

  channels: int = 64
  dtype: Any | None = None

  @nn.compact
  def __call__(self, xr, coarse, train: bool):
    up = layers.resize_bilinear(coarse, xr.shape[1:3])
    conv = lambda f, k, p, bias, name: layers.Conv2d(
      f, k, padding=p, use_bias=bias, dtype=self.dtype, name=name
    )
    bn = lambda name: layers.BatchNorm(dtype=self.dtype, name=name)
    c = self.channels
    re = conv(c, 3, 1, True, "predict3_0")(jnp.concatenate([xr, up], axis=-1))
    re = layers.PReLU(name="predict3_2")(bn("predict3_1")(re, train))
    re = conv(c, 3, 1, True, "predict3_3")(re)
    re = layers.PReLU(name="predict3_5")(bn("predict3_4")(re, train))
    re = conv(1, 1, 0, True, "predict3_6")(re)

    r = (1.0 - jax.nn.sigmoid(up)) * xr
    for name in ("ra2_conv2", "ra2_conv3"):
      r = nn.relu(layers.ConvBN(c, 3, padding=1, dtype=self.dtype, name=name)(r, train))
    ra = layers.ConvBN(1, 3, padding=1, dtype=self.dtype, name="ra2_conv4")(r, train)
    return ra + up + re


def sobel_gate(x, train: bool, index: int):
  """CTO's `run_sobel` with `get_sobel(C, 1)`: channel-sum Sobel, BN(1) per direction, gate.

  Call inside the network's compact method: the two BN(1) layers (`sobel_xN.1`, `sobel_yN.1`) are
  its only parameters and belong to the caller's scope, as upstream; the kernels are constants.
  """
  gx, gy = layers.sobel_of_channel_sum(x)
  gx = layers.BatchNorm(name=f"sobel_x{index}_1")(gx, train)
  gy = layers.BatchNorm(name=f"sobel_y{index}_1")(gy, train)
  return layers.sobel_gate(x, gx, gy)
