"""Orbax checkpoints of a training workdir: exact resume, last N, best by validation Dice.

  W/checkpoints/<step>/  state (TrainState), data (input iterator state), meta (epoch, best Dice)
  W/best/<step>/         variables ({'params', 'batch_stats'}) of the best validation Dice

Saves are asynchronous and atomic (Orbax writes to a temporary folder and renames it, or in an
object store marks it complete with a commit file), so a crash mid-save leaves the previous
checkpoint intact. W may be a local folder or a `gs://` URL (`sgdnet_jax.paths`).
"""

import os
from typing import Any

import orbax.checkpoint as ocp

from sgdnet_jax import paths
from sgdnet_jax.variables_io import BEST_DIR, LATEST_DIR


class WorkdirCheckpoints:
  """The two checkpoint managers of a workdir."""

  def __init__(self, workdir: str | os.PathLike, keep: int = 2, async_save: bool = True):
    workdir = paths.as_path(workdir)
    options = lambda keep: ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=async_save
    )
    self.latest = ocp.CheckpointManager(
      workdir / LATEST_DIR, options=options(keep), item_names=("state", "data", "meta")
    )
    self.best = ocp.CheckpointManager(
      workdir / BEST_DIR, options=options(1), item_names=("variables",)
    )

  def save(self, step: int, state, data_state: dict[str, Any], meta: dict[str, Any]):
    self.latest.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave(meta),
      ),
      force=True,
    )

  def save_best(self, step: int, variables):
    self.best.save(
      step, args=ocp.args.Composite(variables=ocp.args.StandardSave(variables)), force=True
    )

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def restore(self, abstract_state):
    """(state, data_state, meta) of the latest checkpoint, placed as `abstract_state` says."""
    step = self.latest.latest_step()
    restored = self.latest.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore(),
      ),
    )
    return restored["state"], restored["data"], restored["meta"]

  def wait(self):
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self):
    self.latest.close()
    self.best.close()
