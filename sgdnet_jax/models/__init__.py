"""Flax models: `build(model_config)` and the named variants of the paper's Tables 4 and 5.

A model config is an `ml_collections.ConfigDict` (see `default_model_config`); a variant is only a
preset of its fields, so every ablation can also be reached field by field from the command line.
"""

from typing import Any

import flax
import jax.numpy as jnp
import ml_collections

from sgdnet_jax.models.sgdnet import SGDNet

# variant name -> field overrides on top of `default_model_config`.
VARIANTS: dict[str, dict[str, Any]] = {
  "sgdnet": {},
  "cto": {"edge_branch": "eam", "skip_fusion": "edge_gate"},
  "baseline": {"edge_branch": "none", "skip_fusion": "none"},
  "sge_add": {"skip_fusion": "guidance_add"},
  "sge_contmix": {"skip_fusion": "contmix"},
  "sgdc_self_guidance": {"sgdc.guidance": "self"},
  "sgdc_no_local": {"sgdc.local_branch": False},
  "sgdc_no_dynamic": {"sgdc.dynamic_branch": False},
  "sgdc_paper_eq": {"sgdc.form": "paper"},
}

# float64 is for tests (needs jax_enable_x64): parameters, BN statistics and losses follow it.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


def default_model_config(
  variant: str = "sgdnet", num_classes: int = 1
) -> ml_collections.ConfigDict:
  """The full-size model config of `variant` (SPEC §0.1 defaults)."""
  if variant not in VARIANTS:
    raise ValueError(f"model.variant must be one of {sorted(VARIANTS)}, got {variant!r}")
  config = ml_collections.ConfigDict()
  config.variant = variant
  config.num_classes = num_classes
  config.backbone_depth = 50
  config.backbone_base_planes = 64  # Res2Net width; 64 is the standard network.
  config.decoder_channels = 64  # reduce convs, DM decoders and the EAM.
  config.trans_patch_sizes = (32, 16, 8, 4)
  config.edge_branch = "sge"
  config.skip_fusion = "sgdc"
  config.head_dropout = 0.1
  config.dtype = "float32"  # Compute dtype; parameters, BN statistics and losses stay float32.
  config.sge = ml_collections.ConfigDict(dict(mid_channels=256, guide_channels=16, reduction=4))
  config.sgdc = ml_collections.ConfigDict(
    dict(
      num_heads=4,
      kernel_size=7,
      guidance="sge",
      local_branch=True,
      dynamic_branch=True,
      form="official",
      impl="shifted",
      mlp_ratio=4.0,
      layer_scale_init=1e-6,
      drop_path=0.0,
    )
  )
  config.contmix = ml_collections.ConfigDict(
    dict(kernel_size=7, smk_size=5, num_heads=2, mlp_ratio=4.0)
  )
  for dotted, value in VARIANTS[variant].items():
    target = config
    *parents, leaf = dotted.split(".")
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return config


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
  )
  module.check()
  return module


def _frozen(options: ml_collections.ConfigDict) -> flax.core.FrozenDict:
  return flax.core.FrozenDict(options.to_dict())


__all__ = ["SGDNet", "VARIANTS", "build", "default_model_config"]
