"""Functional knockouts of a trained model, evaluated and reported against the intact model.

  ablate(config, "runs/sgdnet", "test", [("guidance=zero",), ("sgdc.local=off",)])

The trained variables are loaded once and evaluated by `evaluate.evaluate` under
`config.model.knockouts` = each knockout set in turn (docs/ablations.md defines the knockouts), and
once intact. Layout below `W/ablate`, so that the sweep report reads it with `intact` as the
baseline:

  W/ablate/<knockout>/fold<k>/eval/<split>.json, <split>_cases.csv   (also W/ablate/intact/...)
  W/ablate/<split>/report.md, .csv, .json, .tex, report_<metric>.png
  W/ablate/<split>.json   knockouts, their definitions, metric values and the comparison

A knockout set of several knockouts is named by joining them with '+'.
"""

import json
from collections.abc import Sequence
from typing import Any

import ml_collections

from sgdnet_jax.core import compilation_cache, errors, paths
from sgdnet_jax.inference import evaluate
from sgdnet_jax.models import knockouts as knockout_lib
from sgdnet_jax.study import plots, report
from sgdnet_jax.workdir import guard, image_size, layout, variables_io

INTACT = "intact"


def parse_knockouts(text: str) -> list[tuple[str, ...]]:
  """`a,b+c` -> [('a',), ('b', 'c')]: comma-separated knockout sets, '+' composing knockouts."""
  return [tuple(part for part in item.split("+") if part) for item in text.split(",") if item]


def knockout_name(knockouts: Sequence[str]) -> str:
  return "+".join(knockouts) if knockouts else INTACT


def _check(config: ml_collections.ConfigDict, knockout_sets: Sequence[tuple[str, ...]]):
  """Every set acts on this variant (ConfigError otherwise), and shuffling has a batch to use."""
  if not knockout_sets:
    raise errors.ConfigError(
      f"no knockout acts on variant {config.model.variant!r}: nothing to ablate"
    )
  for knockouts in knockout_sets:
    model = config.model.copy_and_resolve_references()
    model.knockouts = tuple(knockouts)
    knockout_lib.check(model)
    if knockout_lib.GUIDANCE_SHUFFLE in knockouts and config.eval_batch_size < 2:
      raise errors.ConfigError(
        f"{knockout_lib.GUIDANCE_SHUFFLE} permutes the guidance maps within an evaluation batch;"
        f" config.eval_batch_size={config.eval_batch_size} leaves none to swap (use >= 2)"
      )


def ablate(
  config: ml_collections.ConfigDict,
  workdir: str,
  split: str = "test",
  knockout_sets: Sequence[tuple[str, ...]] | None = None,
  resolution: str = "train",
  metrics: Sequence[str] = report.DEFAULT_METRICS,
  seed: int = 0,
) -> dict[str, Any]:
  """Evaluates the workdir's variables intact and under each knockout set; writes the report.

  `knockout_sets` defaults to every knockout that acts on the config's variant, one at a time.
  Returns the summary written to W/ablate/<split>.json.
  """
  compilation_cache.enable(config.compilation_cache_dir)
  if config.model.knockouts:
    raise errors.ConfigError(
      f"config.model.knockouts={tuple(config.model.knockouts)} is set; ablate sets the knockouts"
      " itself (pass them with --knockouts)"
    )
  if knockout_sets is None:
    knockout_sets = [(knockout,) for knockout in knockout_lib.applicable(config.model)]
  _check(config, knockout_sets)
  guard.check_model_fits(config, [workdir])
  image_size.resolve(config, [workdir])
  variables = variables_io.load_variables(workdir)
  root = layout.ablate_dir(workdir)
  suffix = layout.eval_suffix(resolution)
  for knockouts in [(), *knockout_sets]:
    knocked_out = config.copy_and_resolve_references()
    knocked_out.model.knockouts = tuple(knockouts)
    out_dir = layout.eval_dir(root / knockout_name(knockouts) / f"fold{config.data.fold}")
    evaluate.evaluate(knocked_out, workdir, split, resolution, variables=variables, out_dir=out_dir)
  runs = report.load_runs(root, split + suffix, metrics)
  result = report.compare(runs, INTACT, seed)
  report_dir = root / (split + suffix)
  report_dir.mkdir(parents=True, exist_ok=True)
  report.write_tables(report_dir, result)
  groups = report.group_runs(runs, result["metrics"])
  for metric in result["metrics"]:
    values = {name: groups[name][config.data.fold].cases[metric] for name in groups}
    title = f"{metric} per case under each knockout, split {split} ({report.direction(metric)})"
    plots.case_plot(report_dir / f"report_{metric}.png", metric, values, title)
  summary = {
    "workdir": str(paths.as_path(workdir)),
    "split": split + suffix,
    "variant": config.model.variant,
    "knockouts": {
      knockout_name(knockouts): [knockout_lib.KNOCKOUTS[knockout] for knockout in knockouts]
      for knockouts in knockout_sets
    },
    "values": {run.variant: run.values for run in runs},
    "report": str(report_dir),
    "comparison": result["tables"],
  }
  paths.write_text_atomic(
    root / f"{split}{suffix}.json", json.dumps(report.json_ready(summary), indent=2)
  )
  return summary
