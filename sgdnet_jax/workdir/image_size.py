"""The one rule for the square image size a command runs its model at.

Every command that builds inputs for a model (train, evaluate, predict, export, ablate, sweep,
demo) takes its size from `resolve`, which also checks that the model accepts it, so that a wrong
size is one line before anything is loaded or traced.
"""

import os
from collections.abc import Sequence

import ml_collections

from sgdnet_jax import models
from sgdnet_jax.data import pipeline
from sgdnet_jax.workdir import variables_io


def resolve(config: ml_collections.ConfigDict, workdirs: Sequence[str | os.PathLike] = ()) -> int:
  """The image size of a run of `config` on `workdirs`, checked against `config.model`.

  The first of these that is set, in this order:

  1. `config.data.image_size`: what the user asked for;
  2. the `data.image_size` a workdir's `config.json` records (the first workdir that records
     one): the size its model was trained at, which `train` writes there resolved;
  3. the size `config.data.dir` was prepared at (`pipeline.image_size`): a fresh training run.

  The workdir's record comes before the prepared data because the model was trained at it, and
  because predicting and exporting need no prepared dataset. Raises ConfigError when the model
  does not take the size (`models.check_input_size`) or when none of the three gives one.
  """
  size = int(config.data.image_size) or _recorded_size(workdirs) or pipeline.image_size(config.data)
  models.check_input_size(config.model, size, f"data.image_size={size}")
  return size


def _recorded_size(workdirs: Sequence[str | os.PathLike]) -> int:
  """The size the first workdir with a `config.json` that states one records; 0 if none does."""
  for workdir in workdirs:
    recorded = variables_io.load_config_dict(workdir)
    if recorded and recorded.get("data", {}).get("image_size"):
      return int(recorded["data"]["image_size"])
  return 0
