"""Sweeps: the runs of a config's `get_sweep`, printed, run here one by one, or sent to SLURM.

  runs = sweeps.load_sweep("configs/isic2018.py:sweep=table5")
  print("\n".join(print_lines(runs, "runs/t5")))   # the train + evaluate commands
  run_local(runs, "runs/t5")                       # R/sweep.json: one status per run
  write_slurm(runs, "runs/t5")                     # R/sweep.sbatch: one array task per run

The runs come from `study.sweeps.load_sweep` (docs/ablations.md). Run i lives in
`R/<variant>/fold<k>[/seed<s>]` (`SweepRun.name`, `sweeps.run_workdir`): train it, then
evaluate each split of its `config.eval_splits`. Locally, a run whose evaluations exist, whose
`config.json` equals the sweep's config (`workdir.guard.config_changes` finds none) and whose
training reached its last step is skipped; any other resumes
(training continues from its checkpoint). Each run's log opens with a header line,
`=== run 3/8: sgdnet fold 0 seed 1 → R/sgdnet/fold0/seed1 ===`; a skipped run's header says so.
On SLURM, each array task trains through the launcher `launch/slurm_gpu.sbatch` (see
`LAUNCHER`) and then evaluates.
"""

import json
import logging
import os
import pathlib
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from sgdnet_jax.core import errors, paths
from sgdnet_jax.inference import evaluate
from sgdnet_jax.study import sweeps
from sgdnet_jax.train import loop
from sgdnet_jax.workdir import checkpointing, guard, image_size, layout

STATUS_FILE = "sweep.json"
SCRIPT_FILE = "sweep.sbatch"
PROGRAM = ("python", "-m", "sgdnet_jax.main")
REPO = pathlib.Path(__file__).resolve().parents[2]
# The launcher every array task trains through, and its interface: `bash LAUNCHER --config CONFIG
# --workdir WORKDIR [--config.x=y ...]` (train's arguments) trains one run with srun inside the
# current allocation, and the launcher's `#SBATCH` lines describe the allocation of one run (the
# array script copies them).
LAUNCHER = "launch/slurm_gpu.sbatch"
# Options the array script sets itself instead of copying them from the launcher.
OWN_SBATCH_OPTIONS = ("--job-name", "--output", "--error", "--array")
INTERRUPTED_EXIT = 128 + signal.SIGTERM


class SweepInterrupted(Exception):
  """SIGTERM or SIGINT outside a training loop (which saves a checkpoint itself)."""


def commands(run: sweeps.SweepRun, directory: str) -> list[list[str]]:
  """The train command and one evaluate command per split of `run.config.eval_splits`."""
  config_args = ["--config", run.spec, "--workdir", directory]
  train = [*PROGRAM, "train", *config_args, *run.overrides]
  return [train] + [
    [*PROGRAM, "evaluate", *config_args, "--split", split, *run.overrides]
    for split in run.config.eval_splits
  ]


def print_lines(runs: Sequence[sweeps.SweepRun], root: str) -> list[str]:
  """One line per run: its workdir, then its commands joined by `&&`."""
  return [
    f"{sweeps.run_workdir(root, run)}\t"
    + " && ".join(shlex.join(c) for c in commands(run, sweeps.run_workdir(root, run)))
    for run in runs
  ]


# --- Local -----------------------------------------------------------------------------------


def _config_as_trained(config, directory: str) -> dict[str, Any]:
  """The config as `train` records it in `directory`/config.json (the image size resolved)."""
  config = config.copy_and_resolve_references()
  config.data.image_size = image_size.resolve(config, [directory])
  return config.to_dict()


def _finished(run: sweeps.SweepRun, directory: str) -> bool:
  """Evaluations written (each JSON and its per-case CSV) and training at its last step
  (config.json is checked before). A JSON without its CSV is an evaluation cut short: redone."""
  evaluations = layout.eval_dir(directory)
  written = lambda split: all(
    file(evaluations, split).exists() for file in (layout.eval_json, layout.eval_cases)
  )
  if not all(map(written, run.config.eval_splits)):
    return False
  _, total_steps = loop.schedule_length(run.config)
  steps = checkpointing.trained_steps(directory)
  return bool(steps) and steps[-1] >= total_steps


def describe(run: sweeps.SweepRun) -> str:
  """The run in words: `sgdnet fold 0 seed 1` for `sgdnet/fold0/seed1`."""
  return re.sub(r"/(fold|seed)(\d+)", r" \1 \2", run.name)


def _run_one(run: sweeps.SweepRun, directory: str, header: str) -> str:
  """Trains and evaluates one run unless it is finished; returns its status.

  Prints `header` with what happens: the run starting, or skipped as finished (one line).
  """
  recorded = guard.recorded_config(directory)
  if recorded is not None:
    expected = _config_as_trained(run.config, directory)
    structural, others = guard.config_changes(recorded, expected)
    if structural or others:
      raise errors.UserError(
        f"{layout.config_file(directory)} differs from this sweep's config"
        f" ({guard.describe_changes(recorded, expected, structural + others)}: recorded -> sweep);"
        " remove that workdir or choose another --root"
      )
  if recorded is not None and _finished(run, directory):
    print(f"=== {header}: finished before, skipped ===", flush=True)
    return "skipped"
  print(f"=== {header} ===", flush=True)
  outcome = loop.train_and_evaluate(run.config.copy_and_resolve_references(), directory)
  if outcome["signal"]:  # The sweep stops, before this run's evaluation too.
    return "interrupted"
  for split in run.config.eval_splits:
    evaluate.evaluate(run.config.copy_and_resolve_references(), directory, split)
  return "done"


def _one_line(error: BaseException) -> str:
  return f"{type(error).__name__}: {' '.join(str(error).split())}"


def _write_json(path: paths.Path, record: dict[str, Any]):
  paths.write_text_atomic(path, json.dumps(record, indent=2))


def _raise_interrupted(signum, frame):
  del frame
  raise SweepInterrupted(signal.Signals(signum).name)


def run_local(
  runs: Sequence[sweeps.SweepRun], root: str, spec: str = "", overrides: Sequence[str] = ()
) -> dict[str, Any]:
  """Runs the sweep here, one run after another; writes and returns R/sweep.json.

  Each run's status: done, skipped (finished before), failed (with the one-line error; the sweep
  goes on) or interrupted (SIGTERM/SIGINT: the run saved what it could and the sweep stops; the
  same call resumes it). Runs not reached stay pending.
  """
  root_path = paths.as_path(root)
  root_path.mkdir(parents=True, exist_ok=True)
  status_path = root_path / STATUS_FILE
  record = {
    "config": spec,
    "overrides": list(overrides),
    "root": str(root_path),
    "runs": [
      {
        "name": run.name,
        "workdir": sweeps.run_workdir(root, run),
        "status": "pending",
        "error": None,
      }
      for run in runs
    ],
  }
  previous = signal.signal(signal.SIGTERM, _raise_interrupted)
  try:
    for number, (run, entry) in enumerate(zip(runs, record["runs"]), start=1):
      entry["status"] = "running"
      _write_json(status_path, record)
      start = time.time()
      header = f"run {number}/{len(runs)}: {describe(run)} → {entry['workdir']}"
      try:
        entry["status"] = _run_one(run, entry["workdir"], header)
      except (SweepInterrupted, KeyboardInterrupt):
        entry["status"] = "interrupted"
      except Exception as error:  # A failed run is recorded; the sweep goes on.
        logging.exception("run %s failed", run.name)
        entry["status"], entry["error"] = "failed", _one_line(error)
      entry["seconds"] = round(time.time() - start, 1)
      _write_json(status_path, record)
      logging.info("run %s: %s", run.name, entry["status"])
      if entry["status"] == "interrupted":
        break
  finally:
    signal.signal(signal.SIGTERM, previous)
  return record


# --- SLURM -----------------------------------------------------------------------------------


def _launcher_sbatch_lines(launcher: pathlib.Path) -> list[str]:
  """The launcher's `#SBATCH` lines (one run's allocation), without the options set here."""
  lines = []
  for line in launcher.read_text().splitlines():
    if line.startswith("#SBATCH"):
      option = line.split()[1].split("=")[0] if len(line.split()) > 1 else ""
      if option not in OWN_SBATCH_OPTIONS:
        lines.append(line)
  return lines


def _bash_array(values: Sequence[str]) -> str:
  return "(" + " ".join(shlex.quote(v) for v in values) + ")"


def slurm_script(runs: Sequence[sweeps.SweepRun], root: str, spec: str = "") -> str:
  """The job array: task i trains run i through the launcher, then evaluates its splits."""
  if not paths.is_local(root):
    raise errors.UserError(
      f"--root {root}: a SLURM sweep writes its job script and logs there, so it must be a"
      " folder the cluster's nodes share, not a bucket URL; give such a folder"
    )
  root = os.path.abspath(root)
  launcher = REPO / LAUNCHER
  if not launcher.is_file():
    raise errors.UserError(f"the SLURM launcher {launcher} is missing; restore {LAUNCHER}")
  cases = []
  for index, run in enumerate(runs):
    path, _, arg = run.spec.partition(":")
    config = os.path.abspath(path) + (f":{arg}" if arg else "")
    cases += [
      f"  {index})",
      f"    workdir={shlex.quote(sweeps.run_workdir(root, run))}",
      f"    config={shlex.quote(config)}",
      f"    overrides={_bash_array(run.overrides)}",
      f"    splits={_bash_array(run.config.eval_splits)}",
      "    ;;",
    ]
  header = [
    "#!/usr/bin/env bash",
    f"# Sweep {spec}: {len(runs)} runs, one SLURM array task each (written by"
    " `python -m sgdnet_jax.main sweep --slurm`).",
    f"# Submit from {REPO}: sbatch [options] {shlex.quote(os.path.join(root, SCRIPT_FILE))}",
    "# Task i trains run i with the launcher (`bash LAUNCHER --config C --workdir W [...]`,",
    "# srun in this allocation; the allocation lines below are the launcher's), then evaluates",
    "# each split in this batch step, only once its training finished: a train stopped by",
    "# preemption or the time limit exits 75 and the launcher requeues this array task, which",
    "# resumes from its checkpoint. Resubmitting resumes unfinished runs from their checkpoints.",
    "#SBATCH --job-name=sgdnet_sweep",
    f"#SBATCH --array=0-{len(runs) - 1}",
    f"#SBATCH --output={os.path.join(root, 'slurm', '%x-%A_%a.out')}",
    *_launcher_sbatch_lines(launcher),
  ]
  body = [
    "set -euo pipefail",
    f"cd {shlex.quote(str(REPO))}",
    "python=${PYTHON:-.venv/bin/python}",
    'case "$SLURM_ARRAY_TASK_ID" in',
    *cases,
    "  *)",
    f'    echo "task $SLURM_ARRAY_TASK_ID: this sweep has runs 0-{len(runs) - 1}" >&2',
    "    exit 2",
    "    ;;",
    "esac",
    'echo "run $SLURM_ARRAY_TASK_ID: $workdir"',
    "status=0",
    f'bash {LAUNCHER} --config "$config" --workdir "$workdir" \\',
    '  ${overrides[@]+"${overrides[@]}"} || status=$?',
    "if ((status != 0)); then  # 75: stopped with a checkpoint, the launcher requeued this task",
    '  echo "run $SLURM_ARRAY_TASK_ID: train exited $status; not evaluated" >&2',
    '  exit "$status"',
    "fi",
    'for split in "${splits[@]}"; do',
    '  "$python" -m sgdnet_jax.main evaluate --config "$config" --workdir "$workdir"'
    ' --split "$split" \\',
    '    ${overrides[@]+"${overrides[@]}"} --config.distributed=off',
    "done",
  ]
  return "\n".join(header + [""] + body) + "\n"


def write_slurm(runs: Sequence[sweeps.SweepRun], root: str, spec: str = "") -> str:
  """Writes R/sweep.sbatch (and R/slurm/ for the task logs); returns its path."""
  os.makedirs(os.path.join(root, "slurm"), exist_ok=True)
  path = os.path.join(root, SCRIPT_FILE)
  with open(path, "w") as f:
    f.write(slurm_script(runs, root, spec))
  os.chmod(path, 0o755)
  return path


def submit(script: str, sbatch_args: Sequence[str] = ()) -> str:
  """`sbatch [sbatch_args] script` from the repository root; returns what sbatch printed."""
  command = ["sbatch", *sbatch_args, os.path.abspath(script)]
  try:
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
  except FileNotFoundError:
    raise errors.UserError(
      f"sbatch is not on PATH; submit {script} on the cluster: cd {REPO} && {shlex.join(command)}"
    ) from None
  if result.returncode != 0:
    lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
    raise errors.UserError(f"{shlex.join(command)} failed ({result.returncode}): {lines[-1]}")
  return result.stdout.strip()


def interrupted(record: dict[str, Any]) -> bool:
  return any(entry["status"] == "interrupted" for entry in record["runs"])


def counts(record: dict[str, Any]) -> str:
  by_status: dict[str, int] = {}
  for entry in record["runs"]:
    by_status[entry["status"]] = by_status.get(entry["status"], 0) + 1
  return ", ".join(f"{n} {status}" for status, n in by_status.items())
