"""A workdir's variables as evaluate, predict, export and ablate read them: a damaged best
checkpoint falls back to the newest intact one, with a warning naming what was skipped."""

import logging
import pathlib

import numpy as np
import orbax.checkpoint as ocp
import pytest

from sgdnet_jax.core import errors
from sgdnet_jax.workdir import layout, variables_io


def _variables(value: float) -> dict:
  return {"params": {"w": np.full(3, value, np.float32)}, "batch_stats": {"m": np.zeros(2)}}


def _write_workdir(workdir) -> None:
  """best/6 and checkpoints/4, 6 as `train` writes them, each step's params filled with it."""
  with ocp.CheckpointManager(layout.best_dir(workdir), item_names=("variables",)) as manager:
    manager.save(6, args=ocp.args.Composite(variables=ocp.args.StandardSave(_variables(6))))
  with ocp.CheckpointManager(layout.latest_dir(workdir), item_names=("state", "meta")) as manager:
    for step in (4, 6):
      state = {**_variables(step), "step": np.int32(step)}
      args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave({}))
      manager.save(step, args=args)


def _damage(checkpoint) -> None:
  """Every file of the checkpoint's items overwritten with bytes no reader accepts."""
  for item in pathlib.Path(checkpoint).iterdir():
    for file in item.rglob("*") if item.is_dir() else ():
      if file.is_file():
        file.write_bytes(b"not a checkpoint")


def test_a_damaged_best_falls_back_to_the_newest_intact_checkpoint(tmp_path, caplog):
  _write_workdir(tmp_path)
  assert variables_io.load_variables(str(tmp_path))["params"]["w"].tolist() == [6, 6, 6]
  _damage(layout.best_dir(tmp_path) / "6")
  _damage(layout.latest_dir(tmp_path) / "6")
  with caplog.at_level(logging.WARNING):
    variables = variables_io.load_variables(str(tmp_path))
  assert variables["params"]["w"].tolist() == [4, 4, 4]
  skipped = [layout.best_dir(tmp_path) / "6", layout.latest_dir(tmp_path) / "6"]
  assert all(f"{path} (" in caplog.text for path in skipped), caplog.text
  assert f"using {layout.latest_dir(tmp_path) / '4'}" in caplog.text
  _damage(layout.latest_dir(tmp_path) / "4")
  with pytest.raises(errors.UserError, match="every checkpoint is damaged"):
    variables_io.load_variables(str(tmp_path))
