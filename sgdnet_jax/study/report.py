"""The report of an ablation sweep: per-variant statistics and paired comparisons with a baseline.

  runs = load_runs(root, "test", ("dice", "hd95"))
  result = compare(runs, baseline="cto", seed=0)
  write_tables(root, result)  # R/report.md, .csv, .json, .tex

Per variant and metric: the per-fold values (the metric as `evaluate` reported it in
`eval/<split>.json`; the mean over seeds where a fold has several), their mean and sample standard
deviation (ddof=1) over folds, the mean of the per-case values of all folds pooled, the number of
cases with a value and the seed spread (the standard deviation over seeds within a fold, pooled
over folds). Against the baseline: the per-case differences variant - baseline, matched by
fold and case id, with pairs holding a NaN on either side (a case the empty policy excluded)
dropped and counted; their mean, a 95 % percentile-bootstrap interval (seeded), the two-sided
Wilcoxon signed-rank p-value, the Holm-adjusted p-values across the variants compared, and
whether |mean difference| is smaller than the seed spread of the variant or the baseline (a
difference retraining with another seed could make). The root may be a local folder or a `gs://`
URL (`sgdnet_jax.core.paths`).
"""

import csv
import dataclasses
import io
import json
import math
import os
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from sgdnet_jax.core import errors, paths
from sgdnet_jax.workdir import layout

DEFAULT_METRICS = ("dice", "iou", "hd95", "assd")
RESAMPLES = 10_000
CONFIDENCE = 0.95
STD_DDOF = 1
HIGHER_IS_BETTER = ("dice", "iou", "thresholded_jaccard", "pq", "pq_dataset", "mpq_plus")
LOWER_IS_BETTER = ("hd", "hd95", "assd", "asd")
_FOLD = re.compile(r"fold(\d+)")
_SEED = re.compile(r"seed(\d+)")
# Runs are found at most this many folders below the root (`<variant>/fold<k>/seed<s>` is 3):
# one listing per depth, also in an object store, instead of a walk through every checkpoint.
RUN_DEPTH = 5


@dataclasses.dataclass(frozen=True)
class Run:
  """One evaluated workdir: its identity in the sweep and what its eval files hold."""

  variant: str
  fold: int
  seed: int | None
  path: str
  split: str  # as requested: eval/<split>.json
  split_name: str  # as the eval file names it (e.g. the config's test split)
  resolution: str
  protocol: str | None
  values: dict[str, float]  # metric -> the eval JSON's number
  conventions: dict[str, dict[str, str]]  # metric -> definition, empty_policy, per_case_column
  case_ids: tuple[str, ...]
  cases: dict[str, np.ndarray]  # metric -> per-case values in case_ids order (NaN = excluded)


@dataclasses.dataclass(frozen=True)
class FoldCases:
  """One variant on one fold, its seeds merged: the fold's values and per-case values."""

  runs: tuple[Run, ...]
  values: dict[str, float]
  case_ids: tuple[str, ...]
  cases: dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Incomplete:
  """A run under the sweep root that is unfinished or misses an output of its evaluation."""

  path: str
  variant: str | None  # None where neither its path nor its config.json tell
  fold: int | None
  seed: int | None
  missing: tuple[str, ...]  # e.g. ('eval/test.json', 'eval/test_cases.csv')

  def describe(self) -> str:
    return f"{self.path} (no {', '.join(self.missing)})"


def incomplete_runs(root: str | os.PathLike, split: str = "test") -> list[Incomplete]:
  """Every run under `root` (a folder with config.json or eval/<split>.json) whose evaluation
  JSON or per-case CSV is missing: training or its evaluation did not finish."""
  root = paths.as_path(root)
  marks = (layout.CONFIG_FILE, f"{layout.EVAL_DIR}/{split}.json")
  workdirs = {
    root.joinpath(*found.relative_to(root).parts[:depth])
    for depth in range(RUN_DEPTH + 1)
    for mark in marks
    for found in root.glob("/".join(["*"] * depth + [mark]))
  }
  found = []
  for workdir in sorted(workdirs, key=str):
    files = (layout.eval_json(layout.eval_dir(workdir), split),)
    files += (layout.eval_cases(layout.eval_dir(workdir), split),)
    missing = tuple(f"{layout.EVAL_DIR}/{f.name}" for f in files if not f.exists())
    if missing:
      try:
        config_path = layout.config_file(workdir)
        config = _read_json(config_path) if config_path.exists() else {}
        variant, fold, seed = _identity(root, workdir, config)
      except errors.UserError:
        variant = fold = seed = None
      found.append(Incomplete(str(workdir), variant, fold, seed, missing))
  return found


def load_runs(
  root: str | os.PathLike,
  split: str = "test",
  metrics: Sequence[str] = DEFAULT_METRICS,
  allow_incomplete: bool = False,
) -> list[Run]:
  """Every run under `root` with `eval/<split>.json`, sorted by variant, fold and seed.

  A run that is unfinished or misses an output (`incomplete_runs`) is refused, naming each,
  unless `allow_incomplete`: then it is left out (`compare` marks its cells).
  """
  root = paths.as_path(root)
  if not root.is_dir():
    raise errors.UserError(f"sweep root {root} is not a directory; pass --root R of a sweep")
  workdirs = sorted(
    {
      found.parent.parent
      for depth in range(RUN_DEPTH + 1)
      for found in root.glob("/".join(["*"] * depth + [layout.EVAL_DIR, f"{split}.json"]))
    },
    key=str,
  )
  if not workdirs:
    raise errors.UserError(
      f"no run under {root} has eval/{split}.json; run `evaluate --split {split}` in each"
      " workdir or pass the --split that was evaluated"
    )
  incomplete = incomplete_runs(root, split)
  if incomplete and not allow_incomplete:
    raise errors.UserError(
      f"{len(incomplete)} run(s) under {root} are unfinished or miss an output: "
      + "; ".join(i.describe() for i in incomplete)
      + f"; finish them (train, then evaluate --split {split}; `sweep --local` resumes them) or"
      " pass --allow-incomplete to report the others with these cells marked incomplete"
    )
  left_out = {i.path for i in incomplete}
  workdirs = [workdir for workdir in workdirs if str(workdir) not in left_out]
  if not workdirs:
    raise errors.UserError(
      f"no run under {root} has both eval/{split}.json and its per-case CSV; run `evaluate"
      f" --split {split}` in each workdir"
    )
  runs = [_load_run(root, workdir, split, metrics) for workdir in workdirs]
  seen = {}
  for run in runs:
    key = (run.variant, run.fold, run.seed)
    if key in seen:
      raise errors.UserError(
        f"runs {seen[key]} and {run.path} are both variant {run.variant} fold {run.fold}"
        f" seed {run.seed}; keep one of them under {root}"
      )
    seen[key] = run.path
  return sorted(runs, key=lambda r: (r.variant, r.fold, -1 if r.seed is None else r.seed))


def _read_json(path: paths.Path) -> Any:
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as error:
    raise errors.UserError(
      f"{path} is not valid JSON ({error}); re-run the step that wrote it"
    ) from None


def _identity(root: paths.Path, workdir: paths.Path, config: dict) -> tuple[str, int, int | None]:
  """(variant, fold, seed) from the path `<variant>/fold<k>[/seed<s>]`, else from config.json."""
  parts = workdir.relative_to(root).parts
  if len(parts) == 2 and _FOLD.fullmatch(parts[1]):
    return parts[0], int(parts[1][4:]), None
  if len(parts) == 3 and _FOLD.fullmatch(parts[1]) and _SEED.fullmatch(parts[2]):
    return parts[0], int(parts[1][4:]), int(parts[2][4:])
  try:
    return str(config["model"]["variant"]), int(config["data"]["fold"]), None
  except (KeyError, TypeError) as error:
    raise errors.UserError(
      f"cannot tell the variant and fold of run {workdir}: its path is not"
      f" <root>/<variant>/fold<k>[/seed<s>] and its config.json lacks {error}; move it there"
    ) from None


def _check_case_column(json_path: paths.Path, metric: str, convention: dict[str, str]):
  """UserError unless the eval JSON names the column of the per-case CSV that holds `metric`."""
  if "per_case_column" not in convention:
    raise errors.UserError(
      f"{json_path} names no per-case column for {metric} (conventions.{metric}.per_case_column);"
      " re-run evaluate to write it"
    )
  if not convention["per_case_column"]:
    raise errors.UserError(
      f"{json_path}: {metric} has no per-case values ({convention.get('definition')}); pass"
      f" --metrics without {metric}"
    )


def _load_run(root: paths.Path, workdir: paths.Path, split: str, metrics: Sequence[str]) -> Run:
  config_path = layout.config_file(workdir)
  config = _read_json(config_path) if config_path.exists() else {}
  variant, fold, seed = _identity(root, workdir, config)
  json_path = layout.eval_json(layout.eval_dir(workdir), split)
  result = _read_json(json_path)
  available = sorted(k for k, v in result.items() if isinstance(v, (int, float)) and k != "n_total")
  missing = [m for m in metrics if m not in available]
  if missing:
    raise errors.UserError(
      f"{json_path} has no metric {', '.join(missing)}; pass --metrics from {', '.join(available)}"
    )
  conventions = {}
  for metric in metrics:
    convention = dict(result.get("conventions", {}).get(metric, {}))
    _check_case_column(json_path, metric, convention)
    conventions[metric] = convention
  case_ids, cases = _read_cases(
    layout.eval_cases(layout.eval_dir(workdir), split),
    [c["per_case_column"] for c in conventions.values()],
  )
  return Run(
    variant=variant,
    fold=fold,
    seed=seed,
    path=str(workdir),
    split=split,
    split_name=str(result.get("split", split)),
    resolution=str(result.get("resolution", "unknown")),
    protocol=config.get("data", {}).get("protocol"),
    values={m: float(result[m]) for m in metrics},
    conventions=conventions,
    case_ids=case_ids,
    cases={m: cases[conventions[m]["per_case_column"]] for m in metrics},
  )


def _read_cases(
  path: paths.Path, columns: Sequence[str]
) -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
  rows = list(csv.DictReader(io.StringIO(path.read_text(), newline="")))
  fields = list(rows[0]) if rows else []
  missing = [c for c in ("case_id", *columns) if c not in fields]
  if missing:
    raise errors.UserError(
      f"{path} has no column {', '.join(missing)}; re-run evaluate to write the per-case values"
    )
  case_ids = tuple(row["case_id"] for row in rows)
  if len(set(case_ids)) != len(case_ids):
    raise errors.UserError(f"{path} lists a case id twice; re-run evaluate")
  values = {c: np.asarray([float(row[c] or "nan") for row in rows]) for c in columns}
  return case_ids, values


def _merge_seeds(runs: Sequence[Run], metrics: Sequence[str]) -> FoldCases:
  """A fold's value is the mean over its seeds; per-case values are averaged over seeds too."""
  first = runs[0]
  for run in runs[1:]:
    if set(run.case_ids) != set(first.case_ids):
      raise errors.UserError(
        f"runs {first.path} and {run.path} (variant {run.variant}, fold {run.fold}) were"
        " evaluated on different cases; evaluate both on the same split"
      )
  cases = {}
  for metric in metrics:
    stacked = np.stack([_aligned(run, metric, first.case_ids) for run in runs])
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)  # A case every seed excluded stays NaN.
      cases[metric] = np.nanmean(stacked, axis=0)
  values = {m: float(np.mean([run.values[m] for run in runs])) for m in metrics}
  return FoldCases(tuple(runs), values, first.case_ids, cases)


def _aligned(run: Run, metric: str, case_ids: Sequence[str]) -> np.ndarray:
  index = {case_id: i for i, case_id in enumerate(run.case_ids)}
  return run.cases[metric][[index[c] for c in case_ids]]


def group_runs(runs: Sequence[Run], metrics: Sequence[str]) -> dict[str, dict[int, FoldCases]]:
  """variant -> fold -> the fold's merged seeds."""
  by_key: dict[tuple[str, int], list[Run]] = {}
  for run in runs:
    by_key.setdefault((run.variant, run.fold), []).append(run)
  groups: dict[str, dict[int, FoldCases]] = {}
  for (variant, fold), fold_runs in sorted(by_key.items()):
    groups.setdefault(variant, {})[fold] = _merge_seeds(fold_runs, metrics)
  return groups


def paired_differences(
  variant: dict[int, FoldCases], baseline: dict[int, FoldCases], metric: str
) -> tuple[np.ndarray, int, list[int]]:
  """variant - baseline per case on the folds both have, NaN pairs dropped.

  Returns:
    the differences (fold by fold, in the baseline's case order), the number of pairs dropped
    for a NaN on either side, and the folds compared.
  """
  folds = sorted(set(variant) & set(baseline))
  differences = []
  for fold in folds:
    ours, theirs = variant[fold], baseline[fold]
    if set(ours.case_ids) != set(theirs.case_ids):
      only_ours = len(set(ours.case_ids) - set(theirs.case_ids))
      only_theirs = len(set(theirs.case_ids) - set(ours.case_ids))
      raise errors.UserError(
        f"runs {ours.runs[0].path} and {theirs.runs[0].path} (fold {fold}) were evaluated on"
        f" different cases ({only_ours} only in the first, {only_theirs} only in the second);"
        " evaluate both on the same split and protocol"
      )
    index = {case_id: i for i, case_id in enumerate(ours.case_ids)}
    ours_aligned = ours.cases[metric][[index[c] for c in theirs.case_ids]]
    differences.append(ours_aligned - theirs.cases[metric])
  pooled = np.concatenate(differences) if differences else np.zeros(0)
  kept = pooled[~np.isnan(pooled)]
  return kept, int(pooled.size - kept.size), folds


def bootstrap_ci(
  differences: np.ndarray,
  seed: int = 0,
  resamples: int = RESAMPLES,
  confidence: float = CONFIDENCE,
) -> tuple[float, float]:
  """Percentile bootstrap interval of the mean: `resamples` draws of n pairs with replacement.

  The draws are `np.random.default_rng(seed).integers(0, n, size=(resamples, n))`, made in row
  blocks to bound memory (the same numbers as one call).
  """
  n = differences.size
  if n == 0:
    return math.nan, math.nan
  rng = np.random.default_rng(seed)
  rows = max(1, 2**22 // n)
  means = np.concatenate(
    [
      differences[rng.integers(0, n, size=(min(rows, resamples - start), n))].mean(axis=1)
      for start in range(0, resamples, rows)
    ]
  )
  tail = 100 * (1 - confidence) / 2
  low, high = np.percentile(means, [tail, 100 - tail])
  return float(low), float(high)


def wilcoxon_p(differences: np.ndarray) -> float:
  """Two-sided Wilcoxon signed-rank p-value (scipy defaults: zero differences dropped)."""
  if not np.any(differences != 0):
    return math.nan
  from scipy import stats  # Only the report needs scipy.stats; keep the import local.

  return float(stats.wilcoxon(differences).pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
  """Holm step-down adjusted p-values; NaN entries stay NaN and do not count in m."""
  p = np.asarray(p_values, np.float64)
  adjusted = np.full(p.shape, np.nan)
  finite = np.flatnonzero(np.isfinite(p))
  running = 0.0
  for rank, i in enumerate(finite[np.argsort(p[finite], kind="stable")]):
    running = max(running, min(1.0, (finite.size - rank) * p[i]))
    adjusted[i] = running
  return adjusted.tolist()


def direction(metric: str) -> str:
  if metric in HIGHER_IS_BETTER:
    return "higher is better"
  if metric in LOWER_IS_BETTER:
    return "lower is better"
  return "direction not known"


def _consistent(runs: Sequence[Run], describe, what: str) -> Any:
  """The one value `describe(run)` takes over all runs, else a UserError naming two runs."""
  first = runs[0]
  for run in runs[1:]:
    if describe(run) != describe(first):
      raise errors.UserError(
        f"runs {first.path} and {run.path} differ in {what} ({describe(first)!r} vs"
        f" {describe(run)!r}); evaluate every run the same way"
      )
  return describe(first)


def compare(
  runs: Sequence[Run],
  baseline: str = "cto",
  seed: int = 0,
  resamples: int = RESAMPLES,
  incomplete: Sequence[Incomplete] = (),
) -> dict[str, Any]:
  """The report as a JSON-ready dict (NaN where a number does not exist).

  `incomplete` (runs `load_runs` left out) marks the rows of their variants incomplete, and
  their folds as missing where no finished run has the fold."""
  metrics = list(runs[0].values)
  groups = group_runs(runs, metrics)
  if baseline not in groups:
    raise errors.UserError(
      f"baseline variant {baseline!r} has no evaluated runs under the sweep root; pass"
      f" --baseline with one of: {', '.join(groups)}"
    )
  folds = sorted({run.fold for run in runs} | {i.fold for i in incomplete if i.fold is not None})
  conventions = {
    m: _consistent(runs, lambda r, m=m: r.conventions[m], f"the {m} convention") for m in metrics
  }
  variants = [baseline] + [v for v in groups if v != baseline]
  tables = {}
  for metric in metrics:
    rows = [_variant_row(v, groups[v], folds, metric) for v in variants]
    for row in rows:
      row["incomplete_runs"] = [i.path for i in incomplete if i.variant == row["variant"]]
    for row in rows[1:]:
      row["comparison"] = _comparison(
        groups[row["variant"]], groups[baseline], metric, seed, resamples
      )
      row["comparison"].update(_against_seed_spread(row, rows[0]))
    adjusted = holm([row["comparison"]["p_wilcoxon"] for row in rows[1:]])
    for row, p in zip(rows[1:], adjusted):
      row["comparison"]["p_holm"] = p
    tables[metric] = rows
  return {
    "split": runs[0].split,
    "split_name": _consistent(runs, lambda r: r.split_name, "the evaluated split"),
    "resolution": _consistent(runs, lambda r: r.resolution, "the evaluation resolution"),
    "protocols": sorted({str(run.protocol) for run in runs}),
    "baseline": baseline,
    "metrics": metrics,
    "directions": {m: direction(m) for m in metrics},
    "folds": folds,
    "seed": seed,
    "resamples": resamples,
    "confidence": CONFIDENCE,
    "std_ddof": STD_DDOF,
    "conventions": conventions,
    "runs": [{"variant": r.variant, "fold": r.fold, "seed": r.seed, "path": r.path} for r in runs],
    "tables": tables,
    "incomplete_runs": [dataclasses.asdict(i) for i in incomplete],
  }


def seed_spread(fold_cases: dict[int, FoldCases], metric: str) -> tuple[float, dict[str, float]]:
  """The standard deviation (ddof=1) over seeds of a fold's values, pooled and per fold.

  Only folds with several seeds have one. Pooled: the square root of their variances averaged
  with their degrees of freedom (seeds - 1) as weights; NaN when no fold has several seeds.
  """
  per_fold, weighted_variances, degrees_of_freedom = {}, 0.0, 0
  for fold in sorted(fold_cases):
    values = [run.values[metric] for run in fold_cases[fold].runs]
    if len(values) > STD_DDOF:
      variance = float(np.var(values, ddof=STD_DDOF))
      per_fold[str(fold)] = math.sqrt(variance)
      weighted_variances += (len(values) - STD_DDOF) * variance
      degrees_of_freedom += len(values) - STD_DDOF
  if not degrees_of_freedom:
    return math.nan, per_fold
  return math.sqrt(weighted_variances / degrees_of_freedom), per_fold


def _variant_row(
  variant: str, fold_cases: dict[int, FoldCases], folds: Sequence[int], metric: str
) -> dict[str, Any]:
  per_fold = [fold_cases[f].values[metric] for f in sorted(fold_cases)]
  pooled = np.concatenate([fold_cases[f].cases[metric] for f in sorted(fold_cases)])
  used = pooled[~np.isnan(pooled)]
  seed_std, seed_std_folds = seed_spread(fold_cases, metric)
  return {
    "variant": variant,
    "folds": {str(f): fold_cases[f].values[metric] if f in fold_cases else math.nan for f in folds},
    "missing_folds": [f for f in folds if f not in fold_cases],
    "seeds_per_fold": {str(f): len(fold_cases[f].runs) for f in sorted(fold_cases)},
    "mean": float(np.mean(per_fold)),
    "std": float(np.std(per_fold, ddof=STD_DDOF)) if len(per_fold) > STD_DDOF else math.nan,
    "case_mean": float(used.mean()) if used.size else math.nan,
    "n_cases": int(used.size),
    "n_total": int(pooled.size),
    "seed_std": seed_std,
    "seed_std_folds": seed_std_folds,
    "comparison": None,
  }


def _comparison(
  variant: dict[int, FoldCases],
  baseline: dict[int, FoldCases],
  metric: str,
  seed: int,
  resamples: int,
) -> dict[str, Any]:
  differences, dropped, folds = paired_differences(variant, baseline, metric)
  low, high = bootstrap_ci(differences, seed, resamples)
  return {
    "folds": folds,
    "n_pairs": int(differences.size),
    "n_dropped": dropped,
    "mean_difference": float(differences.mean()) if differences.size else math.nan,
    "ci_low": low,
    "ci_high": high,
    "p_wilcoxon": wilcoxon_p(differences),
  }


def _against_seed_spread(row: dict[str, Any], baseline_row: dict[str, Any]) -> dict[str, Any]:
  """The larger seed std of the variant and the baseline, and whether |Δ| is below it."""
  spreads = [r["seed_std"] for r in (row, baseline_row) if not math.isnan(r["seed_std"])]
  difference = row["comparison"]["mean_difference"]
  if not spreads or math.isnan(difference):
    return {"seed_spread": max(spreads, default=math.nan), "within_seed_spread": None}
  return {"seed_spread": max(spreads), "within_seed_spread": abs(difference) < max(spreads)}


# --- Tables ---------------------------------------------------------------------------------


def _value(x: float) -> str:
  return "–" if x is None or math.isnan(x) else f"{x:.4f}"


def _p(x: float) -> str:
  return "–" if x is None or math.isnan(x) else f"{x:.3g}"


def _status(row: dict[str, Any], baseline: str) -> str:
  parts = ["baseline"] if row["variant"] == baseline else []
  missing, unfinished = row["missing_folds"], row.get("incomplete_runs", [])
  if missing:
    parts.append(
      f"incomplete: missing fold{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))}"
    )
  if unfinished:
    parts.append(f"incomplete: {len(unfinished)} unfinished run{'s' * (len(unfinished) > 1)}")
  if not missing and not unfinished:
    parts.append("complete")
  seeds = sorted(set(row["seeds_per_fold"].values()))
  if seeds != [1]:
    parts.append(f"seeds per fold: {'/'.join(map(str, seeds))}")
  if (row["comparison"] or {}).get("within_seed_spread"):
    parts.append(r"\|Δ\| < seed std")  # Escaped: a bare | ends a Markdown table cell.
  return "; ".join(parts)


def _cells(row: dict[str, Any], result: dict[str, Any]) -> list[str]:
  comparison = row["comparison"] or {}
  return [
    f"{_value(row['mean'])} ± {_value(row['std'])}",
    *[
      "missing" if f in row["missing_folds"] else _value(row["folds"][str(f)])
      for f in result["folds"]
    ],
    _value(row["case_mean"]),
    f"{row['n_cases']}/{row['n_total']}",
    _value(row["seed_std"]),
    _value(comparison.get("mean_difference", math.nan)),
    (f"[{_value(comparison['ci_low'])}, {_value(comparison['ci_high'])}]" if comparison else "–"),
    _p(comparison.get("p_wilcoxon", math.nan)),
    _p(comparison.get("p_holm", math.nan)),
    str(comparison["n_pairs"]) if comparison else "–",
    str(comparison["n_dropped"]) if comparison else "–",
    _status(row, result["baseline"]),
  ]


def _headers(result: dict[str, Any]) -> list[str]:
  return [
    "variant",
    "mean ± std (folds)",
    *[f"fold {f}" for f in result["folds"]],
    "mean (cases)",
    "cases",
    "seed std",
    f"Δ = variant − {result['baseline']}",
    f"{round(100 * result['confidence'])}% CI",
    "p (Wilcoxon)",
    "p (Holm)",
    "pairs",
    "dropped",
    "status",
  ]


def _footer(result: dict[str, Any]) -> list[str]:
  compared = len(result["tables"][result["metrics"][0]]) - 1
  lines = [
    "- mean ± std (folds): mean and sample standard deviation (ddof=1) over folds of the per-fold"
    f" values; fold k: the metric in `<run>/eval/{result['split']}.json` (the mean over seeds"
    " where a fold has several).",
    "- mean (cases): mean of the per-case values of all folds pooled; cases: cases with a value /"
    " all cases (a case the empty policy excluded has no value).",
    "- seed std: sample standard deviation (ddof=1) over seeds of a fold's values, pooled over the"
    " folds with several seeds (square root of their variances averaged with weights seeds − 1);"
    " – where every fold has one seed. It is how much retraining with another seed moves the"
    " metric; the CI and p-values below treat the trained models as fixed and leave it out.",
    f"- Δ = variant − {result['baseline']}: mean of the per-case differences, matched by fold and"
    " case id on the folds both have; a pair with no value on either side (excluded by the empty"
    " policy) is dropped and counted under dropped, the rest are the pairs. Where higher is"
    " better (Dice, IoU) Δ > 0 is an improvement; where lower is better (HD95, ASSD: distances)"
    " Δ < 0 is. Status `|Δ| < seed std`: |Δ| is smaller than the larger seed std of the variant"
    " and the baseline, so another seed could undo the difference however small p is.",
    f"- {round(100 * result['confidence'])}% CI: percentile bootstrap of the mean difference,"
    f" {result['resamples']} resamples of the pairs, numpy default_rng seed {result['seed']}.",
    "- p (Wilcoxon): two-sided Wilcoxon signed-rank test of the paired differences"
    " (scipy.stats.wilcoxon, zero differences dropped); p (Holm): Holm-adjusted across the"
    f" {compared} variant{'s' if compared != 1 else ''} compared, per metric.",
    f"- Split protocol: {', '.join(result['protocols'])} (config.json data.protocol); split"
    f" `{result['split']}` (the eval files name it `{result['split_name']}`); evaluated at"
    f" {result['resolution']}.",
    "- Metric conventions (from the eval files):",
  ]
  for metric, convention in result["conventions"].items():
    lines.append(
      f"  - {metric} ({result['directions'][metric]}; per-case column"
      f" `{convention['per_case_column']}`): {convention.get('definition', 'not stated')}."
      f" Empty: {convention.get('empty_policy', 'not stated')}."
    )
  return lines


def format_markdown(result: dict[str, Any]) -> str:
  """The report as Markdown: one table per metric, then the footer."""
  lines = [f"# Ablation report: split `{result['split']}`, baseline `{result['baseline']}`", ""]
  if result.get("incomplete_runs"):
    lines += [
      f"**Incomplete**: {len(result['incomplete_runs'])} run(s) unfinished or missing an output,"
      " left out (`--allow-incomplete`): "
      + "; ".join(
        f"`{i['path']}` (no {', '.join(i['missing'])})" for i in result["incomplete_runs"]
      ),
      "",
    ]
  headers = _headers(result)
  for metric in result["metrics"]:
    lines += [f"## {metric} ({result['directions'][metric]})", ""]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    for row in result["tables"][metric]:
      lines.append("| " + " | ".join([row["variant"], *_cells(row, result)]) + " |")
    lines.append("")
  lines += ["## Notes", "", *_footer(result), ""]
  return "\n".join(lines)


ROW_FIELDS = ("mean", "std", "case_mean", "n_cases", "n_total", "seed_std")
COMPARISON_FIELDS = (
  "mean_difference", "ci_low", "ci_high", "p_wilcoxon", "p_holm", "n_pairs", "n_dropped",
  "seed_spread", "within_seed_spread",
)  # fmt: skip
CSV_FIELDS = (
  "metric", "variant", "is_baseline", "complete", "missing_folds", *ROW_FIELDS,
  *COMPARISON_FIELDS,
)  # fmt: skip


def format_csv(result: dict[str, Any]) -> str:
  """One row per (metric, variant), full precision; the per-fold values as fold<k> columns."""
  table = io.StringIO()
  fold_fields = [f"fold{f}" for f in result["folds"]]
  writer = csv.DictWriter(table, [*CSV_FIELDS, *fold_fields], lineterminator="\n")
  writer.writeheader()
  for metric in result["metrics"]:
    for row in result["tables"][metric]:
      comparison = row["comparison"] or {}
      writer.writerow(
        {
          "metric": metric,
          "variant": row["variant"],
          "is_baseline": row["variant"] == result["baseline"],
          "complete": not row["missing_folds"] and not row.get("incomplete_runs"),
          "missing_folds": " ".join(map(str, row["missing_folds"])),
          **{k: row[k] for k in ROW_FIELDS},
          **{k: comparison.get(k, "") for k in COMPARISON_FIELDS},
          **{f"fold{f}": row["folds"][str(f)] for f in result["folds"]},
        }
      )
  return table.getvalue()


def _tex(text: str) -> str:
  return text.replace("\\", r"\textbackslash{}").replace("_", r"\_").replace("%", r"\%")


def format_latex(result: dict[str, Any]) -> str:
  """One booktabs tabular per metric (needs \\usepackage{booktabs})."""
  baseline = _tex(result["baseline"])
  lines = [f"% Ablation report, split {_tex(result['split'])}; needs \\usepackage{{booktabs}}."]
  for metric in result["metrics"]:
    folds = result["folds"]
    lines += [
      f"% {metric}: {result['directions'][metric]}; std over folds and seed std with ddof=1;"
      f" Delta = variant - {baseline}, {round(100 * result['confidence'])}\\% bootstrap CI,"
      " Wilcoxon and Holm p.",
      r"\begin{tabular}{l" + "r" * (len(folds) + 7) + "}",
      r"\toprule",
      " & ".join(
        [
          "Variant",
          r"Mean $\pm$ std",
          *[f"Fold {f}" for f in folds],
          "Case mean",
          "Seed std",
          rf"$\Delta$ vs {baseline}",
          "95\\% CI",
          "$p$",
          "$p_\\mathrm{Holm}$",
        ]
      )
      + r" \\",
      r"\midrule",
    ]
    for row in result["tables"][metric]:
      comparison = row["comparison"] or {}
      incomplete = row["missing_folds"] or row.get("incomplete_runs")
      name = _tex(row["variant"]) + ("$^*$" if incomplete else "")
      ci = (
        f"[{_value(comparison['ci_low'])}, {_value(comparison['ci_high'])}]" if comparison else "--"
      )
      mark = "$^\\dagger$" if comparison.get("within_seed_spread") else ""
      cells = [
        name,
        rf"{_value(row['mean'])} $\pm$ {_value(row['std'])}",
        *[_value(row["folds"][str(f)]) for f in folds],
        _value(row["case_mean"]),
        _value(row["seed_std"]),
        _value(comparison.get("mean_difference", math.nan)) + mark,
        ci,
        _p(comparison.get("p_wilcoxon", math.nan)),
        _p(comparison.get("p_holm", math.nan)),
      ]
      lines.append(" & ".join(cells).replace("–", "--") + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
  lines.append("% $^*$: incomplete, a fold is missing (see report.md).")
  lines.append(
    "% $^\\dagger$: |Delta| is smaller than the seed std of the variant or the baseline."
  )
  return "\n".join(lines) + "\n"


def json_ready(value: Any) -> Any:
  """`value` with every NaN (a number that does not exist) as None, for strict JSON."""
  if isinstance(value, float) and math.isnan(value):
    return None
  if isinstance(value, dict):
    return {k: json_ready(v) for k, v in value.items()}
  if isinstance(value, list):
    return [json_ready(v) for v in value]
  return value


def write_tables(root: str | os.PathLike, result: dict[str, Any]) -> list[str]:
  """Writes R/report.md, .csv, .json and .tex; returns their paths."""
  contents = {
    "report.md": format_markdown(result),
    "report.csv": format_csv(result),
    "report.json": json.dumps(json_ready(result), indent=2) + "\n",
    "report.tex": format_latex(result),
  }
  root = paths.as_path(root)
  written = []
  for name, text in contents.items():
    paths.write_text_atomic(root / name, text)
    written.append(str(root / name))
  return written
