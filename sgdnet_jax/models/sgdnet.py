"""SGD-Net and its baselines and ablations as one configurable network (SPEC §0.1, §1.0, §3).

The network is CTO's body (Res2Net, patch transformer on x1, dual-attention head, reduce convs,
three DM decoders, three predictors) with two switches:

* `edge_branch`: 'sge' (SGD-Net's Structure Guidance Extractor), 'eam' (CTO's Sobel-gated EAM)
  or 'none' (the plain baseline, no edge output).
* `skip_fusion`, how x1..x3 are refined before the decoder: 'sgdc' (SGD-Net), 'edge_gate'
  (CTO's `x * sigmoid(edge)`), 'guidance_add' (`x + P(g)`), 'contmix' (OverLoCK's
  DynamicConvBlock fed by the guidance) or 'none'.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sgdnet_jax.models import cto, layers, res2net, sgdc, sge
from sgdnet_jax.models import knockouts as knockout_lib

EDGE_BRANCHES = ("sge", "eam", "none")
SKIP_FUSIONS = ("sgdc", "edge_gate", "guidance_add", "contmix", "none")
# Which edge branch each fusion needs.
FUSION_NEEDS = {"sgdc": "sge", "guidance_add": "sge", "contmix": "sge", "edge_gate": "eam"}
SKIP_NAMES = ("x1", "x2", "x3")


class SGDCFusion(nn.Module):
  """SGDC on x1, x2, x3, all fed the same guidance (key prefix `sgdc.x1.` ...)."""

  options: Mapping[str, Any]
  dtype: Any | None = None
  knockouts: tuple[str, ...] = ()

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], guidance, train: bool):
    if knockout_lib.SGDC_IDENTITY in self.knockouts:
      return tuple(features)
    return tuple(
      sgdc.SGDC(**self.options, knockouts=self.knockouts, dtype=self.dtype, name=name)(
        x, guidance, train
      )
      for name, x in zip(SKIP_NAMES, features)
    )


class GuidanceAddFusion(nn.Module):
  """Table 4 row (2): `x_i + P_i(resize(g))`, P_i a 1x1 conv (with bias) from guidance to C_i."""

  dtype: Any | None = None

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], guidance, train: bool):
    del train
    outputs = []
    for name, x in zip(SKIP_NAMES, features):
      g = layers.resize_bilinear(guidance.astype(x.dtype), x.shape[1:3])
      outputs.append(x + layers.Conv2d(x.shape[-1], 1, dtype=self.dtype, name=name)(g))
    return tuple(outputs)


class ContMixFusion(nn.Module):
  """Table 4 row (3): OverLoCK DynamicConvBlock(x_i, resize(g)) at x1, x2, x3."""

  options: Mapping[str, Any]
  dtype: Any | None = None

  @nn.compact
  def __call__(self, features: Sequence[jax.Array], guidance, train: bool):
    from sgdnet_jax.models import contmix

    outputs = []
    for name, x in zip(SKIP_NAMES, features):
      g = layers.resize_bilinear(guidance.astype(x.dtype), x.shape[1:3])
      block = contmix.DynamicConvBlock(
        dim=x.shape[-1], ctx_dim=4 * guidance.shape[-1], **self.options, dtype=self.dtype, name=name
      )
      outputs.append(block(x, g, train)[0])
    return tuple(outputs)


class SGDNet(nn.Module):
  """The configurable SGD-Net / CTO / baseline network. Build it with `models.build(config)`.

  `__call__(images, train)` takes NHWC images normalised with ImageNet statistics and returns
  `{'o1', 'o2', 'o3'}` logits (B, H, W, num_classes) at input resolution (o1 the finest, used at
  test time), `'edge'` (edge probability (B, H, W, 1), only with an edge branch) and `'aux'`
  (backbone stages `x1`..`x4`, `edge_logits` and `guidance` at x1 resolution when present).
  `conv_impl` chooses how the convolutions lower (`layers.CONV_IMPLS`); parameters do not depend
  on it.
  """

  num_classes: int = 1
  backbone_depth: int = 50
  backbone_base_planes: int = 64
  decoder_channels: int = 64
  trans_patch_sizes: tuple[int, ...] = cto.DEFAULT_PATCH_SIZES
  edge_branch: str = "sge"
  skip_fusion: str = "sgdc"
  sge_options: Mapping[str, Any] = None
  sgdc_options: Mapping[str, Any] = None
  contmix_options: Mapping[str, Any] = None
  head_dropout: float = 0.1
  dtype: Any | None = None
  conv_impl: str = "auto"
  knockouts: tuple[str, ...] = ()  # functional knockouts (models/knockouts.py), checked by build

  def check(self):
    """Raises ValueError naming the config field when the combination is not buildable."""
    if self.num_classes not in (1, 2):
      raise ValueError(
        f"model.num_classes must be 1 (sigmoid) or 2 (softmax), got {self.num_classes}"
      )
    if self.edge_branch not in EDGE_BRANCHES:
      raise ValueError(
        f"model.edge_branch must be one of {EDGE_BRANCHES}, got {self.edge_branch!r}"
      )
    if self.skip_fusion not in SKIP_FUSIONS:
      raise ValueError(f"model.skip_fusion must be one of {SKIP_FUSIONS}, got {self.skip_fusion!r}")
    needed = FUSION_NEEDS.get(self.skip_fusion)
    if needed and needed != self.edge_branch:
      raise ValueError(
        f"model.skip_fusion={self.skip_fusion!r} needs model.edge_branch={needed!r}, "
        f"got {self.edge_branch!r}"
      )
    if self.conv_impl not in layers.CONV_IMPLS:
      raise ValueError(
        f"model.conv_impl must be one of {layers.CONV_IMPLS}, got {self.conv_impl!r}"
      )
    float64 = self.dtype is not None and jnp.dtype(self.dtype) == jnp.float64
    if float64 and not jax.config.jax_enable_x64:
      raise ValueError(
        "model.dtype='float64' needs 64-bit JAX: call "
        "jax.config.update('jax_enable_x64', True) first (or set JAX_ENABLE_X64=1)"
      )

  def __call__(self, images: jax.Array, train: bool = False) -> dict[str, Any]:
    self.check()
    with layers.conv_impl(self.conv_impl):
      return self.forward(images, train)

  @nn.compact
  def forward(self, images: jax.Array, train: bool) -> dict[str, Any]:
    """The network itself; `__call__` runs it under the module's convolution implementation."""
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be NHWC with 3 channels, got shape {images.shape}")
    dtype = self.dtype
    size = images.shape[1:3]
    x = images.astype(dtype or jnp.float32)
    stages = res2net.Res2Net(
      self.backbone_depth, self.backbone_base_planes, dtype=dtype, name="resnet"
    )(x, train)
    x1, x2, x3, x4 = (stages[k] for k in ("x1", "x2", "x3", "x4"))

    trans = cto.PatchTransformer(tuple(self.trans_patch_sizes), dtype, name="multi_trans")(
      x1, train
    )
    aux: dict[str, Any] = dict(stages)
    edge_logits = guidance = None
    if self.edge_branch == "sge":
      out = sge.StructureGuidanceExtractor(**(self.sge_options or {}), dtype=dtype, name="sge")(
        x4, x1, train
      )
      edge_logits = out["edge_logits"]
      guidance = knockout_lib.knockout_guidance(out["guidance"], self.knockouts)
      aux["guidance"] = guidance
    elif self.edge_branch == "eam":
      s1 = cto.sobel_gate(x1, train, 1)
      s4 = cto.sobel_gate(x4, train, 4)
      edge_logits = cto.EdgeAttentionModule(self.decoder_channels, dtype, name="eam")(s4, s1, train)

    trans = layers.resize_bilinear(trans, x4.shape[1:3])
    dual = cto.DualAttentionHead(x4.shape[-1], self.head_dropout, dtype, name="head")(
      jnp.concatenate([trans, x4], axis=-1), train
    )

    skips = (x1, x2, x3)
    if self.skip_fusion == "sgdc":
      skips = SGDCFusion(dict(self.sgdc_options or {}), dtype, self.knockouts, name="sgdc")(
        skips, guidance, train
      )
    elif self.skip_fusion == "guidance_add":
      skips = GuidanceAddFusion(dtype, name="guidance_add")(skips, guidance, train)
    elif self.skip_fusion == "contmix":
      skips = ContMixFusion(dict(self.contmix_options or {}), dtype, name="contmix")(
        skips, guidance, train
      )
    elif self.skip_fusion == "edge_gate" and knockout_lib.EDGE_OFF not in self.knockouts:
      attention = jax.nn.sigmoid(edge_logits)
      skips = tuple(
        s * layers.resize_bilinear(attention, s.shape[1:3]).astype(s.dtype) for s in skips
      )

    channels = self.decoder_channels
    reduced = [
      cto.conv1x1_bn_relu(channels, dtype, f"reduce{i + 1}")(s, train) for i, s in enumerate(skips)
    ]
    decoded = cto.conv1x1_bn_relu(channels, dtype, "reduce4")(dual, train)
    decoder_maps = {}
    for level in (3, 2, 1):
      decoded = cto.DecoderModule(channels, dtype, name=f"dm{level}")(
        reduced[level - 1], decoded, train
      )
      decoder_maps[level] = decoded

    outputs: dict[str, Any] = {}
    for level in (1, 2, 3):
      logits = layers.Conv2d(self.num_classes, 1, dtype=dtype, name=f"predictor{level}")(
        decoder_maps[level]
      )
      logits = logits.astype(layers.param_dtype(logits.dtype))
      outputs[f"o{level}"] = layers.resize_bilinear(logits, size)
    if edge_logits is not None:
      aux["edge_logits"] = edge_logits.astype(layers.param_dtype(edge_logits.dtype))
      outputs["edge"] = layers.resize_bilinear(jax.nn.sigmoid(aux["edge_logits"]), size)
    outputs["aux"] = aux
    return outputs
