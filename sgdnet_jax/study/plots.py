"""Pictures of a sweep report (matplotlib, Agg backend: no display needed).

* `R/report_<metric>.png`: the per-case values of each variant (all folds pooled, seeds averaged),
  a box plot with every case drawn as a point over it;
* `R/curves.png`: training loss and validation Dice against the step, one line per run, from
  each run's `metrics.jsonl`; a curve of few points (validation Dice, a short run) marks each
  point, so that a run validated once shows.

The root may be a `gs://` URL: figures are drawn into memory and written through
`sgdnet_jax.core.paths`.
"""

import io
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from sgdnet_jax.core import paths
from sgdnet_jax.study import report
from sgdnet_jax.workdir import layout

# A curve of at most this many points marks each one (a single point draws no line); a longer
# one (the training loss of a real run: hundreds of points) is a plain line.
MARKED_POINTS = 100


def _pyplot():
  import matplotlib

  matplotlib.use("Agg")
  from matplotlib import pyplot

  return pyplot


def _save(figure, path: str | os.PathLike) -> None:
  encoded = io.BytesIO()
  figure.savefig(encoded, format="png", dpi=100)
  paths.write_bytes_atomic(path, encoded.getvalue())


def case_plot(
  path: str | os.PathLike, metric: str, values: dict[str, np.ndarray], title: str
) -> None:
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
  _save(figure, path)
  pyplot.close(figure)


def _read_jsonl(path: paths.Path) -> list[dict[str, Any]]:
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def curves_figure(runs: Sequence[report.Run]):
  """Training loss and validation Dice per run against the step, one colour per variant.

  A curve of at most MARKED_POINTS points has a marker on each, so a curve of one point (a single
  validation) shows. Runs without a `metrics.jsonl` are skipped. Returns the matplotlib figure
  (close it after use).
  """
  pyplot = _pyplot()
  figure, (loss_axes, dice_axes) = pyplot.subplots(1, 2, figsize=(10.0, 4.0))
  colours = {v: f"C{i % 10}" for i, v in enumerate(dict.fromkeys(r.variant for r in runs))}
  labelled = set()
  for run in runs:
    log = layout.metrics_file(run.path)
    if not log.exists():
      continue
    records = _read_jsonl(log)
    for axes, key in ((loss_axes, "loss"), (dice_axes, "val_dice")):
      points = [(r["step"], r[key]) for r in records if key in r and "step" in r]
      if points:
        steps, values = zip(*points)
        label = None if (axes, run.variant) in labelled else run.variant
        labelled.add((axes, run.variant))
        axes.plot(
          steps,
          values,
          color=colours[run.variant],
          label=label,
          linewidth=1,
          marker="o" if len(points) <= MARKED_POINTS else None,
          markersize=3,
          alpha=0.7,
        )
  loss_axes.set(xlabel="step", ylabel="training loss", title="training loss (one line per run)")
  dice_axes.set(xlabel="step", ylabel="validation Dice", title="validation Dice (one line per run)")
  for axes in (loss_axes, dice_axes):
    if axes.get_legend_handles_labels()[0]:
      axes.legend(fontsize=7)
  if not labelled:
    figure.suptitle("no run under the root has a metrics.jsonl with loss or val_dice")
  figure.tight_layout()
  return figure


def curves_plot(path: str | os.PathLike, runs: Sequence[report.Run]) -> None:
  """Writes `curves_figure(runs)` as a PNG to `path`."""
  figure = curves_figure(runs)
  _save(figure, path)
  _pyplot().close(figure)


def write_plots(
  root: str | os.PathLike, runs: Sequence[report.Run], result: dict[str, Any]
) -> list[str]:
  """Writes R/report_<metric>.png for each metric and R/curves.png; returns their paths."""
  groups = report.group_runs(runs, result["metrics"])
  variants = [row["variant"] for row in result["tables"][result["metrics"][0]]]
  root = paths.as_path(root)
  written = []
  for metric in result["metrics"]:
    values = {
      variant: np.concatenate([groups[variant][f].cases[metric] for f in sorted(groups[variant])])
      for variant in variants
    }
    path = root / f"report_{metric}.png"
    title = f"{metric} per case, split {result['split']} ({result['directions'][metric]})"
    case_plot(path, metric, values, title)
    written.append(str(path))
  path = root / "curves.png"
  curves_plot(path, runs)
  return [*written, str(path)]
