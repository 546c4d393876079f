"""A workdir never gets stuck (issue 22): best checkpoints that run ahead of the latest ones,
config changes on resume, failed starts that must leave no trace, locks left empty, and the
one-line errors of a run that cannot go on."""

import errno
import json
import logging
import os
import pathlib
import random
import shutil
import signal
import subprocess
import time

import pytest

from sgdnet_jax import demo, main
from sgdnet_jax.workdir import checkpointing, guard, layout
from tests import train_helpers


def train(workdir, data_dir, *flags, **fields) -> int:
  """`train` through the command-line entry point, in this process; its exit code."""
  command = train_helpers.train_command(workdir, data_dir, fields)
  return main.main([*command[command.index("train") :], *flags])


def one_error_line(capsys) -> str:
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: "), err
  return err[0]


def steps_in(folder: pathlib.Path) -> list[int]:
  return sorted(int(name) for name in os.listdir(folder) if name.isdigit())


def tree(folder: pathlib.Path) -> list[str]:
  return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def copy_of_reference(reference_training, tmp_path):
  """A copy of the reference workdir (6 steps, validated at 4 and 6, checkpoints 2, 4 and 6)
  and the step of its best checkpoint."""
  workdir = tmp_path / "run"
  shutil.copytree(reference_training.workdir, workdir)
  (best_step,) = steps_in(workdir / "best")
  return workdir, best_step


def finish(workdir, reference_training, capsys):
  """Resumes `workdir` to the end and checks it continued the reference run exactly."""
  assert train(workdir, reference_training.data_dir, **train_helpers.REFERENCE_FIELDS) == 0
  capsys.readouterr()
  assert steps_in(workdir / "checkpoints") == [2, 4, 6]
  assert steps_in(workdir / "best") == steps_in(reference_training.workdir / "best")
  assert not [name for name in os.listdir(workdir / "best") if not name.isdigit()]
  assert train_helpers.step_losses(workdir) == train_helpers.step_losses(reference_training.workdir)


def test_best_ahead_of_latest_a_kill_between_the_saves_and_every_latest_damaged(
  copy_of_reference, reference_training, capsys
):
  """F1 by two routes in one workdir: `checkpoints/N` lost after best/N was written (a kill
  between the two saves), then every latest checkpoint damaged; the runs that go back and reach
  N again find best/N holding the same variables and go on."""
  workdir, best_step = copy_of_reference
  for step in steps_in(workdir / "checkpoints"):
    if step >= best_step:
      shutil.rmtree(workdir / "checkpoints" / str(step))
  finish(workdir, reference_training, capsys)

  for step in steps_in(workdir / "checkpoints"):
    (workdir / "checkpoints" / str(step) / "state" / "_METADATA").unlink()
  finish(workdir, reference_training, capsys)


def test_a_second_ctrl_c_while_a_best_checkpoint_is_saved_leaves_a_workdir_that_resumes(
  copy_of_reference, reference_training, capsys, monkeypatch
):
  """F1 by Ctrl-C twice: both SIGINTs arrive while the first best checkpoint is being saved (of
  the reference run resumed from its step 2, before any validation)."""
  workdir, _ = copy_of_reference
  shutil.rmtree(workdir / "best")
  for step in (4, 6):
    shutil.rmtree(workdir / "checkpoints" / str(step))
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
  save_best = checkpointing.WorkdirCheckpoints.save_best

  def interrupted_save_best(self, step, variables):
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGINT)
    save_best(self, step, variables)

  monkeypatch.setattr(checkpointing.WorkdirCheckpoints, "save_best", interrupted_save_best)
  try:
    code = train(workdir, reference_training.data_dir, **train_helpers.REFERENCE_FIELDS)
  finally:
    signal.signal(signal.SIGINT, previous)
  assert code == 130
  monkeypatch.undo()
  assert steps_in(workdir / "best") == [4]
  assert 4 in steps_in(workdir / "checkpoints")  # committed before best/4
  finish(workdir, reference_training, capsys)


def test_saving_a_best_step_again_keeps_the_same_variables_and_replaces_others(tmp_path):
  import jax.numpy as jnp

  variables = lambda value: {"params": {"w": jnp.full(4, value)}, "batch_stats": {}}
  checkpoints = checkpointing.WorkdirCheckpoints(str(tmp_path), async_save=False)
  try:
    checkpoints.save_best(3, variables(0.0))
    written = (tmp_path / "best" / "3").stat().st_ino
    checkpoints.save_best(3, variables(0.0))
    assert (tmp_path / "best" / "3").stat().st_ino == written  # the same: kept as it was
    checkpoints.save_best(5, variables(1.0))
    checkpoints.save_best(3, variables(2.0))
  finally:
    checkpoints.close()
  assert sorted(os.listdir(tmp_path / "best")) == ["3"]  # 5 was of an abandoned run
  restored = checkpoints.best.restore(3)
  assert restored["variables"]["params"]["w"].tolist() == [2.0] * 4


def test_a_checkpoint_of_another_structure_is_refused_and_not_set_aside(tmp_path):
  """F2's safety net: an optimizer state with one more (empty) transformation, as clip adds,
  is a config that does not fit, not damage."""
  import numpy as np

  from sgdnet_jax.core import errors

  saved = {"w": np.zeros(4, np.float32), "opt": [{}, np.zeros(4, np.float32)]}
  checkpoints = checkpointing.WorkdirCheckpoints(str(tmp_path), async_save=False)
  try:
    checkpoints.save(2, saved, {"position": 2}, {"best_dice": -1.0, "best_step": -1})
    other = {"w": saved["w"], "opt": [{}, {}, saved["opt"][1]]}
    with pytest.raises(errors.UserError, match=r"does not build \(it differs at opt.2\)"):
      checkpoints.restore_newest_intact(other)
    assert checkpoints.restore_newest_intact(saved)[1] == {"position": 2}
  finally:
    checkpoints.close()
  assert os.listdir(tmp_path / "checkpoints") == ["2"]


@pytest.mark.parametrize(
  "field, value", [("optimizer.grad_clip", 0.0), ("optimizer.weight_decay", 0.0)]
)
def test_a_change_that_does_not_fit_the_optimizer_state_is_refused_renaming_nothing(
  copy_of_reference, reference_training, capsys, field, value
):
  """F2: one line naming the field; the checkpoints and config.json keep their names and bytes."""
  workdir, _ = copy_of_reference
  before = tree(workdir)
  recorded = (workdir / "config.json").read_bytes()
  code = train(
    workdir, reference_training.data_dir, **{**train_helpers.REFERENCE_FIELDS, field: value}
  )
  assert code == 2
  line = one_error_line(capsys)
  assert f"{field}: " in line and "--reset-optimizer" in line
  assert tree(workdir) == before
  assert (workdir / "config.json").read_bytes() == recorded


def test_reset_optimizer_keeps_the_weights_and_step_with_a_fresh_optimizer_state(
  copy_of_reference, reference_training, capsys, caplog
):
  workdir, _ = copy_of_reference
  with caplog.at_level(logging.INFO):
    code = train(
      workdir,
      reference_training.data_dir,
      "--reset-optimizer",
      total_steps=7,
      checkpoint_every_steps=2,
      eval_every_epochs=0,
      **{"optimizer.grad_clip": 0.0},
    )
  assert code == 0, capsys.readouterr()
  assert "starting a fresh optimizer state" in caplog.text
  assert "resumed from step 6" in caplog.text
  assert steps_in(workdir / "checkpoints") == [6, 7]
  assert not [name for name in os.listdir(workdir / "checkpoints") if not name.isdigit()]
  assert json.loads((workdir / "config.json").read_text())["optimizer"]["grad_clip"] == 0.0


@pytest.mark.parametrize(
  "fields, message",
  [
    ({"model.num_classes": 3}, "model.num_classes must be 1 (sigmoid) or 2 (softmax), got 3"),
    ({"global_batch_size": 0}, "global_batch_size=0: expected a positive number"),
    ({"global_batch_size": -4}, "global_batch_size=-4: expected a positive number"),
    ({"global_batch_size": 20}, "global_batch_size=20 is larger than the training split"),
  ],
)
def test_a_refused_start_leaves_the_workdir_as_it_found_it(
  reference_training, tmp_path, capsys, fields, message
):
  """F3/F11: refused in one line before config.json, the lock or any folder is written; the
  corrected command then starts."""
  workdir = tmp_path / "fresh"
  assert train(workdir, reference_training.data_dir, total_steps=1, **fields) == 2
  assert message in one_error_line(capsys)
  assert not workdir.exists()


def test_an_empty_validation_split_is_refused_before_training(tmp_path, capsys):
  """F7 (train): a prepared dataset whose validation split is empty (6 cases: 4/0/2)."""
  data_dir = demo.ensure_demo_dataset(tmp_path / "data", num_cases=6, image_size=32)
  workdir = tmp_path / "run"
  workdir.mkdir()
  assert train(workdir, str(data_dir), total_steps=1) == 2
  assert "validation split 'val'" in one_error_line(capsys)
  assert os.listdir(workdir) == []


@pytest.mark.parametrize("content", ["", "{not json"])
def test_an_empty_or_unreadable_lock_is_taken_over_with_a_warning(tmp_path, caplog, content):
  """F4: a lock that a full disk left empty does not block every later run."""
  (tmp_path / layout.LOCK_FILE).write_text(content)
  with caplog.at_level(logging.WARNING), guard.locked(tmp_path):
    holder = json.loads((tmp_path / layout.LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid()
    assert os.listdir(tmp_path) == [layout.LOCK_FILE]  # no temporary file left
  assert "empty or unreadable" in caplog.text
  assert not (tmp_path / layout.LOCK_FILE).exists()


def test_a_full_disk_during_a_checkpoint_save_is_one_line(
  reference_training, tmp_path, capsys, monkeypatch
):
  def no_space(self, step, *args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{self.latest.directory}/{step}")

  monkeypatch.setattr(checkpointing.WorkdirCheckpoints, "save", no_space)
  workdir = tmp_path / "run"
  code = train(workdir, reference_training.data_dir, **train_helpers.REFERENCE_FIELDS)
  assert code == 2
  line = one_error_line(capsys)
  assert f"cannot write {workdir}/checkpoints/2 (No space left on device)" in line
  assert not (workdir / layout.LOCK_FILE).exists()


def test_a_non_finite_loss_before_any_checkpoint_is_one_line_saying_what_to_try(
  reference_training, tmp_path, capsys
):
  workdir = tmp_path / "run"
  code = train(workdir, reference_training.data_dir, **train_helpers.EXPLODING_FIELDS)
  assert code == 2
  line = one_error_line(capsys)
  assert "at step 1 is not finite" in line or "at step 2 is not finite" in line
  assert f"no checkpoint was saved in {workdir} yet" in line
  assert "Try a lower --config.optimizer.lr (now 1e+38)" in line
  assert "step None" not in line


def trained_lines(workdir: pathlib.Path) -> int:
  path = workdir / layout.METRICS_FILE
  return len(path.read_text().splitlines()) if path.exists() else 0


def seen_lines(process: subprocess.Popen, workdir: pathlib.Path, count: int) -> list[float]:
  """Waits for `count` new lines of metrics.jsonl or the end of `process`: when each was seen."""
  lines, seen = trained_lines(workdir), []
  deadline = time.monotonic() + 600
  while process.poll() is None and len(seen) < count:
    assert time.monotonic() < deadline, f"{count} lines not written in 600 s"
    now = trained_lines(workdir)
    seen += [time.monotonic()] * (now - lines)
    lines = now
    time.sleep(0.02)
  return seen


def test_sigkill_at_random_moments_never_leaves_a_workdir_that_train_cannot_continue(
  reference_training, tmp_path
):
  """10 `train` processes killed with SIGKILL one after the other on the same workdir, each at
  a moment drawn within the training part of its run (after its first metrics line, a random
  number of further lines, then a random fraction of the time a step took: any save of
  `checkpoints/` or `best/` may be cut); a run that finished first restarts the workdir empty.
  The next `train` always finishes and continues the reference run exactly: the steps trained
  again after a kill repeat the reference's losses."""
  workdir = tmp_path / "run"
  command = train_helpers.train_command(
    workdir, reference_training.data_dir, total_steps=6, checkpoint_every_steps=1
  )
  env = train_helpers.subprocess_env()
  rng = random.Random(22)
  step_seconds = None  # of the last run that trained two steps or more
  for _ in range(10):
    process = subprocess.Popen(
      command, cwd=train_helpers.REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
      further = rng.randint(0 if step_seconds else 1, 6)
      seen = seen_lines(process, workdir, 1 + further)
      if process.poll() is None:
        if further:
          step_seconds = (seen[-1] - seen[0]) / further
        try:
          process.wait(timeout=rng.uniform(0.0, step_seconds))
        except subprocess.TimeoutExpired:
          process.kill()
      process.wait()
      if process.returncode == 0:  # finished before its kill
        shutil.rmtree(workdir)
      else:
        assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-3000:]
    finally:
      process.stderr.close()
  result = train_helpers.run(command, env)
  assert json.loads(result.stdout.strip().splitlines()[-1])["step"] == 6
  assert steps_in(workdir / "checkpoints")[-1] == 6
  assert train_helpers.step_losses(workdir) == train_helpers.step_losses(reference_training.workdir)
