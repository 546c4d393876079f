"""Model variables ({'params', 'batch_stats'}) on disk as Orbax checkpoints.

A *variables directory* holds `variables/` (an Orbax checkpoint of the two collections) and
`config.json` (the resolved config that built the model). `convert` writes one; `train`
starts from one (`config.init_from`); `evaluate`, `predict` and `export-torch` read one. Every
directory here may be a local path or a `gs://` URL (`sgdnet_jax.core.paths`).
"""

import json
import logging
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

  A training workdir gives its best checkpoint by validation Dice, else its latest one; a damaged
  checkpoint is skipped for the next (`restore_workdir_variables`).
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
  """{'params', 'batch_stats'} from a training workdir: the newest intact checkpoint of `best/`,
  else of `checkpoints/` (newest first).

  A checkpoint that cannot be restored (damaged bytes, a missing file) is skipped with a warning
  naming it and why. FileNotFoundError when the workdir has no checkpoint at all; UserError when
  it has some but none can be restored.
  """
  best_dir, latest_dir = layout.best_dir(workdir), layout.latest_dir(workdir)
  candidates = []  # (folder, items, step): the order to try
  if which == "best":
    candidates += [(best_dir, ("variables",), s) for s in _steps_newest_first(best_dir)]
  latest = ("state", "data", "meta")
  candidates += [(latest_dir, latest, s) for s in _steps_newest_first(latest_dir)]
  if not candidates:
    raise FileNotFoundError(
      f"{workdir}: no checkpoint found in {layout.BEST_DIR}/ or {layout.LATEST_DIR}/"
    )
  skipped = []
  for folder, items, step in candidates:
    item = items[0]
    try:
      with ocp.CheckpointManager(folder, item_names=items) as manager:
        restored = manager.restore(
          step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore()})
        )
    except Exception as error:  # Orbax and TensorStore raise many kinds for damaged bytes.
      reason = " ".join(str(error).split())[:300]
      skipped.append(f"{folder / str(step)} ({type(error).__name__}: {reason})")
      continue
    if skipped:
      logging.warning(
        "%s: skipped damaged checkpoint(s) %s; using %s",
        workdir,
        "; ".join(skipped),
        folder / str(step),
      )
    tree = restored[item]
    return {"params": tree["params"], "batch_stats": tree.get("batch_stats", {})}
  raise errors.UserError(
    f"{workdir}: every checkpoint is damaged: {'; '.join(skipped)}; train again (or restore the"
    " workdir from a copy)"
  )


def _steps_newest_first(folder: paths.Path) -> list[int]:
  """The steps Orbax finished in `folder` (none when it does not exist), newest first."""
  if not folder.is_dir():
    return []
  return sorted(ocp.utils.checkpoint_steps(folder), reverse=True)
