"""Helpers shared by the experiment configs: argument parsing and the model block."""

from typing import Any

import ml_collections  # Re-exported for the config files.

from sgdnet_jax import models


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


def training_config(
  model: ml_collections.ConfigDict, data_dir: str = ""
) -> ml_collections.ConfigDict:
  """Everything but the model and data specifics: CTO's optimisation setup (SPEC §0.8)."""
  from sgdnet_jax import evaluate
  from sgdnet_jax.data import pipeline
  from sgdnet_jax.train import losses, optimizer, state

  config = ml_collections.ConfigDict()
  config.model = model
  config.data = pipeline.default_data_config()
  config.data.dir = data_dir
  config.seed = 0
  config.prng_impl = "rbg"  # jax.random implementation; rbg compiles much faster than threefry
  config.global_batch_size = 16
  config.eval_batch_size = 16
  config.epochs = 50
  config.total_steps = 0  # 0: epochs x steps per epoch
  config.log_every_steps = 10
  config.eval_every_epochs = 1  # 0: no validation (and no best checkpoint)
  config.checkpoint_every_steps = 0  # 0: at the end of every epoch
  config.keep_checkpoints = 2
  config.init_from = ""  # a `convert` output or another workdir (params + BN statistics)
  config.distributed = "auto"  # see sgdnet_jax/distributed.py
  config.compilation_cache_dir = (
    "~/.cache/sgdnet_jax/xla"  # '' disables; $JAX_COMPILATION_CACHE_DIR wins
  )
  config.optimizer = optimizer.default_optimizer_config()
  config.loss = losses.default_loss_config()
  config.mesh = state.default_mesh_config()
  config.metrics = evaluate.default_metrics_config()
  return config
