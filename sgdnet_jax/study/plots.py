"""Pictures of a sweep report (matplotlib, Agg backend: no display needed).

* `R/report_<metric>.png`: the per-case values of each variant (all folds pooled, seeds averaged),
  a box plot with every case drawn as a point over it;
* `R/curves.png`: training loss and validation Dice against the step, one line per run, from
  each run's `metrics.jsonl`.
"""

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from sgdnet_jax.study import report


def _pyplot():
  import matplotlib

  matplotlib.use("Agg")
  from matplotlib import pyplot

  return pyplot


def case_plot(path: str, metric: str, values: dict[str, np.ndarray], title: str) -> None:
  """Box plot with jittered points of per-case values (NaN dropped), one box per variant."""
  pyplot = _pyplot()
  names = list(values)
  kept = [values[name][~np.isnan(values[name])] for name in names]
  figure, axes = pyplot.subplots(figsize=(max(4.0, 1.2 * len(names) + 1.5), 4.0))
  axes.boxplot(kept, showfliers=False)
  axes.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right")
  jitter = np.random.default_rng(0)  # Fixed jitter: the same picture for the same input.
  for position, points in enumerate(kept, start=1):
    x = position + jitter.uniform(-0.15, 0.15, points.size)
    axes.scatter(x, points, s=8, alpha=0.5, color="tab:blue", zorder=3)
  axes.set_ylabel(metric)
  axes.set_title(title, fontsize=9)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  pyplot.close(figure)


def _read_jsonl(path: str) -> list[dict[str, Any]]:
  records = []
  with open(path) as f:
    for line in f:
      if line.strip():
        records.append(json.loads(line))
  return records


def curves_plot(path: str, runs: Sequence[report.Run]) -> None:
  """Training loss and validation Dice per run against the step, one colour per variant.

  Runs without a `metrics.jsonl` are skipped.
  """
  pyplot = _pyplot()
  figure, (loss_axes, dice_axes) = pyplot.subplots(1, 2, figsize=(10.0, 4.0))
  colours = {v: f"C{i % 10}" for i, v in enumerate(dict.fromkeys(r.variant for r in runs))}
  labelled = set()
  for run in runs:
    log = os.path.join(run.path, "metrics.jsonl")
    if not os.path.exists(log):
      continue
    records = _read_jsonl(log)
    for axes, key in ((loss_axes, "loss"), (dice_axes, "val_dice")):
      points = [(r["step"], r[key]) for r in records if key in r and "step" in r]
      if points:
        steps, values = zip(*points)
        label = None if (axes, run.variant) in labelled else run.variant
        labelled.add((axes, run.variant))
        axes.plot(steps, values, color=colours[run.variant], label=label, linewidth=1, alpha=0.7)
  loss_axes.set(xlabel="step", ylabel="training loss", title="training loss (one line per run)")
  dice_axes.set(xlabel="step", ylabel="validation Dice", title="validation Dice (one line per run)")
  for axes in (loss_axes, dice_axes):
    if axes.get_legend_handles_labels()[0]:
      axes.legend(fontsize=7)
  if not labelled:
    figure.suptitle("no run under the root has a metrics.jsonl with loss or val_dice")
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  pyplot.close(figure)


def write_plots(root: str, runs: Sequence[report.Run], result: dict[str, Any]) -> list[str]:
  """Writes R/report_<metric>.png for each metric and R/curves.png; returns their paths."""
  groups = report.group_runs(runs, result["metrics"])
  variants = [row["variant"] for row in result["tables"][result["metrics"][0]]]
  paths = []
  for metric in result["metrics"]:
    values = {
      variant: np.concatenate([groups[variant][f].cases[metric] for f in sorted(groups[variant])])
      for variant in variants
    }
    path = os.path.join(root, f"report_{metric}.png")
    title = f"{metric} per case, split {result['split']} ({result['directions'][metric]})"
    case_plot(path, metric, values, title)
    paths.append(path)
  path = os.path.join(root, "curves.png")
  curves_plot(path, runs)
  return [*paths, path]
