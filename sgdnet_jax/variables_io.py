"""Model variables ({'params', 'batch_stats'}) on disk as Orbax checkpoints.

A *variables directory* holds `variables/` (an Orbax checkpoint of the two collections) and
`config.json` (the resolved config that built the model). `convert` writes one; `train`
starts from one (`config.init_from`); `evaluate`, `predict` and `export-torch` read one.
"""

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from sgdnet_jax import errors

VARIABLES_SUBDIR = "variables"
CONFIG_FILE = "config.json"
# A training workdir's checkpoint folders (written by `train.checkpointing`).
LATEST_DIR = "checkpoints"
BEST_DIR = "best"


def save_variables(directory: str, variables: dict[str, Any], config_dict: dict | None = None):
  """Writes `variables` (and the config that built them) into `directory`, atomically.

  Orbax writes to a temporary folder and renames it on success, so an interrupted save never
  leaves a half-written `variables/`.
  """
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  target = os.path.join(directory, VARIABLES_SUBDIR)
  if os.path.exists(target):
    raise FileExistsError(f"{target} already exists; choose an empty --out directory")
  tree = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(target, jax.tree_util.tree_map(np.asarray, tree))
  checkpointer.wait_until_finished()
  if config_dict is not None:
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
      json.dump(config_dict, f, indent=2, sort_keys=True, default=str)


def load_variables(directory: str) -> dict[str, Any]:
  """Reads variables as numpy arrays from a variables directory or a training workdir.

  A training workdir gives its best checkpoint by validation Dice, else its latest one.
  """
  if not os.path.isdir(directory):
    raise errors.UserError(
      f"{directory} does not exist or is not a folder; pass a training workdir or the --out "
      f"folder of `convert`"
    )
  target = os.path.join(os.path.abspath(directory), VARIABLES_SUBDIR)
  if os.path.isdir(target):
    restored = dict(ocp.StandardCheckpointer().restore(target))
  else:
    try:
      restored = restore_workdir_variables(directory)
    except FileNotFoundError:
      raise errors.UserError(
        f"{directory} holds no model variables: neither a '{VARIABLES_SUBDIR}/' checkpoint (the "
        f"--out folder of `convert`) nor a training workdir with checkpoints; train first or "
        f"pass another folder"
      ) from None
  return jax.tree_util.tree_map(np.asarray, restored)


def load_config_dict(directory: str) -> dict | None:
  """The config stored beside the variables, or None when there is none."""
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def restore_workdir_variables(workdir: str, which: str = "best") -> dict[str, Any]:
  """{'params', 'batch_stats'} from a training workdir: the best checkpoint, else the latest."""
  workdir = os.path.abspath(workdir)
  best_dir, latest_dir = os.path.join(workdir, BEST_DIR), os.path.join(workdir, LATEST_DIR)
  if which == "best" and os.path.isdir(best_dir):
    with ocp.CheckpointManager(best_dir, item_names=("variables",)) as manager:
      step = manager.latest_step()
      if step is not None:
        restored = manager.restore(
          step, args=ocp.args.Composite(variables=ocp.args.StandardRestore())
        )
        return dict(restored["variables"])
  if os.path.isdir(latest_dir):
    with ocp.CheckpointManager(latest_dir, item_names=("state", "data", "meta")) as manager:
      step = manager.latest_step()
      if step is not None:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
        state = restored["state"]
        return {"params": state["params"], "batch_stats": state["batch_stats"]}
  raise FileNotFoundError(f"{workdir}: no checkpoint found in {BEST_DIR}/ or {LATEST_DIR}/")
