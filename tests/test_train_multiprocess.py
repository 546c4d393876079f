"""Two processes on loopback (jax.distributed, gloo CPU collectives) compute what one process
computes, in float64, and survive preemption: SIGTERM to one process stops both at the same step
(exit 75), a restart where one process cannot restore the newest checkpoint falls back with the
other, SIGTERM during compilation stops before the first step; the two-process checkpoint then
resumes in one process on another device count."""

import json
import random
import subprocess
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from sgdnet_jax.train import preemption
from tests import ports, tolerances, train_helpers

# SIGTERM reaches process 1 before step 2 or 3 (PREEMPT_AT_BATCH, each later step slowed down by
# tests/preemption_worker.py). JAX's sync point is one past the largest step at which a process
# first sees the notice: process 1 sees it at its planted step, after sleeping on it, and
# process 0 (held by the step's collectives) at most one step later, so the run stops at step 5
# at the latest, before its last step; with 5 steps, a notice that process 0 sees one step late
# after a SIGTERM before step 3 ends the run normally instead.
TOTAL_STEPS = 6


def _two_processes(workdir, data_dir, fields, plans: dict) -> tuple[list, list, float]:
  """`train` in two processes (tests/preemption_worker.py, faults per `plans[process]`): their
  exit codes and outputs, and the seconds they took. A hang fails the test at the timeout."""
  start = time.monotonic()
  with ports.reserved_port() as port:  # held until both processes are done with it
    processes = []
    for process_id in range(2):
      env = train_helpers.subprocess_env(
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        JAX_NUM_PROCESSES="2",
        JAX_PROCESS_ID=str(process_id),
        JAX_ENABLE_X64="1",
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        **plans.get(process_id, {}),
      )
      command = train_helpers.train_command(workdir, data_dir, fields, total_steps=TOTAL_STEPS)
      command[1:3] = ["-m", "tests.preemption_worker"]
      processes.append(
        subprocess.Popen(
          command,
          cwd=train_helpers.REPO,
          env=env,
          stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT,
          text=True,
        )
      )
    try:
      outputs = [p.communicate(timeout=900)[0] for p in processes]
    finally:
      for p in processes:
        p.kill()
  return [p.returncode for p in processes], outputs, time.monotonic() - start


def _outcome(output: str) -> dict:
  """What `train` printed as its outcome (one JSON line)."""
  [line] = [line for line in output.splitlines() if line.startswith('{"step": ')]
  return json.loads(line)


def _saved_steps(workdir) -> list:
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _step_state(workdir, step: int) -> dict:
  """The train state saved after `step`, as float64 numpy arrays (no 64-bit JAX needed here)."""
  path = workdir / "checkpoints" / str(step) / "state"
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(path).item_metadata.tree
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
  return checkpointer.restore(path, restore_args=as_numpy)


def _named(tree) -> dict[str, np.ndarray]:
  return {
    jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


def _gradients(state) -> dict[str, np.ndarray]:
  """Adam's first moment after step 1: (1 - b1) * gradient, without clipping or weight decay."""
  (adam,) = [s for s in state["opt_state"] if isinstance(s, dict) and "mu" in s]
  return _named(adam["mu"])


@pytest.mark.slow
def test_two_processes_equal_one_stop_together_on_preemption_and_resume_on_one_device(tmp_path):
  data_dir = train_helpers.tiny_dataset(tmp_path / "data")
  # float64 in every process: float32 rounding flips max-pool and ReLU subgradients at near-ties,
  # so only float64 shows that the two layouts compute the same function. No clipping or weight
  # decay: Adam's first moment after step 1 is the scaled gradient of the real step. Adam's
  # epsilon 1 makes later updates proportional to the gradient (plain Adam's lr * sign(g) would
  # turn the rounding noise of zero gradients, biases before BatchNorm, into lr-sized steps).
  # A small learning rate: each step of this tiny network amplifies differences in its parameters
  # (at lr 1e-3 the two runs' losses drifted apart as 3e-15, 6e-13, 1e-8, 3e-6 over steps 1-4,
  # rounding alone); at 1e-7 they stay at rounding level, while resuming from another step's
  # parameters or another data position still moves the step-4 loss far beyond 1e-9.
  fields = {
    "checkpoint_every_steps": 1,
    "keep_checkpoints": 2 * TOTAL_STEPS,
    "eval_every_epochs": 0,
    "model.dtype": "float64",
    "model.head_dropout": 0.0,
    "optimizer.eps": 1.0,
    "optimizer.lr": 1e-7,
    "optimizer.grad_clip": 0.0,
    "optimizer.weight_decay": 0.0,
  }
  # The reference: one process with one device, the layout of the final resume below, which
  # then loads this run's programs from the persistent compilation cache instead of compiling.
  single = tmp_path / "single"
  one_device = train_helpers.subprocess_env(
    JAX_ENABLE_X64="1", XLA_FLAGS="--xla_force_host_platform_device_count=1"
  )
  train_helpers.run(
    train_helpers.train_command(single, data_dir, fields, total_steps=TOTAL_STEPS), one_device
  )

  multi = tmp_path / "multi"
  # SIGTERM to process 1 only, at a random step: both stop at the same later step, saved, exit 75.
  preempt_at = random.choice([2, 3])
  codes, outputs, seconds = _two_processes(
    multi, data_dir, fields, {1: {"PREEMPT_AT_BATCH": str(preempt_at)}}
  )
  assert codes == [preemption.RESUME_EXIT] * 2, [out[-3000:] for out in outputs]
  stopped = [_outcome(out) for out in outputs]
  assert stopped[0]["step"] == stopped[1]["step"], stopped
  stop_step = stopped[0]["step"]
  assert preempt_at <= stop_step < TOTAL_STEPS, (preempt_at, stopped)
  assert _saved_steps(multi) == list(range(1, stop_step + 1))
  assert "run the same command again to resume (exit status 75" in outputs[0]
  print(
    f"\nSIGTERM to process 1 before step {preempt_at}: both stopped at step {stop_step}, "
    f"exit 75 after {seconds:.0f} s"
  )

  # The restart: process 1 cannot restore the newest checkpoint, so both resume from the one
  # before; process 0 gets SIGTERM while compiling: both stop before their first step.
  codes, outputs, _ = _two_processes(
    multi,
    data_dir,
    fields,
    {0: {"PREEMPT_AT_COMPILE": "1"}, 1: {"FAIL_NEWEST_RESTORE": "1"}},
  )
  assert codes == [preemption.RESUME_EXIT] * 2, [out[-3000:] for out in outputs]
  for out in outputs:
    tail = out[-3000:]
    assert f"checkpoint {stop_step} cannot be restored (process 1: OSError: planted" in out, tail
    assert _outcome(out)["start_step"] == _outcome(out)["step"] == stop_step - 1, tail
    assert f"at step {stop_step - 1} of {TOTAL_STEPS} before its first step" in out, tail
  assert _saved_steps(multi) == list(range(1, stop_step))
  assert (multi / "checkpoints" / f"{stop_step}.corrupt").is_dir()

  # Resume the two-process checkpoint in one process with one device: the updates after it must
  # be the single-process run's.
  train_helpers.run(
    train_helpers.train_command(multi, data_dir, fields, total_steps=TOTAL_STEPS), one_device
  )

  expected = train_helpers.step_losses(single)
  got = train_helpers.step_losses(multi)  # written by process 0 only
  assert sorted(got) == sorted(expected) == list(range(1, TOTAL_STEPS + 1))
  loss_diffs = {step: abs(got[step] - expected[step]) / abs(expected[step]) for step in got}
  # Step 1: same parameters, same global batch. Every gradient leaf against the largest gradient
  # (the biases before BatchNorm have a zero true gradient, rounding noise only); every BatchNorm
  # statistic against its leaf's scale.
  single_state, multi_state = _step_state(single, 1), _step_state(multi, 1)
  assert single_state["params"]["resnet"]["conv1_0"]["kernel"].dtype == np.float64
  grads, expected_grads = _gradients(multi_state), _gradients(single_state)
  largest = max(float(np.max(np.abs(g))) for g in expected_grads.values())
  grad_diffs = {
    name: float(np.max(np.abs(grads[name] - g))) / largest for name, g in expected_grads.items()
  }
  stats, expected_stats = _named(multi_state["batch_stats"]), _named(single_state["batch_stats"])
  stats_diffs = {
    name: float(np.max(np.abs(stats[name] - s) / np.max(np.abs(s))))
    for name, s in expected_stats.items()
  }
  print(
    f"\n2 processes vs 1, float64: loss {loss_diffs}, gradients {max(grad_diffs.values()):.1e}, "
    f"BN statistics {max(stats_diffs.values()):.1e}"
  )
  bound = tolerances.FLOAT64_AGREEMENT
  assert max(loss_diffs.values()) <= bound, loss_diffs
  assert max(grad_diffs.values()) <= bound, grad_diffs
  assert max(stats_diffs.values()) <= bound, stats_diffs
