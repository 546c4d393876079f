"""Every name inside a workdir, in one place: the modules that read or write one use these.

  W/config.json                  the resolved config of the run (or of `convert`'s variables)
  W/config.<time>.json           an earlier config.json, kept when a resume changed fields
  W/train.lock                   the run holding W (`workdir.guard`)
  W/checkpoints/<step>/          Orbax: the latest training states (`workdir.checkpointing`)
  W/best/<step>/                 Orbax: the variables of the best validation Dice
  W/variables/                   Orbax: the variables `convert` writes (`workdir.variables_io`)
  W/metrics.jsonl                training scalars, a line per write (`train.writers`)
  W/eval/<split><suffix>.json    `evaluate`'s results; <split><suffix>_cases.csv per case
  W/predictions/                 `predict`'s masks and pictures (its default --out)
  W/ablate/                      `ablate`'s knockout evaluations and report

The suffix of an evaluation names how it was computed (`eval_suffix`). W may be a local folder or
a `gs://` URL (`sgdnet_jax.core.paths`). Nothing here imports JAX: the study report uses it too.
"""

import os

from sgdnet_jax.core import paths

CONFIG_FILE = "config.json"
LOCK_FILE = "train.lock"
LATEST_DIR = "checkpoints"
BEST_DIR = "best"
VARIABLES_DIR = "variables"
METRICS_FILE = "metrics.jsonl"
EVAL_DIR = "eval"
CASES_SUFFIX = "_cases.csv"
PREDICTIONS_DIR = "predictions"
ABLATE_DIR = "ablate"


def config_file(workdir: str | os.PathLike) -> paths.Path:
  return paths.as_path(workdir) / CONFIG_FILE


def kept_config_file(workdir: str | os.PathLike, stamp: str) -> paths.Path:
  """`W/config.<stamp>.json`: where a resume keeps the config.json it replaces."""
  return paths.as_path(workdir) / f"config.{stamp}.json"


def lock_file(workdir: str | os.PathLike) -> paths.Path:
  return paths.as_path(workdir) / LOCK_FILE


def latest_dir(workdir: str | os.PathLike) -> paths.Path:
  return paths.as_path(workdir) / LATEST_DIR


def best_dir(workdir: str | os.PathLike) -> paths.Path:
  return paths.as_path(workdir) / BEST_DIR


def variables_dir(workdir: str | os.PathLike) -> paths.Path:
  return paths.as_path(workdir) / VARIABLES_DIR


def metrics_file(workdir: str | os.PathLike) -> paths.Path:
  return paths.as_path(workdir) / METRICS_FILE


def ablate_dir(workdir: str | os.PathLike) -> paths.Path:
  return paths.as_path(workdir) / ABLATE_DIR


def eval_dir(workdir: str | os.PathLike) -> paths.Path:
  return paths.as_path(workdir) / EVAL_DIR


def eval_suffix(resolution: str = "train", tta: str = "none", post: bool = False) -> str:
  """`_native` (original resolution), `_tta-<mode>`, `_post` (post-processed), in this order."""
  suffix = "" if resolution == "train" else "_native"
  suffix += "" if tta == "none" else f"_tta-{tta}"
  return suffix + ("_post" if post else "")


def eval_json(out: str | os.PathLike, split: str, suffix: str = "") -> paths.Path:
  """`<out>/<split><suffix>.json`, `out` being an evaluation folder (`eval_dir`)."""
  return paths.as_path(out) / f"{split}{suffix}.json"


def eval_cases(out: str | os.PathLike, split: str, suffix: str = "") -> paths.Path:
  """`<out>/<split><suffix>_cases.csv`, beside `eval_json`."""
  return paths.as_path(out) / f"{split}{suffix}{CASES_SUFFIX}"


def predictions_dir(workdir: str | os.PathLike) -> paths.Path:
  return paths.as_path(workdir) / PREDICTIONS_DIR
