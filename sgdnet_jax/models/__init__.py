"""Flax models: `build(model_config)` returns the configured SGD-Net / CTO / baseline network.

The model block of a config (`configs/default.py`, `config.model`) lists every field; a named
variant is only a preset of those fields, so every ablation can be reached field by field.
`foreground_probability` turns the network's logits into the probability used at test time.
"""

import flax
import jax
import jax.numpy as jnp
import ml_collections

from sgdnet_jax.models.lesions import check as check_lesions
from sgdnet_jax.models.sgdnet import SGDNet

# float64 is for tests (needs jax_enable_x64): parameters, BN statistics and losses follow it.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


def build(model_config: ml_collections.ConfigDict) -> SGDNet:
  """Returns the Flax module described by `model_config` (validated, with clear errors)."""
  if model_config.dtype not in DTYPES:
    raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {model_config.dtype!r}")
  module = SGDNet(
    num_classes=model_config.num_classes,
    backbone_depth=model_config.backbone_depth,
    backbone_base_planes=model_config.backbone_base_planes,
    decoder_channels=model_config.decoder_channels,
    trans_patch_sizes=tuple(model_config.trans_patch_sizes),
    edge_branch=model_config.edge_branch,
    skip_fusion=model_config.skip_fusion,
    sge_options=_frozen(model_config.sge),
    sgdc_options=_frozen(model_config.sgdc),
    contmix_options=_frozen(model_config.contmix),
    head_dropout=model_config.head_dropout,
    dtype=DTYPES[model_config.dtype],
    conv_impl=model_config.conv_impl,
    lesions=check_lesions(model_config),
  )
  module.check()
  return module


def foreground_probability(logits: jax.Array) -> jax.Array:
  """(B, H, W, C) logits -> (B, H, W) foreground probability: sigmoid (C=1) or softmax[1] (C=2)."""
  if logits.shape[-1] == 1:
    return jax.nn.sigmoid(logits[..., 0])
  return jax.nn.softmax(logits, axis=-1)[..., 1]


def _frozen(options: ml_collections.ConfigDict) -> flax.core.FrozenDict:
  return flax.core.FrozenDict(options.to_dict())


__all__ = ["DTYPES", "SGDNet", "build", "foreground_probability"]
