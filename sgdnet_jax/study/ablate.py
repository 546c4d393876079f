"""Functional lesions of a trained model, evaluated and reported against the intact model.

  ablate(config, "runs/sgdnet", "test", [("guidance=zero",), ("sgdc.local=off",)])

The trained variables are loaded once and evaluated by `evaluate.evaluate` under
`config.model.lesions` = each lesion set in turn (docs/ablations.md defines the lesions), and once
intact. Layout below `W/ablate`, so that the sweep report reads it with `intact` as the baseline:

  W/ablate/<lesion>/fold<k>/eval/<split>.json, <split>_cases.csv   (also W/ablate/intact/...)
  W/ablate/<split>/report.md, .csv, .json, .tex, report_<metric>.png
  W/ablate/<split>.json   lesions, their definitions, metric values and the comparison

A lesion set of several lesions is named by joining them with '+'.
"""

import json
import os
from collections.abc import Sequence
from typing import Any

import ml_collections

from sgdnet_jax.core import errors
from sgdnet_jax.inference import evaluate
from sgdnet_jax.models import lesions as lesion_lib
from sgdnet_jax.study import plots, report
from sgdnet_jax.workdir import guard, layout, variables_io

INTACT = "intact"


def parse_lesions(text: str) -> list[tuple[str, ...]]:
  """`a,b+c` -> [('a',), ('b', 'c')]: comma-separated lesion sets, '+' composing lesions."""
  return [tuple(part for part in item.split("+") if part) for item in text.split(",") if item]


def lesion_name(lesions: Sequence[str]) -> str:
  return "+".join(lesions) if lesions else INTACT


def _check(config: ml_collections.ConfigDict, lesion_sets: Sequence[tuple[str, ...]]):
  """Every set acts on this variant (ConfigError otherwise), and shuffling has a batch to use."""
  if not lesion_sets:
    raise errors.ConfigError(
      f"no lesion acts on variant {config.model.variant!r}: nothing to ablate"
    )
  for lesions in lesion_sets:
    model = config.model.copy_and_resolve_references()
    model.lesions = tuple(lesions)
    lesion_lib.check(model)
    if lesion_lib.GUIDANCE_SHUFFLE in lesions and config.eval_batch_size < 2:
      raise errors.ConfigError(
        f"{lesion_lib.GUIDANCE_SHUFFLE} permutes the guidance maps within an evaluation batch;"
        f" config.eval_batch_size={config.eval_batch_size} leaves none to swap (use >= 2)"
      )


def ablate(
  config: ml_collections.ConfigDict,
  workdir: str,
  split: str = "test",
  lesion_sets: Sequence[tuple[str, ...]] | None = None,
  resolution: str = "train",
  metrics: Sequence[str] = report.DEFAULT_METRICS,
  seed: int = 0,
) -> dict[str, Any]:
  """Evaluates the workdir's variables intact and under each lesion set; writes the report.

  `lesion_sets` defaults to every lesion that acts on the config's variant, one at a time.
  Returns the summary written to W/ablate/<split>.json.
  """
  if config.model.lesions:
    raise errors.ConfigError(
      f"config.model.lesions={tuple(config.model.lesions)} is set; ablate sets the lesions"
      " itself (pass them with --lesions)"
    )
  if lesion_sets is None:
    lesion_sets = [(lesion,) for lesion in lesion_lib.applicable(config.model)]
  _check(config, lesion_sets)
  guard.check_model_fits(config, [workdir])
  variables = variables_io.load_variables(workdir)
  root = os.path.join(workdir, layout.ABLATE_DIR)
  suffix = layout.eval_suffix(resolution)
  for lesions in [(), *lesion_sets]:
    lesioned = config.copy_and_resolve_references()
    lesioned.model.lesions = tuple(lesions)
    out_dir = layout.eval_dir(os.path.join(root, lesion_name(lesions), f"fold{config.data.fold}"))
    evaluate.evaluate(lesioned, workdir, split, resolution, variables=variables, out_dir=out_dir)
  runs = report.load_runs(root, split + suffix, metrics)
  result = report.compare(runs, INTACT, seed)
  report_dir = os.path.join(root, split + suffix)
  os.makedirs(report_dir, exist_ok=True)
  report.write_tables(report_dir, result)
  groups = report.group_runs(runs, result["metrics"])
  for metric in result["metrics"]:
    values = {name: groups[name][config.data.fold].cases[metric] for name in groups}
    title = f"{metric} per case under each lesion, split {split} ({report.direction(metric)})"
    plots.case_plot(os.path.join(report_dir, f"report_{metric}.png"), metric, values, title)
  summary = {
    "workdir": os.path.abspath(workdir),
    "split": split + suffix,
    "variant": config.model.variant,
    "lesions": {
      lesion_name(lesions): [lesion_lib.LESIONS[lesion] for lesion in lesions]
      for lesions in lesion_sets
    },
    "values": {run.variant: run.values for run in runs},
    "report": report_dir,
    "comparison": result["tables"],
  }
  path = os.path.join(root, f"{split}{suffix}.json")
  with open(path + ".tmp", "w") as f:
    json.dump(report.json_ready(summary), f, indent=2)
  os.replace(path + ".tmp", path)
  return summary
