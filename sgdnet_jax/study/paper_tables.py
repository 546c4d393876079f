"""The paper's table layouts from a sweep report (`report --paper-tables`).

  tables = paper_tables(runs, result, baseline="cto", published=False)
  write(root, tables)  # R/paper_tables.md and R/paper_tables.tex

The main table (the paper's Table 1 for ISIC 2016 -> PH2, Table 2 for ISIC 2018, Table 3 for
CoNIC, chosen by the runs' split protocol and split): one row per method, each metric as mean ±
std over folds (Dice, IoU and PQ in percent, distances in pixels), significance against the
report's baseline; for ISIC 2018 also Params (M) and GMACs at 1x256x256 from `summary` of each
variant's recorded model. The ablation tables (Tables 4 and 5): their variants present in the
runs, against SGD-Net. Marks: `*` Holm-adjusted Wilcoxon p < 0.05 against the table's
reference, `†` |Δ| smaller than the seed spread (`sgdnet_jax.study.report`). With `published`,
the paper's numbers (`sgdnet_jax.study.published`) stand beside each measured column, and the
paper's methods this project does not train get rows of their own.
"""

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from typing import Any

from sgdnet_jax.core import paths
from sgdnet_jax.study import published, report
from sgdnet_jax.workdir import layout

ALPHA = 0.05
PERCENT = ("dice", "iou", "pq", "pq_dataset", "mpq_plus", "thresholded_jaccard")
MAIN_COLUMNS = ("dice", "iou", "hd95", "pq")
ABLATION_COLUMNS = ("dice", "iou", "hd95")
ABLATIONS = {
  "4": ("baseline", "sge_add", "sge_contmix", "sgdnet"),
  "5": ("sgdnet", "sgdc_self_guidance", "sgdc_no_local", "sgdc_no_dynamic"),
}
REFERENCE = "sgdnet"  # the ablation tables compare every row with SGD-Net
# split protocol -> dataset of the paper's tables
DATASETS = {
  "medi_seg_5fold": "isic2018",
  "shuffled_5fold": "isic2018",
  "all900": "isic2016",
  "holdout20": "isic2016",
  "grouped_712": "conic",
  "random_712": "conic",
}
SUMMARY_SIZE = 256  # the paper's Params/GFLOPs are at 1x256x256
COMPLEXITY = ("params_m", "gmacs")
HEADERS = {
  "dice": "Dice (%)",
  "iou": "IoU (%)",
  "hd95": "HD95 (px)",
  "pq": "PQ (%)",
  "params_m": "Params (M)",
  "gmacs": "GFLOPs",
}


@dataclasses.dataclass(frozen=True)
class Table:
  """One table: its title, columns (metric or complexity names), rows and notes."""

  key: str  # "1".."5", or "main" where the runs match no table of the paper
  title: str
  reference: str
  columns: tuple[str, ...]
  rows: tuple[dict[str, Any], ...]  # method, variant, cells {column: text}, paper {column: value}
  published: bool


def default_metrics(root: str | os.PathLike, split: str) -> tuple[str, ...]:
  """The report's default metrics: Dice, IoU, HD95, ASSD, and PQ (Table 3) when the first
  evaluation under `root` has it (CoNIC)."""
  root = paths.as_path(root)
  for depth in range(report.RUN_DEPTH + 1):
    pattern = "/".join(["*"] * depth + [layout.EVAL_DIR, f"{split}.json"])
    for found in sorted(root.glob(pattern), key=str):
      try:
        holds_pq = "pq" in json.loads(found.read_text())
      except json.JSONDecodeError:
        holds_pq = False  # load_runs names the broken file
      return (*report.DEFAULT_METRICS, "pq") if holds_pq else report.DEFAULT_METRICS
  return report.DEFAULT_METRICS


def main_table_key(runs: Sequence[report.Run]) -> str:
  """The paper's table the runs' dataset fills: "1" (PH2), "2", "3", or "main" (none)."""
  dataset = DATASETS.get(str(runs[0].protocol))
  if dataset == "isic2016":
    return "1" if runs[0].split == "ph2" else "main"
  return {"isic2018": "2", "conic": "3"}.get(dataset, "main")


def _metric_text(row: dict[str, Any], metric: str) -> str:
  scale = 100.0 if metric in PERCENT else 1.0
  if math.isnan(row["mean"]):
    return "–"
  text = f"{scale * row['mean']:.2f}"
  if not math.isnan(row["std"]):
    text += f" ± {scale * row['std']:.2f}"
  comparison = row["comparison"] or {}
  if comparison.get("p_holm") is not None and comparison["p_holm"] < ALPHA:
    text += "*"
  if comparison.get("within_seed_spread"):
    text += "†"
  return text


def _complexity(runs: Sequence[report.Run], variant: str) -> dict[str, str]:
  """Params (M) and paper-convention GMACs of the variant's recorded model at 256x256."""
  from sgdnet_jax.workdir import variables_io

  recorded = variables_io.load_config_dict(next(r.path for r in runs if r.variant == variant))
  if not recorded or "edge_branch" not in recorded.get("model", {}):
    return {}
  import ml_collections

  from sgdnet_jax.models import summary

  config = ml_collections.ConfigDict({"model": recorded["model"]})
  record = summary.summarize(config, SUMMARY_SIZE, compile_flops=False)
  return {
    "params_m": f"{record['trainable_params'] / 1e6:.2f}",
    "gmacs": f"{record['gmacs_paper']:.2f}",
  }


def _table(
  key: str,
  title: str,
  variants: Sequence[str],
  result: dict[str, Any],
  columns: Sequence[str],
  runs: Sequence[report.Run],
  *,
  paper_key: str,
  show_published: bool,
  complexity: bool,
) -> Table:
  """One table: the paper's rows of `paper_key` in its order (those measured, and with
  `show_published` those it alone has), then the measured variants the paper does not have."""
  paper_rows = published.TABLES[paper_key][2] if paper_key in published.TABLES else []
  named = {variant for _, variant, _ in paper_rows if variant}
  order = [
    (method, variant, values if show_published else {})
    for method, variant, values in paper_rows
    if variant in variants or (variant is None and show_published)
  ]
  order += [(v, v, {}) for v in variants if v not in named]
  rows = []
  for method, variant, values in order:
    cells = {}
    if variant is not None:
      for metric in columns:
        (row,) = [r for r in result["tables"][metric] if r["variant"] == variant]
        cells[metric] = _metric_text(row, metric)
      if complexity:
        cells.update(_complexity(runs, variant))
    name = method if variant is None or method == variant else f"{method} ({variant})"
    rows.append({"method": name, "variant": variant, "cells": cells, "paper": values})
  all_columns = (*COMPLEXITY, *columns) if complexity else tuple(columns)
  return Table(key, title, result["baseline"], all_columns, tuple(rows), show_published)


def paper_tables(
  runs: Sequence[report.Run],
  result: dict[str, Any],
  seed: int = 0,
  resamples: int = report.RESAMPLES,
  show_published: bool = False,
) -> list[Table]:
  """The main table and the ablation tables the runs fill; `result` is `report.compare`'s."""
  variants = [row["variant"] for row in result["tables"][result["metrics"][0]]]
  key = main_table_key(runs)
  ablation_only = {v for names in ABLATIONS.values() for v in names} - {REFERENCE}
  main_variants = [v for v in variants if v not in ablation_only]
  tables = []
  if main_variants:
    title = (
      published.TABLES[key][0]
      if key in published.TABLES
      else f"Methods on split `{result['split']}` (protocol {', '.join(result['protocols'])})"
    )
    columns = [m for m in MAIN_COLUMNS if m in result["metrics"]]
    tables.append(
      _table(
        key,
        title,
        main_variants,
        result,
        columns,
        runs,
        paper_key=key,
        show_published=show_published,
        complexity=key == "2",
      )
    )
  ablated = {k: [v for v in names if v in variants] for k, names in ABLATIONS.items()}
  if REFERENCE in variants and any(len(names) > 1 for names in ablated.values()):
    against = (
      result
      if result["baseline"] == REFERENCE
      else report.compare(runs, REFERENCE, seed, resamples)
    )
    columns = [m for m in ABLATION_COLUMNS if m in result["metrics"]]
    for k, names in ablated.items():
      if len(names) < 2:
        continue
      title = published.TABLES[k][0]
      if key != "2":
        title += f" (the layout; these runs are on split `{result['split']}`, not ISIC 2018)"
      tables.append(
        _table(
          k,
          title,
          names,
          against,
          columns,
          runs,
          paper_key=k,
          show_published=show_published and key == "2",
          complexity=False,
        )
      )
  return tables


def _paper_text(values: dict[str, float], column: str) -> str:
  return f"{values[column]:.2f}" if column in values else "–"


def _notes(tables: Sequence[Table], result: dict[str, Any]) -> list[str]:
  references = sorted({t.reference for t in tables if t.key in ("1", "2", "3", "main")})
  lines = [
    "- Each cell: mean ± sample standard deviation (ddof=1) over folds of the per-fold values"
    " (`report.md` has the per-fold values, the paired differences and their intervals); Dice,"
    " IoU and PQ in percent, HD95 in pixels at the evaluated resolution"
    f" ({result['resolution']}).",
    f"- `*`: Holm-adjusted two-sided Wilcoxon signed-rank p < {ALPHA} for the per-case"
    " differences against the table's reference: the report's baseline"
    f" ({', '.join(references) or result['baseline']}) in the main table, {REFERENCE} in the"
    " ablation tables. `†`: |Δ| is smaller than the seed spread, another seed could undo it.",
  ]
  if any("params_m" in t.columns for t in tables):
    lines.append(
      f"- Params (M): trainable parameters; GFLOPs: the paper's convention (multiply-accumulates"
      f" at 1x{SUMMARY_SIZE}x{SUMMARY_SIZE}), both from `summary` of each variant's recorded"
      " model (config.json); the paper also counts modules its code defines but never calls"
      " (README, Models)."
    )
  if any(t.published for t in tables):
    lines.append(
      "- paper: the number printed in the paper (sgdnet_jax/study/published.py); rows without"
      " measured values are methods this project does not train."
    )
  if "pq" in result["metrics"]:
    lines.append(
      "- PQ: per patch, then the mean over patches (the column `pq` of `<split>_cases.csv`);"
      " the paper does not state its aggregation (`pq_dataset` in eval/<split>.json pools the"
      " counts instead; docs/metrics.md)."
    )
  return lines


def format_markdown(tables: Sequence[Table], result: dict[str, Any]) -> str:
  """The tables as Markdown, then the notes."""
  lines = [f"# The paper's tables: split `{result['split']}`", ""]
  for table in tables:
    headers = ["method"]
    for column in table.columns:
      headers.append(HEADERS.get(column, column))
      if table.published:
        headers.append("paper")
    lines += [f"## {table.title}", "", "| " + " | ".join(headers) + " |"]
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    for row in table.rows:
      cells = [row["method"]]
      for column in table.columns:
        cells.append(row["cells"].get(column, "–"))
        if table.published:
          cells.append(_paper_text(row["paper"], column))
      lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
  lines += ["## Notes", "", *_notes(tables, result), ""]
  return "\n".join(lines)


def format_latex(tables: Sequence[Table]) -> str:
  """One booktabs tabular per table (needs \\usepackage{booktabs})."""
  lines = ["% The paper's tables; needs \\usepackage{booktabs}. Marks: see paper_tables.md."]
  for table in tables:
    headers = ["Method"]
    for column in table.columns:
      headers.append(report._tex(HEADERS.get(column, column)))
      if table.published:
        headers.append("Paper")
    lines += [
      f"% {report._tex(table.title)}",
      r"\begin{tabular}{l" + "r" * (len(headers) - 1) + "}",
      r"\toprule",
      " & ".join(headers) + r" \\",
      r"\midrule",
    ]
    for row in table.rows:
      cells = [report._tex(row["method"])]
      for column in table.columns:
        text = row["cells"].get(column, "--").replace("±", "$\\pm$").replace("–", "--")
        cells.append(text.replace("*", "$^*$").replace("†", "$^\\dagger$"))
        if table.published:
          cells.append(_paper_text(row["paper"], column).replace("–", "--"))
      lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
  return "\n".join(lines)


def write(root: str | os.PathLike, tables: Sequence[Table], result: dict[str, Any]) -> list[str]:
  """Writes R/paper_tables.md and R/paper_tables.tex; returns their paths."""
  root = paths.as_path(root)
  written = []
  for name, text in (
    ("paper_tables.md", format_markdown(tables, result)),
    ("paper_tables.tex", format_latex(tables)),
  ):
    paths.write_text_atomic(root / name, text)
    written.append(str(root / name))
  return written
