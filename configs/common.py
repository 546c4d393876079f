"""Helpers shared by the experiment configs: argument parsing and the model block."""
from typing import Any, Dict, Optional

import ml_collections  # Re-exported for the config files.

from sgdnet_jax import models


def parse_arg(arg: Optional[str], **defaults: Any) -> ml_collections.ConfigDict:
  """Parses `key=value,key=value` (the part after `:` in `--config file.py:args`).

  Values are converted to the type of the default (bool accepts true/false/1/0); keys that are
  not in `defaults` are rejected with the list of known keys.
  """
  parsed: Dict[str, Any] = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    if "=" not in item:
      raise ValueError(f"config argument {item!r} is not key=value (known keys: {sorted(defaults)})")
    key, value = (part.strip() for part in item.split("=", 1))
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; known keys: {sorted(defaults)}")
    parsed[key] = _convert(key, value, defaults[key])
  return ml_collections.ConfigDict(parsed)


def _convert(key: str, value: str, default: Any) -> Any:
  if isinstance(default, bool):
    lowered = value.lower()
    if lowered not in ("true", "false", "1", "0"):
      raise ValueError(f"config argument {key}={value!r}: expected true or false")
    return lowered in ("true", "1")
  if isinstance(default, int):
    try:
      return int(value)
    except ValueError:
      raise ValueError(f"config argument {key}={value!r}: expected an integer") from None
  if isinstance(default, float):
    try:
      return float(value)
    except ValueError:
      raise ValueError(f"config argument {key}={value!r}: expected a number") from None
  return value


def model_config(variant: str, num_classes: int) -> ml_collections.ConfigDict:
  """The full-size model block for `variant` (see `sgdnet_jax.models.VARIANTS`)."""
  return models.default_model_config(variant, num_classes)


def tiny_model_config(variant: str, num_classes: int) -> ml_collections.ConfigDict:
  """A narrow network with the same structure, for CPU tests at 64x64 inputs."""
  config = models.default_model_config(variant, num_classes)
  config.backbone_base_planes = 16
  config.decoder_channels = 16
  config.trans_patch_sizes = (8, 4, 2, 1)
  config.sge.mid_channels = 32
  config.sge.guide_channels = 8
  return config
