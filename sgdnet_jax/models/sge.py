"""Structure Guidance Extractor (official `SGE.py`, SPEC §2.1).

The upstream dense Sobel convolutions (C -> C, the same 3x3 kernel for every channel pair) equal a
Sobel of the channel sum; we compute that, with constant kernels and a safe square root.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgdnet_jax.models import layers


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
      layers.sobel_gate(s4, *layers.sobel_of_channel_sum(s4)), train
    )
    s1 = BottleneckRefiner(self.reduction, self.dtype, name="refine1")(
      layers.sobel_gate(s1, *layers.sobel_of_channel_sum(s1)), train
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
