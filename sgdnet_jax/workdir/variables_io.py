"""Model variables ({'params', 'batch_stats'}) on disk as Orbax checkpoints.

A *variables directory* holds `variables/` (an Orbax checkpoint of the two collections) and
`config.json` (the resolved config that built the model). `convert` writes one; `train`
starts from one (`config.init_from`); `evaluate`, `predict` and `export-torch` read one. Every
directory here may be a local path or a `gs://` URL (`sgdnet_jax.core.paths`).
"""

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from sgdnet_jax.core import config_utils, errors, paths
from sgdnet_jax.workdir import layout


def save_variables(
  directory: str | os.PathLike, variables: dict[str, Any], config_dict: dict | None = None
):
  """Writes `variables` (and, from process 0, the config that built them) into `directory`.

  Orbax writes to a temporary folder and renames it on success (or commits it with a marker
  file in an object store), so an interrupted save never leaves a half-written `variables/`.
  """
  directory = paths.as_path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  target = layout.variables_dir(directory)
  if target.exists():
    raise FileExistsError(f"{target} already exists; choose an empty --out directory")
  tree = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(target, jax.tree_util.tree_map(np.asarray, tree))
  checkpointer.wait_until_finished()
  if config_dict is not None and jax.process_index() == 0:
    paths.write_text_atomic(
      layout.config_file(directory), json.dumps(config_dict, indent=2, sort_keys=True, default=str)
    )


def load_variables(directory: str | os.PathLike) -> dict[str, Any]:
  """Reads variables as numpy arrays from a variables directory or a training workdir.

  A training workdir gives its best checkpoint by validation Dice, else its latest one.
  """
  directory = paths.as_path(directory)
  if not directory.is_dir():
    raise errors.UserError(
      f"{directory} does not exist or is not a folder; pass a training workdir or the --out "
      f"folder of `convert`"
    )
  target = layout.variables_dir(directory)
  if target.is_dir():
    restored = dict(ocp.StandardCheckpointer().restore(target))
  else:
    try:
      restored = restore_workdir_variables(directory)
    except FileNotFoundError:
      raise errors.UserError(
        f"{directory} holds no model variables: neither a '{layout.VARIABLES_DIR}/' checkpoint"
        f" (the --out folder of `convert`) nor a training workdir with checkpoints; train first"
        f" or pass another folder"
      ) from None
  return jax.tree_util.tree_map(np.asarray, restored)


def load_config_dict(directory: str | os.PathLike) -> dict | None:
  """The config stored beside the variables (renamed fields under their current names), or None
  when there is none."""
  path = layout.config_file(directory)
  if not path.exists():
    return None
  return config_utils.rename_recorded_fields(json.loads(path.read_text()))


def restore_workdir_variables(workdir: str | os.PathLike, which: str = "best") -> dict[str, Any]:
  """{'params', 'batch_stats'} from a training workdir: the best checkpoint, else the latest."""
  best_dir, latest_dir = layout.best_dir(workdir), layout.latest_dir(workdir)
  if which == "best" and best_dir.is_dir():
    with ocp.CheckpointManager(best_dir, item_names=("variables",)) as manager:
      step = manager.latest_step()
      if step is not None:
        restored = manager.restore(
          step, args=ocp.args.Composite(variables=ocp.args.StandardRestore())
        )
        return dict(restored["variables"])
  if latest_dir.is_dir():
    with ocp.CheckpointManager(latest_dir, item_names=("state", "data", "meta")) as manager:
      step = manager.latest_step()
      if step is not None:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
        state = restored["state"]
        return {"params": state["params"], "batch_stats": state["batch_stats"]}
  raise FileNotFoundError(
    f"{workdir}: no checkpoint found in {layout.BEST_DIR}/ or {layout.LATEST_DIR}/"
  )
