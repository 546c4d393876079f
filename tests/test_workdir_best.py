"""Whether `best/<step>` already holds the variables saved again (`WorkdirCheckpoints._same_best`):
read without the manager's restore, whose closing barrier a process whose read failed never
reaches, and decided alike on every process."""

import jax.numpy as jnp
import pytest

from sgdnet_jax.workdir import checkpointing


def variables(value: float) -> dict:
  return {"params": {"w": jnp.full(4, value)}, "batch_stats": {}}


@pytest.fixture
def checkpoints(tmp_path, monkeypatch):
  """A workdir whose `best/3` holds variables(0.0); the managers' restore fails (it would end in
  a barrier over every process)."""
  checkpoints = checkpointing.WorkdirCheckpoints(str(tmp_path), async_save=False)
  checkpoints.save_best(3, variables(0.0))

  def restore(*args, **kwargs):
    raise AssertionError("read through the manager's restore")

  monkeypatch.setattr(checkpoints.best, "restore", restore)
  monkeypatch.setattr(checkpoints.latest, "restore", restore)
  yield checkpoints
  checkpoints.close()


def test_the_same_variables_other_values_and_another_structure(checkpoints):
  assert checkpoints._same_best(3, variables(0.0))
  assert not checkpoints._same_best(3, variables(1.0))
  assert not checkpoints._same_best(3, {"params": {"w": jnp.zeros(5)}, "batch_stats": {}})
  assert not checkpoints._same_best(3, {"params": {"v": jnp.zeros(4)}, "batch_stats": {}})


def test_every_process_takes_the_outcome_of_all(checkpoints, monkeypatch):
  """Process 0 finds the same variables; another process that found them different (or could
  not read them) makes every process replace the step."""
  told = []
  monkeypatch.setattr(
    checkpointing.distributed, "all_values", lambda name, value: told.append(value) or [value]
  )
  assert not checkpoints._same_best(3, variables(1.0))  # what a process that differs says
  different = told[-1]
  monkeypatch.setattr(
    checkpointing.distributed, "all_values", lambda name, value: [value, different]
  )
  assert not checkpoints._same_best(3, variables(0.0))
  monkeypatch.setattr(checkpointing.distributed, "all_values", lambda name, value: [value, value])
  assert checkpoints._same_best(3, variables(0.0))


def test_a_damaged_best_step_is_replaced_not_a_crash(checkpoints, tmp_path):
  step = tmp_path / "best" / "3" / "variables"
  for path in step.rglob("*"):
    if path.is_file():
      path.write_bytes(b"")  # every file of the item truncated
  assert not checkpoints._same_best(3, variables(0.0))
  checkpoints.save_best(3, variables(0.0))
  assert [p.name for p in (tmp_path / "best").iterdir()] == ["3"]
  restored = checkpointing.ocp.StandardCheckpointer().restore(step)
  assert restored["params"]["w"].tolist() == [0.0] * 4
