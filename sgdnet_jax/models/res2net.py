"""Res2Net v1b 26w4s (Gao et al.), the encoder of CTO and SGD-Net.

Submodule names follow the upstream state_dict with the package-wide rule of
`sgdnet_jax.models.naming`: `layer1.0.convs.1.weight` is `layer1_0/convs_1/kernel` (SPEC §1.2).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from sgdnet_jax.models import layers

# Blocks per stage. 50 and 101 are the published networks; 14 (one block a stage, no pretrained
# weights) keeps every kind of layer for quick CPU runs and the tests of the training machinery.
DEPTH_TO_BLOCKS = {14: (1, 1, 1, 1), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class Bottle2neck(nn.Module):
  """Res2Net bottleneck: 1x1, `scale` hierarchical 3x3 branches, 1x1, residual.

  A 'stage' block (first of each layer) processes every split independently and average-pools
  the last split; a 'normal' block feeds each branch the previous branch's output plus its split.
  """

  planes: int
  stride: int = 1
  stage: bool = False
  has_downsample: bool = False
  base_width: int = 26
  scale: int = 4
  dtype: Any | None = None

  @nn.compact
  def __call__(self, x, train: bool):
    width = self.planes * self.base_width // 64
    init = layers.kaiming_normal_fan_out
    conv = lambda f, k, s, p, name: layers.Conv2d(
      f, k, s, p, use_bias=False, kernel_init=init, dtype=self.dtype, name=name
    )
    bn = lambda name: layers.BatchNorm(dtype=self.dtype, name=name)

    out = nn.relu(bn("bn1")(conv(width * self.scale, 1, 1, 0, "conv1")(x), train))
    splits = jnp.split(out, self.scale, axis=-1)
    branch_outputs = []
    branch = None
    for i in range(self.scale - 1):
      branch_in = splits[i] if (i == 0 or self.stage) else branch + splits[i]
      branch = conv(width, 3, self.stride, 1, f"convs_{i}")
      branch = nn.relu(bn(f"bns_{i}")(branch(branch_in), train))
      branch_outputs.append(branch)
    last = splits[-1]
    if self.stage:
      last = layers.avg_pool_3x3_count_pad(last, self.stride)
    out = jnp.concatenate(branch_outputs + [last], axis=-1)
    out = bn("bn3")(conv(self.planes * 4, 1, 1, 0, "conv3")(out), train)

    if self.has_downsample:
      shortcut = layers.avg_pool_ceil_exclude_pad(x, self.stride)
      shortcut = bn("downsample_2")(conv(self.planes * 4, 1, 1, 0, "downsample_1")(shortcut), train)
    else:
      shortcut = x
    return nn.relu(out + shortcut)


class Res2Net(nn.Module):
  """Res2Net-50/101 v1b backbone without the classifier; returns the four stage outputs.

  Outputs (NHWC) for an input of size S: x1 (S/4, 256 ch), x2 (S/8, 512), x3 (S/16, 1024),
  x4 (S/32, 2048) at the standard `base_planes=64` (smaller values give tiny test networks).
  """

  depth: int = 50
  base_planes: int = 64
  base_width: int = 26
  scale: int = 4
  dtype: Any | None = None

  @nn.compact
  def __call__(self, x, train: bool) -> dict[str, jnp.ndarray]:
    if self.depth not in DEPTH_TO_BLOCKS:
      raise ValueError(
        f"model.backbone_depth must be one of {sorted(DEPTH_TO_BLOCKS)}, got {self.depth}"
      )
    init = layers.kaiming_normal_fan_out
    stem = [(self.base_planes // 2, 2), (self.base_planes // 2, 1), (self.base_planes, 1)]
    for index, (features, stride) in enumerate(stem):
      x = layers.Conv2d(
        features,
        3,
        stride,
        1,
        use_bias=False,
        kernel_init=init,
        dtype=self.dtype,
        name=f"conv1_{3 * index}",
      )(x)
      if index < 2:
        x = nn.relu(layers.BatchNorm(dtype=self.dtype, name=f"conv1_{3 * index + 1}")(x, train))
    x = nn.relu(layers.BatchNorm(dtype=self.dtype, name="bn1")(x, train))
    x = layers.max_pool_3x3_s2(x)

    features = {}
    all_planes = tuple(self.base_planes * 2**i for i in range(4))
    for stage_index, (planes, blocks) in enumerate(zip(all_planes, DEPTH_TO_BLOCKS[self.depth])):
      stride = 1 if stage_index == 0 else 2
      for block in range(blocks):
        first = block == 0
        x = Bottle2neck(
          planes,
          stride if first else 1,
          stage=first,
          has_downsample=first,
          base_width=self.base_width,
          scale=self.scale,
          dtype=self.dtype,
          name=f"layer{stage_index + 1}_{block}",
        )(x, train)
      features[f"x{stage_index + 1}"] = x
    return features
