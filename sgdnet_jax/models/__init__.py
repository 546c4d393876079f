"""Flax models: `build(model_config)` returns the configured SGD-Net / CTO / baseline network.

The model block of a config (`configs/default.py`, `config.model`) lists every field; a named
variant is only a preset of those fields, so every ablation can be reached field by field.
`foreground_probability` turns the network's logits into the probability used at test time;
`check_input_size` is the one rule for the image and window sides the network accepts.
"""

import math

import flax
import jax
import jax.numpy as jnp
import ml_collections

from sgdnet_jax.core import errors
from sgdnet_jax.models.knockouts import check as check_knockouts
from sgdnet_jax.models.sgdnet import SGDNet

# The encoder's output stride (x4 is 1/32 of the input); the patch transformer runs on x1 (1/4).
ENCODER_STRIDE = 32
TRANSFORMER_STRIDE = 4
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
    knockouts=check_knockouts(model_config),
  )
  module.check()
  return module


def size_multiple(model_config: ml_collections.ConfigDict) -> int:
  """The step of the input sides the network accepts: every stage of the encoder halves a
  whole number of pixels, and every patch size of the transformer divides the 1/4-size map."""
  patches = [TRANSFORMER_STRIDE * int(p) for p in model_config.trans_patch_sizes]
  return math.lcm(ENCODER_STRIDE, *patches)


def check_input_size(model_config: ml_collections.ConfigDict, size: int, what: str):
  """Raises ConfigError (naming `what`, e.g. 'data.image_size=64') unless the network accepts
  square inputs of side `size`; the message names the nearest sides that work.

  Every command calls this before anything is traced, so that a wrong size is one line instead
  of a reshape error deep in `models/cto.py`.
  """
  multiple = size_multiple(model_config)
  if size > 0 and size % multiple == 0:
    return
  below, above = size // multiple * multiple, (size // multiple + 1) * multiple
  nearest = f"{below} or {above}" if below else str(above)
  raise errors.ConfigError(
    f"{what}: the model takes sides that are multiples of {multiple} (the encoder's stride "
    f"{ENCODER_STRIDE}, and model.trans_patch_sizes={tuple(model_config.trans_patch_sizes)} on "
    f"the 1/{TRANSFORMER_STRIDE}-size features), not {size}; use {nearest}"
  )


def foreground_probability(logits: jax.Array) -> jax.Array:
  """(B, H, W, C) logits -> (B, H, W) foreground probability: sigmoid (C=1) or softmax[1] (C=2)."""
  if logits.shape[-1] == 1:
    return jax.nn.sigmoid(logits[..., 0])
  return jax.nn.softmax(logits, axis=-1)[..., 1]


def _frozen(options: ml_collections.ConfigDict) -> flax.core.FrozenDict:
  return flax.core.FrozenDict(options.to_dict())


__all__ = [
  "DTYPES",
  "ENCODER_STRIDE",
  "SGDNet",
  "build",
  "check_input_size",
  "foreground_probability",
  "size_multiple",
]
