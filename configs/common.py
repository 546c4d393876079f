"""Helpers shared by the experiment configs: argument parsing, the variant preset, tiny widths,
sweep selection."""

from typing import Any

import ml_collections

from configs import default


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses `key=value,key=value` (the part after `:` in `--config file.py:args`).

  Values are converted to the type of the default (bool accepts true/false/1/0); keys that are
  not in `defaults` are rejected with the list of known keys.
  """
  parsed: dict[str, Any] = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    if "=" not in item:
      raise ValueError(
        f"config argument {item!r} is not key=value (known keys: {sorted(defaults)})"
      )
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


# Training recipes (docs/fidelity.md, "The CTO comparator"): `shared` is the paper's one setup
# for every method (configs/default.py); `cto` is CTO's published recipe (its
# config/isic_baseline.sh and MedISeg's defaults): structure loss, 90 epochs, batch 32, and no
# edge supervision (CTO's edge Dice takes a softmax over one channel: a constant, zero gradient).
# CTO's two-class softmax head is the `num_classes=2` argument.
RECIPES = {
  "shared": {},
  "cto": {"loss.seg": "structure", "loss.edge_weight": 0.0, "epochs": 90, "global_batch_size": 32},
}


def experiment(
  variant: str, num_classes: int, data_dir: str = "", recipe: str = "shared"
) -> ml_collections.ConfigDict:
  """The default config (`configs/default.py`) with the model preset `variant`, trained with
  `recipe` (RECIPES)."""
  if recipe not in RECIPES:
    raise ValueError(f"config argument recipe={recipe!r}: expected one of {sorted(RECIPES)}")
  config = default.apply_variant(default.get_config(), variant)
  config.model.num_classes = num_classes
  config.data.dir = data_dir
  for dotted, value in RECIPES[recipe].items():
    *parents, field = dotted.split(".")
    block = config
    for parent in parents:
      block = block[parent]
    block[field] = value
  return config


def make_tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Narrows the model to the same structure at small widths, for CPU tests at 64x64 inputs."""
  config.model.backbone_base_planes = 16
  config.model.decoder_channels = 16
  config.model.trans_patch_sizes = (8, 4, 2, 1)
  config.model.sge.mid_channels = 32
  config.model.sge.guide_channels = 8
  return config


def model_config(variant: str, num_classes: int) -> ml_collections.ConfigDict:
  """The full-size model block of `variant` (tests, benchmarks, notebooks)."""
  return experiment(variant, num_classes).model


def tiny_model_config(variant: str, num_classes: int) -> ml_collections.ConfigDict:
  """The narrow model block of `variant` (`make_tiny`)."""
  return make_tiny(experiment(variant, num_classes)).model


def select_sweep(sweeps: dict[str, list[dict[str, Any]]], name: str) -> list[dict[str, Any]]:
  """The runs of sweep `name` (for `get_sweep`); an unknown name lists the known ones."""
  if name not in sweeps:
    raise ValueError(f"unknown sweep {name!r}; known: {sorted(sweeps)} (file.py:sweep=<name>)")
  return sweeps[name]
