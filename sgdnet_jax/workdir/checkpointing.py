"""Orbax checkpoints of a training workdir: exact resume, last N, best by validation Dice.

  W/checkpoints/<step>/  state (TrainState), data (every process's input iterator state),
                         meta (epoch, best Dice)
  W/best/<step>/         variables ({'params', 'batch_stats'}) of the best validation Dice

Saves are asynchronous and atomic (Orbax writes to a temporary folder and renames it, or in an
object store marks it complete with a commit file), so a crash mid-save leaves the previous
checkpoint intact. A best checkpoint is written only once the latest checkpoint of its step is
committed, and a step saved again (a resume that went back to an older checkpoint reaches a step
that `best/` already holds) is a no-op when its content is the same; otherwise the old folder is
set aside as `<step>.replaced` (with any newer best step of the abandoned run) and deleted once
the new one is committed, so no sequence of kills leaves a step that cannot be saved again.

A checkpoint damaged later (a truncated file, a lost `_METADATA`) is moved aside to
`checkpoints/<step>.corrupt` at the next resume, which continues from the newest intact one.
W may be a local folder or a `gs://` URL (`sgdnet_jax.core.paths`).

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
import numpy as np
import orbax.checkpoint as ocp

from sgdnet_jax.core import distributed, errors, paths
from sgdnet_jax.workdir import layout

CORRUPT_SUFFIX = ".corrupt"
REPLACED_SUFFIX = ".replaced"


def trained_steps(workdir: str | os.PathLike) -> list[int]:
  """The steps of the finished training checkpoints in `W/checkpoints`, ascending (none: []).

  Orbax decides what is finished: a step still being written, or moved aside as corrupt, is not.
  """
  return sorted(ocp.utils.checkpoint_steps(layout.latest_dir(workdir)))


def _described(tree) -> dict[tuple[str, ...], Any]:
  """Path -> (shape, dtype) of each array of `tree`, and 'empty' for each empty state (None in
  Orbax's metadata, an empty container in a state): a state and its checkpoint's metadata
  compare equal when one restores into the other."""
  empty = lambda x: x is None or (isinstance(x, (dict, list, tuple)) and not x)
  name = lambda key: str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key))))
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=empty)
  return {
    tuple(map(name, path)): "empty" if empty(leaf) else (tuple(leaf.shape), str(leaf.dtype))
    for path, leaf in leaves
  }


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


def _same_local_shards(a: jax.Array, b: jax.Array) -> bool:
  """Whether `a` and `b` have one shape and dtype and equal values on this process's devices."""
  shards = lambda x: {s.device: np.asarray(s.data) for s in x.addressable_shards}
  a_shards, b_shards = shards(a), shards(b)
  return (
    a.shape == b.shape
    and a.dtype == b.dtype
    and a_shards.keys() == b_shards.keys()
    and all(np.array_equal(a_shards[d], b_shards[d]) for d in a_shards)
  )


def _read_step(manager, step: int, **items) -> dict[str, Any]:
  """`items` (name -> restore args) of `manager`'s checkpoint `step`, read by this process
  through the handler alone: the manager's restore ends in a barrier over every device
  (`Checkpointer:restore`), which a process whose read failed never reaches, so that the others
  would wait there forever."""
  handler = ocp.CompositeCheckpointHandler()
  try:
    return handler.restore(manager.directory / str(step), args=ocp.args.Composite(**items))
  finally:
    handler.close()


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
    """Saves the latest checkpoint of `step` (replacing one of that step, see the docstring).

    Called by every process with its own `data_state` (its input iterator's position).
    """
    states = [
      json.loads(v) for v in distributed.all_values("iterator_state", json.dumps(data_state))
    ]
    args = ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=ocp.args.JsonSave({"process_count": len(states), "processes": states}),
      meta=ocp.args.JsonSave(meta),
    )
    self._save_replacing(self.latest, step, args, [s for s in self.latest.all_steps() if s == step])

  def save_best(self, step: int, variables):
    """Saves the best `variables` of `step` once the latest checkpoint is committed; a no-op
    when `best/<step>` holds the same variables already."""
    self.latest.wait_until_finished()
    stale = [s for s in self.best.all_steps() if s >= step]
    if step in stale and self._same_best(step, variables):
      logging.info("best checkpoint %d already holds these variables; kept it", step)
      return
    args = ocp.args.Composite(variables=ocp.args.StandardSave(variables))
    self._save_replacing(self.best, step, args, stale)

  def _same_best(self, step: int, variables) -> bool:
    """True when `best/<step>` holds exactly `variables` on every process; False when it differs
    or cannot be read (damaged, of another structure) on any.

    Each process reads (`_read_step`) and compares its own shards (no collective), then all
    take the outcome of all."""
    abstract = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), variables
    )
    try:
      saved = _read_step(self.best, step, variables=ocp.args.StandardRestore(abstract))["variables"]
      same = jax.tree_util.tree_map(_same_local_shards, variables, saved)
      outcome = "same" if all(jax.tree_util.tree_leaves(same)) else "different"
    except Exception as error:  # Damaged or of another structure: replaced by the caller.
      outcome = f"unreadable: {type(error).__name__}"
    return all(v == "same" for v in distributed.all_values(f"best_same:{step}", outcome))

  def _save_replacing(self, manager, step: int, args, stale: list[int]):
    """`manager.save(step)` after setting the `stale` steps aside; deletes them once committed."""
    aside = [self._set_aside(manager, s, REPLACED_SUFFIX) for s in sorted(stale)]
    for s, path in zip(sorted(stale), aside):
      logging.warning(
        "checkpoint %s/%d is saved again: the old one is set aside as %s",
        manager.directory,
        s,
        path,
      )
    manager.save(step, args=args, force=True)
    if aside:
      manager.wait_until_finished()
      if jax.process_index() == 0:
        for path in aside:
          paths.as_path(path).rmtree()
      distributed.barrier(f"checkpoint_replaced:{step}")

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def restore_newest_intact(self, abstract_state) -> tuple | None:
    """(state, data_state, meta) of the newest checkpoint that restores, placed as
    `abstract_state` says; None when none does.

    A checkpoint that cannot be restored (a truncated file, a missing `_METADATA`, any read
    error) is reported in one line and moved aside to `<step>.corrupt`, out of the manager's
    view, so that the next save of that step and every later resume skip it. One whose
    metadata reads but describes other arrays than `abstract_state` is not damaged: the config
    does not fit it, and a UserError says so, leaving it in place.
    """
    for step in sorted(self.latest.all_steps(), reverse=True):
      self._refuse_other_structure(step, abstract_state)
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
        aside = self._set_aside(self.latest, step, CORRUPT_SUFFIX)
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

  def _refuse_other_structure(self, step: int, abstract_state):
    """UserError when checkpoint `step`'s metadata reads and describes another tree (its paths,
    empty states included, shapes and dtypes) than `abstract_state`; unreadable metadata is
    left to the restore to report."""
    try:
      saved = self.latest.item_metadata(step)["state"]
      saved = getattr(saved, "tree", saved)
    except Exception:  # Damaged: the restore fails and sets the checkpoint aside.
      return
    if saved is None:
      return
    saved, expected = _described(saved), _described(abstract_state)
    if saved != expected:
      differing = sorted(saved.keys() ^ expected.keys()) or sorted(
        k for k in saved if saved[k] != expected[k]
      )
      raise errors.UserError(
        f"checkpoint {step} in {self.latest.directory} holds a training state that this "
        f"config does not build (it differs at {'.'.join(differing[0]) or 'the root'}); resume "
        f"with the config it was saved with (its config.json) or use another --workdir"
      )

  def _restore_step(self, step: int, abstract_state) -> dict[str, Any]:
    """Checkpoint `step` read by this process (`_read_step`)."""
    return _read_step(
      self.latest,
      step,
      state=ocp.args.StandardRestore(abstract_state),
      data=ocp.args.JsonRestore(),
      meta=ocp.args.JsonRestore(),
    )

  @staticmethod
  def _set_aside(manager, step: int, suffix: str) -> str:
    """Renames `manager`'s checkpoint `step` to `<step><suffix>` (process 0), out of the view
    of every process's manager; returns the new path."""
    source = paths.as_path(manager.directory) / str(step)
    target = source.parent / f"{step}{suffix}"
    index = 1
    while target.exists():
      target = source.parent / f"{step}{suffix}-{index}"
      index += 1
    if jax.process_index() == 0:
      source.rename(target)
    distributed.barrier(f"checkpoint_aside:{step}{suffix}")
    manager.reload()
    return str(target)

  def wait(self):
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self):
    self.latest.close()
    self.best.close()
