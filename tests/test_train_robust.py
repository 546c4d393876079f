"""Training that survives signals, a second run, damaged checkpoints and a changed config.

Signals are sent by the process to itself from inside the training loop (`signals_before_step`),
so they arrive at a chosen step; `test_train.py` sends a real SIGTERM from outside.
"""

import json
import logging
import os
import pathlib
import shutil
import signal
import socket
import subprocess

import numpy as np
import pytest

from sgdnet_jax import main
from sgdnet_jax.core import config_utils, errors, sharding
from sgdnet_jax.train import loop, preemption
from sgdnet_jax.workdir import checkpointing, guard, layout
from tests import train_helpers

TOTAL_STEPS = 6
FIELDS = {"total_steps": TOTAL_STEPS, "eval_every_epochs": 0}


@pytest.fixture(scope="module")
def data_dir(reference_training):
  return reference_training.data_dir


@pytest.fixture(scope="module")
def reference(reference_training):
  """The uninterrupted reference run (checkpoints at steps 2, 4 and 6): its workdir and config."""
  return reference_training.workdir, reference_training.config


def train(workdir, data_dir, **fields) -> int:
  """`train` through the command line entry point, in this process; its exit code."""
  command = train_helpers.train_command(workdir, data_dir, {**FIELDS, **fields})
  return main.main(command[command.index("train") :])


def saved_steps(workdir) -> list:
  return sorted(int(name) for name in os.listdir(workdir / "checkpoints") if name.isdigit())


@pytest.fixture
def signals_before_step(monkeypatch):
  """signals_before_step(workdir, {2: [SIGTERM]}): the signals arrive while the second step of
  the next run builds its batch. Returns the lock file contents seen at every step.

  Ctrl-C as in a terminal: a suite started in the background (`make test &` in a script, nohup)
  inherits SIGINT ignored, which training rightly leaves alone, so Python's own handler is set
  for the test.
  """
  previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
  lock_holders = []

  def arrange(workdir_path, plan: dict):
    calls = {"count": 0}
    build_batch = sharding.global_batch

    def global_batch(*args, **kwargs):
      calls["count"] += 1
      lock_holders.append(json.loads((workdir_path / layout.LOCK_FILE).read_text()))
      for signum in plan.get(calls["count"], []):
        os.kill(os.getpid(), signum)
      return build_batch(*args, **kwargs)

    monkeypatch.setattr(sharding, "global_batch", global_batch)
    return lock_holders

  yield arrange
  signal.signal(signal.SIGINT, previous_sigint)


def test_signals_save_the_step_exit_75_a_second_sigint_aborts_and_the_run_resumes_exactly(
  reference, data_dir, tmp_path, capsys, signals_before_step, monkeypatch
):
  """One workdir through four runs (each run costs a start-up): stopped by SIGTERM at a
  checkpoint step, by SIGINT between checkpoints, aborted by two SIGINTs, then finished."""
  reference_dir, _ = reference
  run_dir = tmp_path / "run"
  handlers_before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

  lock_holders = signals_before_step(run_dir, {2: [signal.SIGTERM]})
  assert train(run_dir, data_dir, checkpoint_every_steps=1) == preemption.RESUME_EXIT == 75
  assert f"stopped by SIGTERM at step 2 of {TOTAL_STEPS} with a checkpoint; run the same" in (
    capsys.readouterr().out
  )
  assert saved_steps(run_dir) == [1, 2]  # the checkpoint step saved once
  assert lock_holders[0]["pid"] == os.getpid()
  assert not (run_dir / layout.LOCK_FILE).exists()
  assert {s: signal.getsignal(s) for s in handlers_before} == handlers_before

  signals_before_step(run_dir, {2: [signal.SIGINT]})  # step 4; steps 3 and 4 save nothing
  assert train(run_dir, data_dir, checkpoint_every_steps=100) == preemption.RESUME_EXIT
  assert f"stopped by SIGINT at step 4 of {TOTAL_STEPS}" in capsys.readouterr().out
  assert saved_steps(run_dir) == [2, 4]

  signals_before_step(run_dir, {2: [signal.SIGINT, signal.SIGINT]})  # while step 6 starts
  assert train(run_dir, data_dir, checkpoint_every_steps=1) == 130
  captured = capsys.readouterr()
  assert captured.err.strip().splitlines() == [
    "error: interrupted; train stopped without finishing"
  ]
  assert "stopped by" not in captured.out
  assert saved_steps(run_dir) == [4, 5]  # step 5 committed, step 6 never finished
  assert not (run_dir / layout.LOCK_FILE).exists()
  assert {s: signal.getsignal(s) for s in handlers_before} == handlers_before

  monkeypatch.undo()
  assert train(run_dir, data_dir, checkpoint_every_steps=1) == 0
  assert saved_steps(run_dir) == [5, 6]
  assert train_helpers.step_losses(run_dir) == train_helpers.step_losses(reference_dir)


def one_error_line(capsys) -> str:
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: "), err
  return err[0]


def test_a_second_run_on_a_locked_workdir_is_refused_naming_the_holder(data_dir, tmp_path, capsys):
  holder = subprocess.Popen(["sleep", "60"])
  try:
    lock = {"host": socket.gethostname(), "pid": holder.pid, "since": "2024-01-02T03:04:05"}
    (tmp_path / layout.LOCK_FILE).write_text(json.dumps(lock))
    assert train(tmp_path, data_dir) == 2
  finally:
    holder.kill()
    holder.wait()
  line = one_error_line(capsys)
  assert f"in use by another train run (host {lock['host']}, pid {holder.pid}, since " in line
  assert "2024-01-02T03:04:05" in line
  assert json.loads((tmp_path / layout.LOCK_FILE).read_text()) == lock  # not taken
  assert not (tmp_path / "config.json").exists()


def test_a_lock_on_another_host_is_refused_whatever_its_pid(tmp_path):
  lock = {"host": socket.gethostname() + "-elsewhere", "pid": 2**22 + 1, "since": "then"}
  (tmp_path / layout.LOCK_FILE).write_text(json.dumps(lock))
  with pytest.raises(errors.UserError, match="-elsewhere, pid"), guard.locked(str(tmp_path)):
    pass


def test_a_stale_lock_of_a_dead_process_is_taken_over_and_released(tmp_path, caplog):
  finished = subprocess.Popen(["true"])
  finished.wait()  # its pid is no longer alive
  lock = {"host": socket.gethostname(), "pid": finished.pid, "since": "then"}
  (tmp_path / layout.LOCK_FILE).write_text(json.dumps(lock))
  with (
    caplog.at_level(logging.WARNING),
    pytest.raises(RuntimeError, match="inside"),
    guard.locked(str(tmp_path)),
  ):
    assert json.loads((tmp_path / layout.LOCK_FILE).read_text())["pid"] == os.getpid()
    raise RuntimeError("inside")  # released on an exception too
  assert f"stale lock {tmp_path / layout.LOCK_FILE}" in caplog.text
  assert f"pid {finished.pid}" in caplog.text
  assert not (tmp_path / layout.LOCK_FILE).exists()


def truncate_a_data_file(step_dir: pathlib.Path):
  data_files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  assert data_files, sorted(step_dir.rglob("*"))
  largest = max(data_files, key=lambda p: p.stat().st_size)
  largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])


def remove_the_metadata(step_dir: pathlib.Path):
  (step_dir / "state" / "_METADATA").unlink()


def test_damaged_checkpoints_are_moved_aside_and_the_newest_intact_one_resumed(
  reference, tmp_path, caplog
):
  reference_dir, config = reference
  run_dir = tmp_path / "run"
  shutil.copytree(reference_dir, run_dir)
  truncate_a_data_file(run_dir / "checkpoints" / "6")
  remove_the_metadata(run_dir / "checkpoints" / "4")
  with caplog.at_level(logging.WARNING):
    summary = loop.train_and_evaluate(config.copy_and_resolve_references(), str(run_dir))
  assert summary["step"] == TOTAL_STEPS
  assert "checkpoint 6 cannot be restored" in caplog.text
  assert "checkpoint 4 cannot be restored" in caplog.text
  assert {"4.corrupt", "6.corrupt"} <= set(os.listdir(run_dir / "checkpoints"))
  assert saved_steps(run_dir) == [2, 4, 6]  # 4 and 6 saved again
  resumed_steps = [
    json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
  ]
  assert resumed_steps.count(3) == 2  # trained again from step 2
  assert train_helpers.step_losses(run_dir) == train_helpers.step_losses(reference_dir)


def test_without_an_intact_checkpoint_there_is_nothing_to_resume(tmp_path, caplog):
  """The loop then starts from scratch; a small state stands in for a TrainState here."""
  state = {"w": np.arange(2**16, dtype=np.float32)}  # large enough for a data file
  checkpoints = checkpointing.WorkdirCheckpoints(str(tmp_path), keep=2, async_save=False)
  try:
    for step in (1, 2):
      checkpoints.save(step, state, {"position": step}, {"best_dice": -1.0, "best_step": -1})
    for step in (1, 2):
      truncate_a_data_file(tmp_path / "checkpoints" / str(step))
    with caplog.at_level(logging.WARNING):
      assert checkpoints.restore_newest_intact(state) is None
    assert checkpoints.latest_step() is None
  finally:
    checkpoints.close()
  assert "checkpoint 2 cannot be restored" in caplog.text
  assert {"1.corrupt", "2.corrupt"} == set(os.listdir(tmp_path / "checkpoints"))


def test_a_workdir_of_another_model_is_refused_and_its_config_kept(
  reference, data_dir, tmp_path, capsys
):
  reference_dir, _ = reference
  shutil.copy(reference_dir / "config.json", tmp_path / "config.json")
  recorded = (tmp_path / "config.json").read_bytes()
  assert train(tmp_path, data_dir, **{"model.decoder_channels": 8}) == 2
  line = one_error_line(capsys)
  assert "holds a different model (model.decoder_channels: 16 -> 8)" in line
  assert (tmp_path / "config.json").read_bytes() == recorded
  assert sorted(os.listdir(tmp_path)) == ["config.json"]


def test_changed_training_fields_are_allowed_listed_and_the_old_config_kept(
  reference, tmp_path, caplog
):
  _, config = reference
  config_utils.save_config(config, str(tmp_path / "config.json"))
  recorded = (tmp_path / "config.json").read_text()
  changed = config.copy_and_resolve_references()
  changed.optimizer.lr = 1e-3
  changed.model.dtype = "bfloat16"  # computes differently, same parameters
  with caplog.at_level(logging.WARNING):
    guard.check_and_record_config(str(tmp_path), changed, write=True)
  assert "model.dtype: 'float32' -> 'bfloat16'" in caplog.text
  assert "optimizer.lr: 0.0001 -> 0.001" in caplog.text
  kept = [name for name in os.listdir(tmp_path) if name not in ("config.json",)]
  assert len(kept) == 1 and kept[0].startswith("config.") and kept[0].endswith(".json")
  assert (tmp_path / kept[0]).read_text() == recorded
  assert json.loads((tmp_path / "config.json").read_text())["optimizer"]["lr"] == 1e-3


def test_checkpoints_moved_aside_are_outside_the_managers_view(tmp_path):
  (tmp_path / "checkpoints" / f"6{checkpointing.CORRUPT_SUFFIX}").mkdir(parents=True)
  manager = checkpointing.WorkdirCheckpoints(str(tmp_path))
  try:
    assert manager.latest_step() is None
  finally:
    manager.close()


def test_every_process_restores_its_own_input_position(tmp_path):
  """The positions of all processes are saved; each restores its own. A checkpoint of other
  processes resumes where they agree (as one written before this format does) and is refused,
  not moved aside, where they differ."""
  state = {"w": np.arange(4, dtype=np.float32)}
  checkpoints = checkpointing.WorkdirCheckpoints(str(tmp_path), keep=2, async_save=False)
  try:
    checkpoints.save(1, state, {"position": 7}, {"best_dice": -1.0, "best_step": -1})
    data = tmp_path / "checkpoints" / "1" / "data" / "metadata"
    assert json.loads(data.read_text()) == {"process_count": 1, "processes": [{"position": 7}]}
    for written in (
      {"process_count": 1, "processes": [{"position": 7}]},
      {"process_count": 2, "processes": [{"position": 7}, {"position": 7}]},
      {"position": 7},
    ):
      data.write_text(json.dumps(written))
      assert checkpoints.restore_newest_intact(state)[1] == {"position": 7}
    data.write_text(json.dumps({"process_count": 2, "processes": [{"position": 7}, {}]}))
    with pytest.raises(errors.UserError, match="of 2 processes, which differ.*with 2 processes"):
      checkpoints.restore_newest_intact(state)
    assert checkpoints.latest_step() == 1
  finally:
    checkpoints.close()
