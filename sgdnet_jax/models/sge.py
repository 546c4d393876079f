"""Structure Guidance Extractor (official `SGE.py`, SPEC §2.1) and CTO's Sobel gate.

The upstream dense Sobel convolutions (C -> C, the same 3x3 kernel for every channel pair) equal a
Sobel of the channel sum; we compute that, with constant kernels and a safe square root.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgdnet_jax.models import layers


def sobel_gate(x: jax.Array, gx: jax.Array, gy: jax.Array) -> jax.Array:
  """`sigmoid(sqrt(gx^2 + gy^2)) * x` with a finite gradient where the magnitude is 0."""
  magnitude = layers.safe_sqrt(jnp.square(gx) + jnp.square(gy))
  return (jax.nn.sigmoid(magnitude) * x.astype(layers.param_dtype(x.dtype))).astype(x.dtype)


class BottleneckRefiner(nn.Module):
  """`ReLU(x + BN(1x1(ReLU(BN(3x3(ReLU(BN(1x1(x)))))))))`, bias-free convs (keys `refine.N`)."""

  reduction: int = 4
  dtype: Any | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    c = x.shape[-1]
    mid = c // self.reduction
    y = x
    for conv_index, (features, kernel) in enumerate(((mid, 1), (mid, 3), (c, 1))):
      index = 3 * conv_index
      y = layers.Conv2d(
        features,
        kernel,
        padding=kernel // 2,
        use_bias=False,
        dtype=self.dtype,
        name=f"refine_{index}",
      )(y)
      y = layers.BatchNorm(dtype=self.dtype, name=f"refine_{index + 1}")(y, train)
      if conv_index < 2:
        y = nn.relu(y)
    return nn.relu(x + y)


class StructureGuidanceExtractor(nn.Module):
  """SGE(x4, x1) -> edge logits (B, H1, W1, 1) and guidance (B, H1, W1, guide_channels)."""

  mid_channels: int = 256
  guide_channels: int = 16
  reduction: int = 4
  dtype: Any | None = None

  @nn.compact
  def __call__(self, x4, x1, train: bool) -> dict[str, jax.Array]:
    proj = lambda name, x: layers.ConvBN(
      self.mid_channels, 1, activation=nn.relu, dtype=self.dtype, name=name
    )(x, train)
    s4 = proj("s4_proj", x4)
    s1 = proj("s1_proj", x1)
    # Each stream is Sobel-modulated and refined at its own resolution (s4 before upsampling).
    s4 = BottleneckRefiner(self.reduction, self.dtype, name="refine4")(
      sobel_gate(s4, *layers.sobel_of_channel_sum(s4)), train
    )
    s1 = BottleneckRefiner(self.reduction, self.dtype, name="refine1")(
      sobel_gate(s1, *layers.sobel_of_channel_sum(s1)), train
    )
    s4 = layers.resize_bilinear(s4, s1.shape[1:3])
    fused = layers.ConvBN(
      self.mid_channels, 3, padding=1, activation=nn.relu, dtype=self.dtype, name="fuse"
    )(jnp.concatenate([s4, s1], axis=-1), train)
    edge = layers.Conv2d(1, 1, use_bias=False, dtype=self.dtype, name="out_edge_map")(fused)
    guidance = layers.Conv2d(
      self.guide_channels, 1, use_bias=False, dtype=self.dtype, name="out_guidance"
    )(fused)
    return {"edge_logits": edge, "guidance": guidance}


def cto_sobel_gate(x, train: bool, index: int):
  """CTO's `run_sobel` with `get_sobel(C, 1)`: channel-sum Sobel, BN(1) per direction, gate.

  Call inside the network's compact method: the two BN(1) layers (`sobel_xN.1`, `sobel_yN.1`) are
  its only parameters and belong to the caller's scope, as upstream; the kernels are constants.
  """
  gx, gy = layers.sobel_of_channel_sum(x)
  gx = layers.BatchNorm(name=f"sobel_x{index}_1")(gx, train)
  gy = layers.BatchNorm(name=f"sobel_y{index}_1")(gy, train)
  return sobel_gate(x, gx, gy)
