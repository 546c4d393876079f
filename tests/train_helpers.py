"""Shared pieces of the training tests: a tiny synthetic dataset and the CLI in a subprocess."""

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
IMAGE_SIZE = 32
# The loop's mechanics do not depend on the variant: the baseline compiles fastest.
TRAIN_CONFIG = "configs/test.py:variant=baseline"
# The reference run's fields (tests/conftest.py): a test that trains with them (or resumes a copy
# of the reference) compiles nothing the reference did not.
REFERENCE_FIELDS = {"total_steps": 6, "checkpoint_every_steps": 2, "keep_checkpoints": 3}
# The reference's fields with a learning rate whose first update overflows the parameters: the
# tests of a non-finite loss share one compiled train step.
EXPLODING_FIELDS = {**REFERENCE_FIELDS, "optimizer.lr": 1e38}


def tiny_dataset(root: pathlib.Path, image_size: int = IMAGE_SIZE) -> str:
  """24 synthetic cases (32 px by default), prepared (train 16 / val 2 / test 6, seeded_712)."""
  from sgdnet_jax import demo

  return str(demo.ensure_demo_dataset(root, num_cases=24, image_size=image_size))


def overrides(data_dir: str, **fields) -> list:
  base = {
    "data.image_size": IMAGE_SIZE,
    "model.trans_patch_sizes": (8, 4, 2, 1),
    # One block a stage: the loop's mechanics do not depend on the depth, and every process of a
    # test traces, compiles (or loads) and checkpoints a third less than at depth 50.
    "model.backbone_depth": 14,
    "global_batch_size": 4,
    "eval_batch_size": 4,
    "log_every_steps": 1,
    "compilation_cache_dir": "",
    # metrics.jsonl only: TensorFlow's import (~6 s a process) is paid by the tests of the writer.
    "tensorboard": False,
  }
  base.update(fields)
  return [f"--config.data.dir={data_dir}"] + [
    f"--config.{k}={v!r}" if isinstance(v, str) else f"--config.{k}={v}" for k, v in base.items()
  ]


def train_command(workdir, data_dir: str, fields=None, **more_fields) -> list:
  return [
    sys.executable,
    "-m",
    "sgdnet_jax.main",
    "train",
    "--config",
    TRAIN_CONFIG,
    "--workdir",
    str(workdir),
  ] + overrides(data_dir, **{**(fields or {}), **more_fields})


def subprocess_env(**extra) -> dict:
  """This process's environment plus `extra`; XLA flags in `extra` add to this process's (the
  flags tests/conftest.py sets)."""
  env = dict(os.environ)
  if "XLA_FLAGS" in extra:
    extra["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {extra['XLA_FLAGS']}".strip()
  env.update({"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **extra})
  return env


def step_losses(workdir) -> dict:
  """step -> loss from metrics.jsonl; a repeated step (after a resume) keeps its last value."""
  losses = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      if "loss" in record:
        losses[record["step"]] = record["loss"]
  return losses


def run(command, env, timeout=900):
  result = subprocess.run(
    command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
  )
  assert result.returncode == 0, (
    f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
  )
  return result


@contextlib.contextmanager
def sigterm_while_logging(step: int):
  """An in-process training meanwhile gets SIGTERM while it writes step `step`'s metrics: it
  saves and stops after step `step + 1` (train/preemption.py), exit `RESUME_EXIT`. A resume of
  the same config then reuses the stopped run's programs (core.programs), where a shorter
  `total_steps` would compile new ones."""
  from sgdnet_jax.train import writers

  write_scalars = writers.MetricsWriter.write_scalars

  def write_then_terminate(writer, at_step, scalars):
    write_scalars(writer, at_step, scalars)
    if at_step == step and "loss" in scalars:
      os.kill(os.getpid(), signal.SIGTERM)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(writers.MetricsWriter, "write_scalars", write_then_terminate)
    yield
