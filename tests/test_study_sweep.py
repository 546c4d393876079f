"""Sweeps: the tiny sweep (2 variants x 2 folds) printed, written as a SLURM array; the seeds
sweep (one program, 2 folds x 2 seeds) run here, interrupted by SIGTERM in its third run and
resumed; plus the sweeps of the experiment configs."""

import json
import os
import pathlib
import shlex
import signal
import subprocess

import pytest

from sgdnet_jax import main
from sgdnet_jax.core import config_utils, errors
from sgdnet_jax.study import sweep, sweeps
from sgdnet_jax.workdir import checkpointing, guard, layout
from tests import train_helpers

SPEC = "configs/test.py:sweep=tiny"
RUN_NAMES = ["baseline/fold0", "baseline/fold1", "cto/fold0", "cto/fold1"]
PROTOCOL = "two_fold"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
  """The tiny synthetic dataset with a two-fold protocol (the test splits swap with train)."""
  directory = train_helpers.tiny_dataset(tmp_path_factory.mktemp("data"))
  splits = pathlib.Path(directory, "splits")
  seeded = json.loads((splits / "seeded_712.json").read_text())["folds"][0]
  test = len(seeded["test"])
  swapped = {
    "train": seeded["train"][test:] + seeded["test"],
    "val": seeded["val"],
    "test": seeded["train"][:test],
  }
  protocol = {"name": PROTOCOL, "dataset": "synthetic", "description": "tests", "seed": None}
  protocol["folds"] = [seeded, swapped]
  (splits / f"{PROTOCOL}.json").write_text(json.dumps(protocol))
  return directory


def sweep_overrides(data_dir: str) -> list[str]:
  return train_helpers.overrides(
    data_dir, total_steps=1, eval_every_epochs=0, **{"data.protocol": PROTOCOL}
  )


def test_experiment_sweeps_name_their_runs():
  expected = {
    "configs/isic2018.py:sweep=table4": (20, "sge_contmix/fold4"),
    "configs/isic2018.py:sweep=table5": (20, "sgdc_no_dynamic/fold3"),
    "configs/isic2018.py:sweep=main": (10, "cto/fold0"),
    "configs/isic2018.py:sweep=seeds": (3, "sgdnet/fold0/seed2"),
    "configs/isic2016_ph2.py:sweep=main": (2, "sgdnet/fold0"),
    "configs/conic.py:sweep=main": (2, "cto/fold0"),
    "configs/demo.py:sweep=example": (4, "sgdnet/fold0/seed1"),
    "configs/isic2018.py:sweep=cto_recipe": (5, "cto/fold4"),
  }
  for spec, (count, name) in expected.items():
    runs = sweeps.load_sweep(spec)
    assert len(runs) == count and name in [run.name for run in runs], spec
  ph2 = sweeps.load_sweep("configs/isic2016_ph2.py:sweep=main")[0]
  assert tuple(ph2.config.eval_splits) == ("ph2", "test")
  # A run is the command line that rebuilds its config, preset included.
  run = sweeps.load_sweep("configs/isic2018.py:sweep=table5,num_classes=2")[5]
  assert run.spec == "configs/isic2018.py:num_classes=2,variant=sgdc_no_local,fold=0"
  assert run.config.model.sgdc.local_branch is False and run.config.model.num_classes == 2
  assert config_utils.load_config(run.spec, run.overrides) == run.config


@pytest.mark.parametrize("experiment", ["isic2018", "isic2016_ph2", "conic"])
def test_recipe_cto_trains_the_comparator_as_cto_published_it(experiment):
  shared = config_utils.load_config(f"configs/{experiment}.py:variant=cto")
  cto = config_utils.load_config(f"configs/{experiment}.py:variant=cto,recipe=cto")
  assert (shared.loss.seg, shared.loss.edge_weight, shared.epochs) == ("bce_dice", 3.0, 50)
  assert (cto.loss.seg, cto.loss.edge_weight, cto.epochs) == ("structure", 0.0, 90)
  assert (shared.global_batch_size, cto.global_batch_size) == (16, 32)
  cto.loss, cto.epochs, cto.global_batch_size = shared.loss, shared.epochs, 16
  assert cto == shared  # nothing else changes
  with pytest.raises(errors.ConfigError, match="recipe='x'"):
    config_utils.load_config(f"configs/{experiment}.py:recipe=x")


def test_print_gives_each_runs_workdir_and_commands(data_dir, tmp_path, capsys):
  root = str(tmp_path / "R")
  overrides = sweep_overrides(data_dir)
  assert main.main(["sweep", "--config", SPEC, "--root", root, "--print", *overrides]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 4
  for line, name in zip(lines, RUN_NAMES):
    workdir, commands = line.split("\t")
    assert workdir == os.path.join(root, name)
    train, evaluate = [shlex.split(c) for c in commands.split(" && ")]
    variant, fold = name.split("/")
    spec = f"configs/test.py:variant={variant}"
    assert train == [
      "python", "-m", "sgdnet_jax.main", "train", "--config", spec, "--workdir", workdir,
      f"--config.data.fold={fold[4:]}", *overrides,
    ]  # fmt: skip
    assert evaluate == [*train[:3], "evaluate", *train[4:8], "--split", "test", *train[8:]]
    config = config_utils.load_config(spec, train[8:])
    assert (config.model.variant, config.data.fold) == (variant, int(fold[4:]))


def test_slurm_array_trains_each_run_through_the_launcher(data_dir, tmp_path, capsys):
  root = tmp_path / "R"
  stubs = tmp_path / "bin"
  stubs.mkdir()
  calls = tmp_path / "calls.txt"
  for name in ("sbatch", "srun", "python", "scontrol"):  # each records its arguments
    stub = stubs / name
    stub.write_text(
      f"#!/bin/bash\n{{ printf '%s' {name}; printf ' %q' \"$@\"; echo; }} >> {calls}\n"
      "echo 'Submitted batch job 42'\n"
      + ("exit ${STUB_SRUN_STATUS:-0}\n" if name == "srun" else "")
    )
    stub.chmod(0o755)
  env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "PYTHON": str(stubs / "python")}
  overrides = sweep_overrides(data_dir)
  argv = ["sweep", "--config", SPEC, "--root", str(root), "--slurm", "--submit"]
  argv += ["--sbatch-args", "--partition=gpu --time=1:00:00", *overrides]
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("PATH", env["PATH"])
    assert main.main(argv) == 0
  assert "Submitted batch job 42" in capsys.readouterr().out
  script = root / "sweep.sbatch"
  assert calls.read_text().splitlines() == [f"sbatch --partition=gpu --time=1:00:00 {script}"]
  text = script.read_text()
  assert "#SBATCH --array=0-3" in text and f"#SBATCH --output={root}/slurm/" in text
  launcher = (train_helpers.REPO / sweep.LAUNCHER).read_text().splitlines()
  for line in launcher:  # one run's allocation is the launcher's
    if line.startswith("#SBATCH") and not line.split()[1].startswith(sweep.OWN_SBATCH_OPTIONS):
      assert line in text
  assert subprocess.run(["bash", "-n", str(script)]).returncode == 0

  # Task 2 (cto, fold 0) with srun and python stubbed: the launcher's train, then evaluate.
  calls.unlink()
  slurm = {
    "SLURM_ARRAY_TASK_ID": "2",
    "SLURM_JOB_ID": "42",
    "SLURM_SUBMIT_DIR": str(train_helpers.REPO),
  }
  result = subprocess.run(["bash", str(script)], env={**env, **slurm}, capture_output=True)
  assert result.returncode == 0, result.stderr.decode()[-2000:]
  srun, evaluate = calls.read_text().splitlines()
  workdir = str(root / "cto" / "fold0")
  config = f"{train_helpers.REPO}/configs/test.py:variant=cto"
  srun_args = shlex.split(srun)
  assert srun_args[0] == "srun" and "train" in srun_args
  after = srun_args[srun_args.index("train") + 1 :]
  for option, value in (("--config", config), ("--workdir", workdir)):
    assert after[after.index(option) + 1] == value
  assert all(item in after for item in ["--config.data.fold=0", *overrides])
  assert shlex.split(evaluate) == [
    "python", "-m", "sgdnet_jax.main", "evaluate", "--config", config, "--workdir", workdir,
    "--split", "test", "--config.data.fold=0", *overrides, "--config.distributed=off",
  ]  # fmt: skip

  # A train stopped with a checkpoint (75) requeues the array task and is not evaluated; a failed
  # one (1) is neither requeued nor evaluated.
  for status, requeued in ((75, ["scontrol requeue 42"]), (1, [])):
    calls.unlink()
    task_env = {**env, **slurm, "STUB_SRUN_STATUS": str(status)}
    result = subprocess.run(["bash", str(script)], env=task_env, capture_output=True, text=True)
    assert result.returncode == status, result.stderr[-2000:]
    [srun, *others] = calls.read_text().splitlines()
    assert srun.startswith("srun ") and others == requeued
    assert f"run 2: train exited {status}; not evaluated" in result.stderr


def test_failed_runs_are_recorded_and_the_sweep_goes_on(tmp_path, capsys):
  root = tmp_path / "R"
  missing = str(tmp_path / "no_data")
  argv = ["sweep", "--config", SPEC, "--root", str(root), "--local", f"--config.data.dir={missing}"]
  assert main.main(argv) == 1
  record = json.loads((root / "sweep.json").read_text())
  assert [entry["name"] for entry in record["runs"]] == RUN_NAMES
  for entry in record["runs"]:
    assert entry["status"] == "failed" and missing in entry["error"], entry
    assert "\n" not in entry["error"]
  output = capsys.readouterr().out
  assert "4 failed" in output
  assert headers(output) == [header(root, i) for i in range(4)]


def test_a_run_whose_config_json_differs_fails_naming_each_change(tmp_path):
  root = tmp_path / "R"
  run = sweeps.load_sweep(SPEC)[0]
  recorded = run.config.copy_and_resolve_references()
  recorded.seed, recorded.model.edge_branch = 7, "sge"
  workdir = pathlib.Path(sweeps.run_workdir(str(root), run))
  workdir.mkdir(parents=True)
  config_utils.save_config(recorded, workdir / "config.json")
  record = sweep.run_local([run], str(root))
  [entry] = record["runs"]
  assert entry["status"] == "failed"
  assert (
    f"{workdir / 'config.json'} differs from this sweep's config (model.edge_branch: 'sge' ->"
    " 'none', seed: 7 -> 0: recorded -> sweep); remove that workdir or choose another --root"
  ) in entry["error"]


def test_a_workdir_holds_only_the_steps_orbax_finished(tmp_path):
  checkpoints = layout.latest_dir(tmp_path)
  for name in ("2", "10", "12.orbax-checkpoint-tmp-1733", f"4{checkpointing.CORRUPT_SUFFIX}"):
    (checkpoints / name).mkdir(parents=True)
  assert checkpointing.trained_steps(tmp_path) == [2, 10]
  assert checkpointing.trained_steps(tmp_path / "never_trained") == []


def header(root: pathlib.Path, index: int, skipped: bool = False, names=RUN_NAMES) -> str:
  """The line a local sweep prints before run `index` of `names` (or instead, if skipped)."""
  words = names[index].replace("/fold", " fold ").replace("/seed", " seed ")
  what = ": finished before, skipped" if skipped else ""
  return f"=== run {index + 1}/{len(names)}: {words} → {root / names[index]}{what} ==="


def headers(output: str) -> list[str]:
  return [line for line in output.splitlines() if line.startswith("=== run ")]


def _mtimes(root: pathlib.Path, name: str) -> dict[str, int]:
  paths = [root / name / "config.json", root / name / "eval" / "test.json"]
  return {str(path): path.stat().st_mtime_ns for path in paths}


# Four runs of one program (the baseline on two folds with two seeds): what the interrupted
# sweep checks is its bookkeeping, which needs no second model to compile.
SEEDS_SPEC = "configs/test.py:sweep=seeds"
SEEDS_RUNS = [f"baseline/fold{k}/seed{s}" for k in (0, 1) for s in (0, 1)]


def test_local_sweep_interrupted_in_its_third_run_resumes_only_what_is_missing(
  data_dir, tmp_path, capsys
):
  """SIGTERM, as a scheduler sends it, once the third run's training recorded its config."""
  root = tmp_path / "R"
  argv = ["sweep", "--config", SEEDS_SPEC, "--root", str(root), "--local"]
  argv += sweep_overrides(data_dir)
  third = root / SEEDS_RUNS[2]
  record_config = guard.check_and_record_config

  def record_then_terminate(workdir, config, write):
    record_config(workdir, config, write)
    if pathlib.Path(str(workdir)) == third:
      os.kill(os.getpid(), signal.SIGTERM)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(guard, "check_and_record_config", record_then_terminate)
    assert main.main(argv) == sweep.INTERRUPTED_EXIT
  output = capsys.readouterr().out
  assert (third / "config.json").is_file()  # stopped inside its training
  record = json.loads((root / "sweep.json").read_text())
  statuses = [entry["status"] for entry in record["runs"]]
  assert statuses == ["done", "done", "interrupted", "pending"], output[-3000:]
  finished = {name: _mtimes(root, name) for name in SEEDS_RUNS[:2]}
  # Each run's log opens with its header. The first run announces the compilation of the train
  # step; the second, whose seed alone differs, reuses that step (core.programs) and announces
  # none.
  lines = output.splitlines()
  expected = [header(root, i, names=SEEDS_RUNS) for i in range(3)]
  assert headers(output) == expected, output[-3000:]
  starts = [lines.index(line) for line in expected]
  announced = [
    "compiling the train step (first step only)…" in lines[start:end]
    for start, end in zip(starts[:2], starts[1:])
  ]
  assert announced == [True, False], output[-3000:]

  assert main.main(argv) == 0
  resumed = [header(root, i, skipped=True, names=SEEDS_RUNS) for i in range(2)]
  resumed += [header(root, i, names=SEEDS_RUNS) for i in range(2, 4)]
  assert headers(capsys.readouterr().out) == resumed
  record = json.loads((root / "sweep.json").read_text())
  assert [entry["status"] for entry in record["runs"]] == ["skipped", "skipped", "done", "done"]
  for name, mtimes in finished.items():  # neither trained nor evaluated again
    assert _mtimes(root, name) == mtimes
  for name in SEEDS_RUNS[2:]:
    result = json.loads((root / name / "eval" / "test.json").read_text())
    assert result["n_total"] == 6 and 0.0 <= result["dice"] <= 1.0


def test_an_evaluation_json_without_its_csv_is_not_a_finished_run(tmp_path, monkeypatch):
  run = sweeps.load_sweep(SPEC)[0]
  monkeypatch.setattr(sweep.loop, "schedule_length", lambda config: (1, 3))
  (layout.latest_dir(tmp_path) / "3").mkdir(parents=True)  # trained to its last step
  evaluations = layout.eval_dir(tmp_path)
  evaluations.mkdir()
  for split in run.config.eval_splits:  # killed between evaluate's two writes
    layout.eval_json(evaluations, split).write_text("{}")
  assert not sweep._finished(run, str(tmp_path))
  for split in run.config.eval_splits:
    layout.eval_cases(evaluations, split).write_text("case_id\n")
  assert sweep._finished(run, str(tmp_path))
