"""The sweep report (`sgdnet_jax.study`, `report` command) on hand-made eval folders.

Every number is recomputed here directly with numpy / scipy from the per-case values the test
wrote; the Markdown of a fixed sweep is compared with tests/data/report_expected.md.
"""

import csv
import errno
import json
import math
import os
import pathlib
import re

import ml_collections
import numpy as np
import pytest
from PIL import Image
from scipy import stats

from sgdnet_jax import main, metrics
from sgdnet_jax.core import errors, paths
from sgdnet_jax.study import plots, report

VARIANTS = ("cto", "sgdnet", "sge_add")
FOLDS = (0, 1, 2)
CASES_PER_FOLD = 8
METRICS = ("dice", "iou", "hd95", "assd")
EXPECTED_MARKDOWN = pathlib.Path(__file__).parent / "data" / "report_expected.md"
# Hand-written conventions, so that the expected Markdown does not follow edits of the metric
# definitions; `test_the_per_case_column_is_the_one_the_eval_json_names` uses the real ones.
CONVENTIONS = {
  "dice": {
    "definition": "Dice per image, mean",
    "empty_policy": "both empty -> 1",
    "per_case_column": "dice",
  },
  "iou": {
    "definition": "IoU per image, mean",
    "empty_policy": "both empty -> 1",
    "per_case_column": "iou",
  },
  "hd95": {
    "definition": "95th percentile (linear interpolation) of the pooled distances",
    "empty_policy": "both empty -> excluded",
    "per_case_column": "hd95_pooled",
  },
  "assd": {
    "definition": "mean pooled distance",
    "empty_policy": "both empty -> excluded",
    "per_case_column": "assd",
  },
}
# Cases excluded by the distance empty policy: (variant, fold, case index).
NAN_HD95 = {("cto", 0, 5), ("sgdnet", 1, 2)}


def sweep_values() -> dict[tuple[str, int], dict[str, np.ndarray]]:
  """Seeded per-case values: (variant, fold) -> column -> (CASES_PER_FOLD,) values."""
  rng = np.random.default_rng(1234)
  shift = {"cto": 0.0, "sgdnet": 0.04, "sge_add": 0.01}
  values = {}
  for fold in FOLDS:
    dice = rng.uniform(0.6, 0.9, CASES_PER_FOLD)
    hd95 = rng.uniform(5.0, 40.0, CASES_PER_FOLD)
    for variant in VARIANTS:
      noise = rng.normal(0.0, 0.03, (3, CASES_PER_FOLD))
      own_dice = np.clip(dice + shift[variant] + noise[0], 0.0, 1.0).round(4)
      own_hd95 = np.maximum(hd95 * (1 - 3 * shift[variant]) + 5 * noise[1], 0.0).round(3)
      for v, f, i in NAN_HD95:
        if (v, f) == (variant, fold):
          own_hd95[i] = np.nan
      values[variant, fold] = {
        "dice": own_dice,
        "iou": (own_dice / (2 - own_dice)).round(4),
        "hd95_pooled": own_hd95,
        "hd95_max_directed": (3 * own_hd95 + 1).round(3),  # Wrong column: would change numbers.
        "assd": (own_hd95 / 4 + noise[2]).round(3),
      }
  return values


def case_ids(fold: int) -> list[str]:
  return [f"isic_{fold}{i:02d}" for i in range(CASES_PER_FOLD)]


def write_run(
  workdir: pathlib.Path,
  variant: str,
  fold: int,
  columns: dict[str, np.ndarray],
  ids: list[str],
  conventions: dict = CONVENTIONS,
) -> None:
  """A run workdir as `train` + `evaluate` leave it: config.json, metrics.jsonl, eval/; each
  metric's value is the mean of the column its convention names."""
  (workdir / "eval").mkdir(parents=True)
  config = {"model": {"variant": variant}, "data": {"fold": fold, "protocol": "medi_seg_5fold"}}
  (workdir / "config.json").write_text(json.dumps(config))
  (workdir / "metrics.jsonl").write_text(
    "".join(
      json.dumps({"step": step, "loss": 1.0 / step, **({"val_dice": 0.5} if step % 2 else {})})
      + "\n"
      for step in range(1, 6)
    )
  )
  per_metric = {m: columns[conventions[m]["per_case_column"]] for m in METRICS}
  result = {"split": "test_fold", "resolution": "256x256", "n_total": len(ids)}
  result.update({m: float(np.nanmean(v)) for m, v in per_metric.items()})
  result["conventions"] = conventions
  result["cases"] = {
    m: {
      "n_used": int(np.sum(~np.isnan(v))),
      "n_total": len(ids),
      "n_excluded": int(np.sum(np.isnan(v))),
    }
    for m, v in per_metric.items()
  }
  (workdir / "eval" / "test.json").write_text(json.dumps(result, indent=2))
  with open(workdir / "eval" / "test_cases.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["case_id", "tp", *columns])
    writer.writerows(
      [i, 100, *(repr(float(c[n])) for c in columns.values())] for n, i in enumerate(ids)
    )


def make_sweep(root: pathlib.Path, skip: tuple = ()) -> dict:
  values = sweep_values()
  for (variant, fold), columns in values.items():
    if (variant, fold) not in skip:
      write_run(root / variant / f"fold{fold}", variant, fold, columns, case_ids(fold))
  return values


def close(expected, values) -> pytest.approx:
  """`expected` up to float64 rounding in a mean or std of `values` (summation order, alignment)."""
  values = np.asarray(values)
  tolerance = values.size * np.finfo(np.float64).eps * np.nanmax(np.abs(values))
  return pytest.approx(expected, rel=0, abs=tolerance)


def holm_by_hand(p_values: list[float]) -> list[float]:
  """Holm: sorted ascending, running max of (m - k) p_(k), capped at 1."""
  p = np.asarray(p_values)
  order = np.argsort(p)
  adjusted_sorted = np.minimum(1.0, np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order]))
  adjusted = np.empty_like(p)
  adjusted[order] = adjusted_sorted
  return adjusted.tolist()


def test_every_number_matches_numpy_and_scipy(tmp_path):
  values = make_sweep(tmp_path)
  result = report.compare(report.load_runs(str(tmp_path), "test", METRICS), "cto", seed=3)
  assert [row["variant"] for row in result["tables"]["dice"]] == list(VARIANTS)
  column = {"dice": "dice", "iou": "iou", "hd95": "hd95_pooled", "assd": "assd"}
  for metric in METRICS:
    rows = {row["variant"]: row for row in result["tables"][metric]}
    pooled = {v: np.concatenate([values[v, f][column[metric]] for f in FOLDS]) for v in VARIANTS}
    p_values = []
    for variant in VARIANTS:
      row = rows[variant]
      fold_means = [np.nanmean(values[variant, f][column[metric]]) for f in FOLDS]
      assert [row["folds"][str(f)] for f in FOLDS] == fold_means
      assert row["mean"] == close(np.mean(fold_means), fold_means)
      assert row["std"] == close(np.std(fold_means, ddof=1), fold_means)
      assert row["case_mean"] == close(np.nanmean(pooled[variant]), pooled[variant])
      assert (row["n_cases"], row["n_total"]) == (
        np.sum(~np.isnan(pooled[variant])),
        len(FOLDS) * CASES_PER_FOLD,
      )
      assert math.isnan(row["seed_std"]) and row["seed_std_folds"] == {}  # one seed per fold
      if variant == "cto":
        assert row["comparison"] is None
        continue
      difference = pooled[variant] - pooled["cto"]
      kept = difference[~np.isnan(difference)]
      comparison = row["comparison"]
      assert comparison["n_dropped"] == np.sum(np.isnan(difference))
      assert comparison["n_pairs"] == kept.size
      assert comparison["mean_difference"] == close(kept.mean(), kept)
      draws = np.random.default_rng(3).integers(0, kept.size, size=(10_000, kept.size))
      low, high = np.percentile(kept[draws].mean(axis=1), [2.5, 97.5])
      assert (comparison["ci_low"], comparison["ci_high"]) == close((low, high), kept)
      assert comparison["p_wilcoxon"] == stats.wilcoxon(kept).pvalue
      assert comparison["within_seed_spread"] is None
      p_values.append(comparison["p_wilcoxon"])
    adjusted = [rows[v]["comparison"]["p_holm"] for v in VARIANTS[1:]]
    assert adjusted == pytest.approx(holm_by_hand(p_values), rel=1e-15)
  # The excluded HD95 cases are dropped from the comparisons and counted.
  hd95 = {row["variant"]: row for row in result["tables"]["hd95"]}
  assert hd95["sgdnet"]["comparison"]["n_dropped"] == 2
  assert hd95["sge_add"]["comparison"]["n_dropped"] == 1
  assert hd95["sgdnet"]["n_cases"] == len(FOLDS) * CASES_PER_FOLD - 1


def test_bootstrap_is_reproducible_for_a_seed_and_changes_with_it():
  differences = np.random.default_rng(0).normal(0.02, 0.05, 300)
  draws = np.random.default_rng(5).integers(0, 300, size=(10_000, 300))
  expected = tuple(np.percentile(differences[draws].mean(axis=1), [2.5, 97.5]))
  assert report.bootstrap_ci(differences, seed=5) == close(expected, differences)
  assert report.bootstrap_ci(differences, seed=5) == close(
    report.bootstrap_ci(differences, seed=5), differences
  )
  assert report.bootstrap_ci(differences, seed=6) != close(expected, differences)


def test_holm_on_a_worked_example():
  # m = 4, sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, max(0.06, 0.04).
  adjusted = report.holm([0.01, 0.04, 0.03, 0.005, math.nan])
  assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02], rel=1e-15)
  assert math.isnan(adjusted[4])


def test_markdown_of_a_fixed_sweep_matches_the_expected_file(tmp_path):
  make_sweep(tmp_path, skip=(("sge_add", 2),))
  result = report.compare(report.load_runs(str(tmp_path), "test", METRICS), "cto")
  assert report.format_markdown(result) == EXPECTED_MARKDOWN.read_text()


def test_missing_fold_marks_the_row_incomplete(tmp_path):
  values = make_sweep(tmp_path, skip=(("sge_add", 2),))
  result = report.compare(report.load_runs(str(tmp_path), "test", ("dice",)), "cto")
  row = result["tables"]["dice"][2]
  assert (row["variant"], row["missing_folds"]) == ("sge_add", [2])
  fold_means = [np.mean(values["sge_add", f]["dice"]) for f in (0, 1)]
  assert row["mean"] == close(np.mean(fold_means), fold_means)
  assert row["comparison"]["folds"] == [0, 1]
  assert row["comparison"]["n_pairs"] == 2 * CASES_PER_FOLD
  assert "| sge_add |" in report.format_markdown(result)
  assert "incomplete: missing fold 2 |" in report.format_markdown(result)
  assert "incomplete" not in report.format_markdown(result).split("| sgdnet |")[1].split("\n")[0]


def test_different_case_sets_for_a_fold_name_both_runs(tmp_path):
  values = make_sweep(tmp_path, skip=(("sgdnet", 1),))
  ids = case_ids(1)
  ids[3] = "isic_other"
  write_run(tmp_path / "sgdnet" / "fold1", "sgdnet", 1, values["sgdnet", 1], ids)
  runs = report.load_runs(str(tmp_path), "test", METRICS)
  with pytest.raises(errors.UserError, match="different cases") as raised:
    report.compare(runs, "cto")
  assert str(tmp_path / "sgdnet" / "fold1") in str(raised.value)
  assert str(tmp_path / "cto" / "fold1") in str(raised.value)


def test_missing_baseline_names_the_available_variants(tmp_path):
  make_sweep(tmp_path)
  runs = report.load_runs(str(tmp_path), "test", ("dice",))
  with pytest.raises(errors.UserError, match="one of: cto, sgdnet, sge_add"):
    report.compare(runs, "baseline")


def test_different_conventions_name_the_runs(tmp_path):
  values = make_sweep(tmp_path, skip=(("sgdnet", 0),))
  other = {**CONVENTIONS, "dice": {**CONVENTIONS["dice"], "definition": "global Dice"}}
  write_run(tmp_path / "sgdnet" / "fold0", "sgdnet", 0, values["sgdnet", 0], case_ids(0), other)
  with pytest.raises(errors.UserError, match="the dice convention") as raised:
    report.compare(report.load_runs(str(tmp_path), "test", METRICS), "cto")
  assert str(tmp_path / "sgdnet" / "fold0") in str(raised.value)


@pytest.mark.parametrize("convention", ["pooled", "max_directed"])
def test_the_per_case_column_is_the_one_the_eval_json_names(tmp_path, convention):
  record = {key: np.array([1.0, 2.0]) for key in metrics.surface.DISTANCE_KEYS}
  record.update({key: np.array([5, 3]) for key in metrics.overlap.COUNT_KEYS})
  real = metrics.compute_results(record, metrics.MetricOptions(hd95=convention)).conventions
  column = f"hd95_{convention}"
  assert {m: real[m].per_case_column for m in METRICS} == {
    "dice": "dice",
    "iou": "iou",
    "hd95": column,
    "assd": "assd",
  }
  conventions = {
    m: {
      "definition": real[m].definition,
      "empty_policy": real[m].empty_policy,
      "per_case_column": real[m].per_case_column,
    }
    for m in METRICS
  }
  values = sweep_values()
  for variant in ("cto", "sgdnet"):
    write_run(
      tmp_path / variant / "fold0", variant, 0, values[variant, 0], case_ids(0), conventions
    )
  (run, _) = report.load_runs(str(tmp_path), "test", ("hd95",))
  assert run.conventions["hd95"]["per_case_column"] == column
  np.testing.assert_array_equal(run.cases["hd95"], values["cto", 0][column])


def test_metrics_without_per_case_values_name_no_column():
  record = {key: np.array([5, 3]) for key in metrics.overlap.COUNT_KEYS}
  real = metrics.compute_results(record, metrics.MetricOptions(iou="medi_seg_miou")).conventions
  assert real["thresholded_jaccard"].per_case_column is None
  assert real["iou"].per_case_column is None  # the CSV's iou is the foreground IoU


@pytest.mark.parametrize(
  "per_case_column, words",
  [
    ("missing", "names no per-case column for hd95 (conventions.hd95.per_case_column); re-run"),
    (None, "hd95 has no per-case values"),
  ],
)
def test_an_eval_json_without_a_per_case_column_is_a_user_error(tmp_path, per_case_column, words):
  make_sweep(tmp_path)
  path = tmp_path / "cto" / "fold0" / "eval" / "test.json"
  result = json.loads(path.read_text())
  if per_case_column == "missing":
    del result["conventions"]["hd95"]["per_case_column"]
  else:
    result["conventions"]["hd95"]["per_case_column"] = per_case_column
  path.write_text(json.dumps(result))
  with pytest.raises(errors.UserError, match=re.escape(words)) as raised:
    report.load_runs(str(tmp_path), "test", METRICS)
  assert str(path) in str(raised.value)


def test_seeds_of_a_fold_are_averaged(tmp_path):
  values = sweep_values()
  for seed, scale in ((0, 1.0), (1, 0.9)):
    columns = {k: v * scale for k, v in values["sgdnet", 0].items()}
    write_run(tmp_path / "sgdnet" / "fold0" / f"seed{seed}", "sgdnet", 0, columns, case_ids(0))
  write_run(tmp_path / "cto" / "fold0", "cto", 0, values["cto", 0], case_ids(0))
  result = report.compare(report.load_runs(str(tmp_path), "test", ("dice",)), "cto")
  row = result["tables"]["dice"][1]
  dice = values["sgdnet", 0]["dice"]
  assert row["seeds_per_fold"] == {"0": 2}
  assert row["folds"]["0"] == close(np.mean([dice.mean(), (dice * 0.9).mean()]), dice)
  expected = np.mean([dice, dice * 0.9], axis=0) - values["cto", 0]["dice"]
  assert row["comparison"]["mean_difference"] == close(expected.mean(), expected)


def test_cli_writes_every_output_and_the_pictures_open(tmp_path, capsys):
  make_sweep(tmp_path)
  assert main.main(["report", "--root", str(tmp_path), "--baseline", "cto"]) == 0
  assert "report of 9 runs" in capsys.readouterr().out
  for name in ("report.md", "report.csv", "report.tex"):
    assert (tmp_path / name).stat().st_size > 0
  written = json.loads((tmp_path / "report.json").read_text())
  assert written["metrics"] == list(METRICS) and written["std_ddof"] == 1
  with open(tmp_path / "report.csv") as f:
    assert len(list(csv.DictReader(f))) == len(METRICS) * len(VARIANTS)
  for name in [f"report_{m}.png" for m in METRICS] + ["curves.png"]:
    with Image.open(tmp_path / name) as image:
      image.verify()
      assert image.format == "PNG" and min(image.size) > 100


@pytest.mark.parametrize(
  "argv, words",
  [
    (["--baseline", "nope"], "one of: cto"),
    (["--metrics", "dice,pq"], "no metric pq"),
    (["--split", "val"], "eval/val.json"),
  ],
)
def test_cli_user_error_prints_one_line_and_exits_2(tmp_path, capsys, argv, words):
  make_sweep(tmp_path, skip=(("sge_add", 0),))
  assert main.main(["report", "--root", str(tmp_path), *argv]) == 2
  error = capsys.readouterr().err
  assert error.startswith("error: ") and error.count("\n") == 1 and words in error
  assert not os.path.exists(tmp_path / "report.md")


def write_seeds(root: pathlib.Path, variant: str, fold: int, scales: tuple[float, ...]) -> None:
  """One run per seed s of `variant` on `fold`: the sweep's per-case values times scales[s]."""
  columns = sweep_values()[variant, fold]
  for seed, scale in enumerate(scales):
    scaled = {name: values * scale for name, values in columns.items()}
    workdir = root / variant / f"fold{fold}" / f"seed{seed}"
    write_run(workdir, variant, fold, scaled, case_ids(fold))


def test_seed_spread_matches_numpy_and_flags_a_difference_within_it(tmp_path):
  # sgdnet: seeds far apart (3 on fold 0, 2 on fold 1, 1 on fold 2); sge_add and the baseline:
  # seeds close together.
  seed_scales = {
    ("cto", 0): (1.0, 0.999),
    ("cto", 1): (1.0, 0.998),
    ("cto", 2): (1.0,),
    ("sgdnet", 0): (1.0, 0.85, 1.1),
    ("sgdnet", 1): (0.9, 1.05),
    ("sgdnet", 2): (1.0,),
    ("sge_add", 0): (1.0, 1.001),
    ("sge_add", 1): (1.0, 1.002),
    ("sge_add", 2): (1.0, 1.001),
  }
  for (variant, fold), scales in seed_scales.items():
    write_seeds(tmp_path, variant, fold, scales)
  result = report.compare(report.load_runs(str(tmp_path), "test", ("dice",)), "cto")
  rows = {row["variant"]: row for row in result["tables"]["dice"]}
  values = sweep_values()
  for variant in VARIANTS:
    seed_values = {
      f: [np.mean(values[variant, f]["dice"] * scale) for scale in seed_scales[variant, f]]
      for f in FOLDS
    }
    several = {f: v for f, v in seed_values.items() if len(v) > 1}
    row = rows[variant]
    assert set(row["seed_std_folds"]) == {str(f) for f in several}
    for f, fold_values in several.items():
      assert row["seed_std_folds"][str(f)] == close(np.std(fold_values, ddof=1), fold_values)
    weights = [len(v) - 1 for v in several.values()]
    variances = [np.var(v, ddof=1) for v in several.values()]
    pooled = np.sqrt(np.average(variances, weights=weights))
    assert row["seed_std"] == close(pooled, list(seed_values.values())[0])
  for variant, within in (("sgdnet", True), ("sge_add", False)):
    comparison = rows[variant]["comparison"]
    assert comparison["seed_spread"] == max(rows[variant]["seed_std"], rows["cto"]["seed_std"])
    assert (abs(comparison["mean_difference"]) < comparison["seed_spread"]) is within
    assert comparison["within_seed_spread"] is within
  # sgdnet's spread is its own, sge_add's the baseline's.
  assert rows["sgdnet"]["comparison"]["seed_spread"] == rows["sgdnet"]["seed_std"]
  assert rows["sge_add"]["comparison"]["seed_spread"] == rows["cto"]["seed_std"]

  report.write_tables(tmp_path, result)
  lines = {
    line.split(" | ")[0][2:]: line for line in (tmp_path / "report.md").read_text().split("\n")
  }
  assert "| seed std | Δ = variant − cto |" in lines["variant"]
  assert (
    f"| {rows['sgdnet']['seed_std']:.4f} | {rows['sgdnet']['comparison']['mean_difference']:.4f} |"
    in lines["sgdnet"]
  )
  assert lines["sgdnet"].endswith("seeds per fold: 1/2/3; \\|Δ\\| < seed std |")
  assert lines["sge_add"].endswith("seeds per fold: 2 |")
  table = [lines[name] for name in ("variant", *VARIANTS)]
  assert len({len(re.findall(r"(?<!\\)\|", line)) for line in table}) == 1  # cells stay apart
  written = json.loads((tmp_path / "report.json").read_text())["tables"]["dice"]
  assert [row["seed_std"] for row in written] == [rows[v]["seed_std"] for v in VARIANTS]
  assert [row["comparison"]["within_seed_spread"] for row in written[1:]] == [True, False]
  with open(tmp_path / "report.csv") as f:
    csv_rows = {row["variant"]: row for row in csv.DictReader(f)}
  assert float(csv_rows["sgdnet"]["seed_std"]) == rows["sgdnet"]["seed_std"]
  assert csv_rows["sgdnet"]["within_seed_spread"] == "True"
  tex = (tmp_path / "report.tex").read_text()
  assert f"{rows['sgdnet']['comparison']['mean_difference']:.4f}$^\\dagger$" in tex
  assert f"{rows['sge_add']['comparison']['mean_difference']:.4f}$^\\dagger$" not in tex


def test_curves_mark_a_single_validation_point(tmp_path):
  make_sweep(tmp_path, skip=(("sge_add", 2),))
  log = tmp_path / "sge_add" / "fold0" / "metrics.jsonl"
  long_loss = [{"step": step, "loss": 1.0 / step} for step in range(1, plots.MARKED_POINTS + 2)]
  log.write_text("".join(json.dumps(r) + "\n" for r in [*long_loss, {"step": 9, "val_dice": 0.6}]))
  runs = report.load_runs(str(tmp_path), "test", ("dice",))
  figure = plots.curves_figure([run for run in runs if run.path == str(log.parent)])
  try:
    loss_axes, dice_axes = figure.axes
    (line,) = dice_axes.get_lines()
    assert list(line.get_xdata()) == [9] and list(line.get_ydata()) == [0.6]
    assert line.get_visible() and line.get_marker() == "o" and line.get_markersize() > 0
    (loss_line,) = loss_axes.get_lines()  # too many points to mark: a plain line
    assert len(loss_line.get_xdata()) == plots.MARKED_POINTS + 1
    assert loss_line.get_marker() == "None"
  finally:
    plots._pyplot().close(figure)


def test_a_half_finished_run_is_refused_unless_allowed_then_marked(tmp_path, capsys):
  make_sweep(tmp_path, skip=(("sge_add", 2),))
  unfinished = tmp_path / "sge_add" / "fold2"  # trained, killed before its evaluation
  unfinished.mkdir(parents=True)
  (unfinished / "config.json").write_text(json.dumps({"model": {"variant": "sge_add"}}))
  cut = tmp_path / "sgdnet" / "fold1" / "eval" / "test_cases.csv"  # killed between two writes
  cut.unlink()
  argv = ["report", "--root", str(tmp_path)]
  assert main.main(argv) == 2
  error = capsys.readouterr().err
  assert error.count("\n") == 1 and "--allow-incomplete" in error, error
  assert f"{unfinished} (no eval/test.json, eval/test_cases.csv)" in error
  assert f"{cut.parent.parent} (no eval/test_cases.csv)" in error
  assert not (tmp_path / "report.md").exists()
  assert main.main([*argv, "--allow-incomplete"]) == 0
  markdown = (tmp_path / "report.md").read_text()
  assert "**Incomplete**: 2 run(s)" in markdown
  for variant, status in (("sge_add", "missing fold 2"), ("sgdnet", "1 unfinished run")):
    line = next(row for row in markdown.splitlines() if row.startswith(f"| {variant} |"))
    assert f"incomplete: {status}" in line and "complete |" not in line.replace("incomplete", "")
  with open(tmp_path / "report.csv") as f:
    complete = {row["variant"]: row["complete"] for row in csv.DictReader(f)}
  assert complete["sgdnet"] == complete["sge_add"] == "False" and complete["cto"] == "True"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_a_full_or_read_only_disk_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch, code):
  make_sweep(tmp_path)

  def fail(self, data):  # as write() fails: an errno and no file name
    raise OSError(code, os.strerror(code))

  monkeypatch.setattr(type(paths.as_path(tmp_path)), "write_bytes", fail)
  assert main.main(["report", "--root", str(tmp_path)]) == 2
  error = capsys.readouterr().err
  assert error.count("\n") == 1 and "Traceback" not in error
  assert error.startswith(f"error: {os.strerror(code)}: {tmp_path / 'report.md'}; report stopped")


# --- report --paper-tables ------------------------------------------------------------------


def paper_cells(markdown: str, title: str) -> dict[str, list[str]]:
  """The rows of the table `## title` of paper_tables.md: first cell -> the other cells."""
  section = markdown.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
  rows = [line.strip("| ").split(" | ") for line in section.splitlines() if line.startswith("|")]
  return {row[0]: row[1:] for row in rows[2:]}


def expected_cell(values, variant, column, percent, p_holm) -> str:
  fold_means = [np.nanmean(values[variant, f][column]) for f in FOLDS]
  scale = 100.0 if percent else 1.0
  mark = "*" if p_holm is not None and p_holm < 0.05 else ""
  return f"{scale * np.mean(fold_means):.2f} ± {scale * np.std(fold_means, ddof=1):.2f}{mark}"


def test_paper_tables_match_numpy_and_the_published_numbers(tmp_path, capsys):
  """Table 2 (ISIC 2018: one row per method, Params/GFLOPs from `summary`) against CTO and
  Table 4 (the ablation rows present) against SGD-Net, every cell recomputed with numpy/scipy."""
  from configs import test as tiny
  from sgdnet_jax.models import summary

  values = make_sweep(tmp_path)
  model = tiny.get_config("variant=sgdnet").model  # a recorded model: Params and GFLOPs
  config = json.loads((tmp_path / "sgdnet/fold0/config.json").read_text())
  config["model"] = model.to_dict()
  (tmp_path / "sgdnet/fold0/config.json").write_text(json.dumps(config))
  argv = ["report", "--root", str(tmp_path), "--paper-tables", "--published"]
  assert main.main(argv) == 0
  assert "paper_tables.md" in capsys.readouterr().out
  markdown = (tmp_path / "paper_tables.md").read_text()
  assert (tmp_path / "paper_tables.tex").read_text().count(r"\begin{tabular}") == 2
  column = {"dice": "dice", "iou": "iou", "hd95": "hd95_pooled"}

  def p_holm(variants, reference, metric):
    pooled = {v: np.concatenate([values[v, f][column[metric]] for f in FOLDS]) for v in VARIANTS}
    p = []
    for variant in variants:
      difference = pooled[variant] - pooled[reference]
      p.append(stats.wilcoxon(difference[~np.isnan(difference)]).pvalue)
    return dict(zip(variants, holm_by_hand(p)))

  table2 = paper_cells(markdown, "Table 2: ISIC 2018, 5-fold cross-validation, with complexity")
  # Published rows first (U-Net ... TransUNet, measured cells empty), then CTO and SGD-Net.
  assert list(table2)[:3] == [
    "U-Net (Ronneberger et al., 2015)", "LeViT (Graham et al., 2021)",
    "TransUNet (Chen et al., 2024)",
  ]  # fmt: skip
  assert table2["U-Net (Ronneberger et al., 2015)"][::2] == ["–"] * 5
  record = summary.summarize(ml_collections.ConfigDict({"model": model.to_dict()}), 256, False)
  sgdnet = table2["SGD-Net (sgdnet)"]
  assert sgdnet[0:4] == [
    f"{record['trainable_params'] / 1e6:.2f}", "75.88", f"{record['gmacs_paper']:.2f}", "36.23",
  ]  # fmt: skip
  assert table2["CTO (Lin et al., 2025) (cto)"][0:4] == ["–", "62.22", "–", "22.70"]
  for i, metric in enumerate(("dice", "iou", "hd95")):
    against_cto = p_holm(("sgdnet", "sge_add"), "cto", metric)
    for name, variant in (("CTO (Lin et al., 2025) (cto)", "cto"), ("SGD-Net (sgdnet)", "sgdnet")):
      cell = expected_cell(
        values, variant, column[metric], metric != "hd95", against_cto.get(variant)
      )
      assert table2[name][4 + 2 * i] == cell, (name, metric)
  assert table2["SGD-Net (sgdnet)"][5] == "91.41" and table2["SGD-Net (sgdnet)"][7] == "84.96"

  table4 = paper_cells(markdown, "Table 4: ablation of SGD-Net's parts, ISIC 2018")
  assert list(table4) == ["(2) + SGE (guidance added) (sge_add)", "(4) SGD-Net (sgdnet)"]
  for i, metric in enumerate(("dice", "iou", "hd95")):
    against_sgdnet = p_holm(("cto", "sge_add"), "sgdnet", metric)
    for name, variant in zip(table4, ("sge_add", "sgdnet")):
      cell = expected_cell(
        values, variant, column[metric], metric != "hd95", against_sgdnet.get(variant)
      )
      assert table4[name][2 * i] == cell, (name, metric)
  assert table4["(4) SGD-Net (sgdnet)"][1::2] == ["91.41", "84.96", "16.09"]


def test_conic_report_defaults_to_pq_and_table_3(tmp_path):
  """CoNIC evaluations (a `pq` column): the default metrics add PQ and the main table is
  Table 3 with a PQ column; without --published no paper column."""
  conventions = {**CONVENTIONS, "pq": {**CONVENTIONS["dice"], "per_case_column": "pq"}}
  rng = np.random.default_rng(0)
  for variant in ("cto", "sgdnet"):
    columns = {
      name: rng.uniform(0.3, 0.9, CASES_PER_FOLD).round(4)
      for name in ("dice", "iou", "hd95_pooled", "assd", "pq")
    }
    workdir = tmp_path / variant / "fold0"
    write_run(workdir, variant, 0, columns, case_ids(0), conventions)
    result = json.loads((workdir / "eval/test.json").read_text())
    result["pq"] = float(np.mean(columns["pq"]))
    (workdir / "eval/test.json").write_text(json.dumps(result))
    config = json.loads((workdir / "config.json").read_text())
    config["data"]["protocol"] = "grouped_712"
    (workdir / "config.json").write_text(json.dumps(config))
  assert main.main(["report", "--root", str(tmp_path), "--paper-tables"]) == 0
  assert json.loads((tmp_path / "report.json").read_text())["metrics"] == [*METRICS, "pq"]
  table3 = paper_cells((tmp_path / "paper_tables.md").read_text(), "Table 3: CoNIC, split 7:1:2")
  assert list(table3) == ["CTO (cto)", "SGD-Net (sgdnet)"]
  assert len(table3["CTO (cto)"]) == 4  # Dice, IoU, HD95, PQ: no paper columns
  pq = json.loads((tmp_path / "sgdnet/fold0/eval/test.json").read_text())["pq"]
  assert table3["SGD-Net (sgdnet)"][3].startswith(f"{100 * pq:.2f}")
