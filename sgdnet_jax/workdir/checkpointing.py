"""Orbax checkpoints of a training workdir: exact resume, last N, best by validation Dice.

  W/checkpoints/<step>/  state (TrainState), data (every process's input iterator state),
                         meta (epoch, best Dice)
  W/best/<step>/         variables ({'params', 'batch_stats'}) of the best validation Dice

Saves are asynchronous and atomic (Orbax writes to a temporary folder and renames it, or in an
object store marks it complete with a commit file), so a crash mid-save leaves the previous
checkpoint intact. A checkpoint damaged later (a truncated file, a lost `_METADATA`) is moved
aside to `checkpoints/<step>.corrupt` at the next resume, which continues from the newest intact
one. W may be a local folder or a `gs://` URL (`sgdnet_jax.core.paths`).

In a run of several processes each reads its own shards, so a checkpoint may fail to restore on
some processes only: they all learn which did, and all move on to the same older step together.
The input position is each process's own: process 0 gathers them and writes them in `data`
(`{"process_count": n, "processes": [state of process 0, ...]}`); each restores its own.
"""

import json
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from sgdnet_jax.core import distributed, errors, paths
from sgdnet_jax.workdir import layout

CORRUPT_SUFFIX = ".corrupt"


def trained_steps(workdir: str | os.PathLike) -> list[int]:
  """The steps of the finished training checkpoints in `W/checkpoints`, ascending (none: []).

  Orbax decides what is finished: a step still being written, or moved aside as corrupt, is not.
  """
  return sorted(ocp.utils.checkpoint_steps(layout.latest_dir(workdir)))


def _own_data_state(data: dict[str, Any], where: str) -> dict[str, Any]:
  """This process's input position from a checkpoint's `data`.

  Written by another number of processes: their common position, when they had one (an older
  checkpoint holds just that position); positions that differ cannot be split another way.
  """
  if "processes" not in data:
    return data
  states = data["processes"]
  if len(states) == jax.process_count():
    return states[jax.process_index()]
  if all(state == states[0] for state in states):
    return states[0]
  raise errors.UserError(
    f"checkpoint {where} holds the input positions of {len(states)} processes, which differ, "
    f"and this run has {jax.process_count()}; resume it with {len(states)} processes"
  )


class WorkdirCheckpoints:
  """The two checkpoint managers of a workdir."""

  def __init__(self, workdir: str | os.PathLike, keep: int = 2, async_save: bool = True):
    options = lambda keep: ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=async_save
    )
    self.latest = ocp.CheckpointManager(
      layout.latest_dir(workdir), options=options(keep), item_names=("state", "data", "meta")
    )
    self.best = ocp.CheckpointManager(
      layout.best_dir(workdir), options=options(1), item_names=("variables",)
    )

  def save(self, step: int, state, data_state: dict[str, Any], meta: dict[str, Any]):
    """Called by every process with its own `data_state` (its input iterator's position)."""
    states = [
      json.loads(v) for v in distributed.all_values("iterator_state", json.dumps(data_state))
    ]
    self.latest.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave({"process_count": len(states), "processes": states}),
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

  def restore_newest_intact(self, abstract_state) -> tuple | None:
    """(state, data_state, meta) of the newest checkpoint that restores, placed as
    `abstract_state` says; None when none does.

    A checkpoint that cannot be restored (a truncated file, a missing `_METADATA`, any read
    error) is reported in one line and moved aside to `<step>.corrupt`, out of the manager's
    view, so that the next save of that step and every later resume skip it.
    """
    for step in sorted(self.latest.all_steps(), reverse=True):
      failure = ""
      try:
        restored = self._restore_step(step, abstract_state)
      except Exception as error:  # Whatever the damage: fall back to the previous step.
        failure = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
        if jax.process_count() > 1:
          failure = f"process {jax.process_index()}: {failure}"
      # Every process learns every failure: all move on together (none waits alone).
      failures = [f for f in distributed.all_values(f"checkpoint_restore:{step}", failure) if f]
      if failures:
        aside = self._move_aside(step)
        logging.warning(
          "checkpoint %d cannot be restored (%s); moved it to %s, trying an older one",
          step,
          "; ".join(failures),
          aside,
        )
        continue
      where = f"{self.latest.directory}/{step}"
      return restored["state"], _own_data_state(restored["data"], where), restored["meta"]
    return None

  def _restore_step(self, step: int, abstract_state) -> dict[str, Any]:
    """Checkpoint `step` read by this process, through the handler alone: the manager's restore
    ends in a barrier over every device (`Checkpointer:restore`), which a process whose read
    failed never reaches, so that the others would wait there forever."""
    handler = ocp.CompositeCheckpointHandler()
    try:
      return handler.restore(
        self.latest.directory / str(step),
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          data=ocp.args.JsonRestore(),
          meta=ocp.args.JsonRestore(),
        ),
      )
    finally:
      handler.close()

  def _move_aside(self, step: int) -> str:
    """Renames checkpoint `step` to `<step>.corrupt` (process 0); every process forgets it."""
    source = paths.as_path(self.latest.directory) / str(step)
    target = source.parent / f"{step}{CORRUPT_SUFFIX}"
    suffix = 1
    while target.exists():
      target = source.parent / f"{step}{CORRUPT_SUFFIX}-{suffix}"
      suffix += 1
    if jax.process_index() == 0:
      source.rename(target)
    distributed.barrier(f"checkpoint_aside:{step}")
    self.latest.reload()
    return str(target)

  def wait(self):
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self):
    self.latest.close()
    self.best.close()
