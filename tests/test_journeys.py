"""One end-to-end journey per dataset layout, through the commands a user types.

Each journey writes a replica of the download (`tests/replicas.py`), then `prepare`s it, `train`s
the tiny baseline for two steps, `evaluate`s every split the dataset reports and writes the study
`report`, all through `sgdnet_jax.main.main` with command-line arguments: the CLI parsing, the
config files of the experiments and the library are exercised together, as the user meets them.
Every journey trains the same program (tiny baseline at depth 14, 32 px, batch 4, and 5-8
training cases: 2 steps per epoch, which the learning-rate schedule bakes into the program; the
model, optimizer, loss and schedule fields are identical), so the test session compiles each
program once for all four.
"""

import csv
import dataclasses
import json
import math
import pathlib

import numpy as np
import pytest

from sgdnet_jax import main
from tests import replicas

VARIANT = "baseline"  # compiles fastest; no dataset needs an edge branch
SIZE = 32
STEPS = 2
# The tiny model of configs/test.py (`common.make_tiny`) at 32 px, as command-line overrides, with
# one Res2Net block a stage (the journeys are about the commands, not the depth), and
# metrics.jsonl only (TensorFlow's import is paid by the tests of the event writer).
TINY = (
  "--config.model.pretrained=none",
  "--config.model.backbone_depth=14",
  "--config.model.backbone_base_planes=16",
  "--config.model.decoder_channels=16",
  "--config.model.trans_patch_sizes=(8, 4, 2, 1)",
  "--config.model.sge.mid_channels=32",
  "--config.model.sge.guide_channels=8",
  "--config.global_batch_size=4",
  "--config.eval_batch_size=4",
  "--config.log_every_steps=1",
  f"--config.total_steps={STEPS}",
  "--config.tensorboard=False",
)
SEGMENTATION_METRICS = ("dice", "iou", "thresholded_jaccard", "hd", "hd95", "assd")
PANOPTIC_METRICS = ("pq", "pq_dataset")
# The report compares per-case values: the metrics with a per-case column (CoNIC adds `pq`).
REPORT_METRICS = ("dice", "iou", "hd95", "assd")
REPORT_FILES = ("report.md", "report.csv", "report.json", "report.tex", "curves.png")


@dataclasses.dataclass(frozen=True)
class Journey:
  """What a journey left: the study root, its one run, and per split the eval and report JSON."""

  root: pathlib.Path
  workdir: pathlib.Path
  results: dict[str, dict]
  reports: dict[str, dict]


def run(*argv) -> None:
  """`python -m sgdnet_jax.main <argv>`, in this process; the command must succeed."""
  argv = [str(arg) for arg in argv]
  assert main.main(argv) == 0, f"`{' '.join(argv)}` failed (its error is in the captured stderr)"


def prepare(dataset: str, source: pathlib.Path, out: pathlib.Path, *size: str) -> pathlib.Path:
  run("prepare", "--dataset", dataset, "--source", source, "--out", out, "--workers", 1, *size)
  return out


def journey(
  tmp: pathlib.Path, config: str, splits: tuple[str, ...], report_metrics: tuple[str, ...] = ()
) -> Journey:
  """train -> evaluate each split -> report each split, in a study root `<variant>/fold0`
  (with `report`'s default metrics when `report_metrics` is empty)."""
  root = tmp / "study"
  workdir = root / VARIANT / "fold0"
  run("train", "--config", config, "--workdir", workdir, *TINY)
  results, reports = {}, {}
  for split in splits:
    run("evaluate", "--config", config, "--workdir", workdir, "--split", split, *TINY)
    results[split] = json.loads((workdir / "eval" / f"{split}.json").read_text())
    metrics = ("--metrics", ",".join(report_metrics)) if report_metrics else ()
    run("report", "--root", root, "--baseline", VARIANT, "--split", split, *metrics)
    reports[split] = json.loads((root / "report.json").read_text())  # the next split rewrites it
  return Journey(root, workdir, results, reports)


@pytest.fixture(scope="module")
def isic2018(tmp_path_factory) -> Journey:
  tmp = tmp_path_factory.mktemp("isic2018")
  # MedISeg fold 0 of 10: 2 test, 1 validation, 7 training cases.
  source = replicas.write_isic2018(tmp / "download", num_train=10, num_val=2)
  data = prepare("isic2018", source, tmp / "prepared", "--size", SIZE)
  config = f"configs/isic2018.py:variant={VARIANT},fold=0,data={data}"
  return journey(tmp, config, ("test",), REPORT_METRICS)


@pytest.fixture(scope="module")
def isic2016_ph2(tmp_path_factory) -> Journey:
  tmp = tmp_path_factory.mktemp("isic2016_ph2")
  isic = replicas.write_isic2016(tmp / "isic2016", num_train=6, num_test=3)  # all900: 6 train
  ph2 = replicas.write_ph2(tmp / "ph2", ids=(2, 3, 4, 5))
  isic_data = prepare("isic2016", isic, tmp / "prepared_isic2016", "--size", SIZE)
  ph2_data = prepare("ph2", ph2, tmp / "prepared_ph2", "--size", SIZE)
  config = f"configs/isic2016_ph2.py:variant={VARIANT},data={isic_data},ph2={ph2_data}"
  return journey(tmp, config, ("test", "ph2"), REPORT_METRICS)


@pytest.fixture(scope="module")
def conic(tmp_path_factory) -> Journey:
  tmp = tmp_path_factory.mktemp("conic")
  # 6 source images of 2 patches: grouped 7:1:2 gives 8 training, 2 validation, 2 test patches.
  source = replicas.write_conic(tmp / "download", num_patches=12, size=SIZE, num_sources=6)
  data = prepare("conic", source, tmp / "prepared", "--size", SIZE)
  config = f"configs/conic.py:variant={VARIANT},data={data}"
  return journey(tmp, config, ("test",))  # the report's default metrics: PQ added for CoNIC


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Journey:
  tmp = tmp_path_factory.mktemp("folder")
  source = replicas.write_folder(tmp / "download", num_cases=10)  # 7 train, 1 val, 2 test
  data = prepare("folder", source, tmp / "prepared")  # the size from the images: 32 px
  config = f"configs/folder.py:variant={VARIANT},data={data}"
  return journey(tmp, config, ("test",), REPORT_METRICS)


def check_journey(journey: Journey, evaluated: dict[str, tuple[str, ...]]) -> None:
  """Trained STEPS steps at SIZE px; per split, finite metrics in the eval and in the report."""
  config = json.loads((journey.workdir / "config.json").read_text())
  assert config["model"]["variant"] == VARIANT and config["data"]["image_size"] == SIZE
  lines = (journey.workdir / "metrics.jsonl").read_text().splitlines()
  losses = {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}
  assert sorted(losses) == list(range(1, STEPS + 1)) and all(map(math.isfinite, losses.values()))
  validations = [r["val_dice"] for r in map(json.loads, lines) if "val_dice" in r]
  assert len(validations) == (1 if config["eval_every_epochs"] else 0)  # at the last step
  assert all(map(math.isfinite, validations))
  assert sorted(journey.results) == sorted(evaluated)
  for split, names in evaluated.items():
    result = journey.results[split]
    assert result["n_total"] > 0, split
    for name in names:
      assert math.isfinite(result[name]), (split, name, result[name])
      assert result["cases"][name]["n_total"] == result["n_total"], (split, name)
    report = journey.reports[split]
    assert report["split"] == split and report["baseline"] == VARIANT
    for name in report["metrics"]:
      (row,) = report["tables"][name]  # one run: the baseline's row, nothing to compare
      assert row["variant"] == VARIANT and row["n_total"] == result["n_total"], (split, name)
      # The fold value is the eval JSON's; the mean of the per-case CSV column agrees with it.
      assert row["mean"] == result[name], (split, name)
      assert row["case_mean"] == pytest.approx(result[name], rel=1e-12), (split, name)
  plotted = {
    f"report_{name}.png" for report in journey.reports.values() for name in report["metrics"]
  }
  for name in (*REPORT_FILES, *sorted(plotted)):
    assert (journey.root / name).stat().st_size > 0, name


def test_isic2018_journey(isic2018):
  check_journey(isic2018, {"test": SEGMENTATION_METRICS})
  assert isic2018.reports["test"]["metrics"] == list(REPORT_METRICS)


def test_isic2016_to_ph2_journey(isic2016_ph2):
  check_journey(isic2016_ph2, {"test": SEGMENTATION_METRICS, "ph2": SEGMENTATION_METRICS})
  assert isic2016_ph2.results["test"]["n_total"] == 3  # the ISIC 2016 test set
  assert isic2016_ph2.results["ph2"]["n_total"] == 4  # every PH2 case (data.extra_eval.ph2)
  assert [isic2016_ph2.reports[s]["split"] for s in ("test", "ph2")] == ["test", "ph2"]


def test_conic_journey_reports_panoptic_quality(conic):
  check_journey(conic, {"test": SEGMENTATION_METRICS + PANOPTIC_METRICS})
  result = conic.results["test"]
  assert 0.0 <= result["pq"] <= 1.0 and 0.0 <= result["pq_dataset"] <= 1.0
  assert result["cases"]["pq"]["n_total"] == result["n_total"]
  assert conic.reports["test"]["metrics"] == [*REPORT_METRICS, "pq"]  # Table 3: Dice, IoU, PQ
  # Each patch's `pq` is CoNIC's PQ of its own counts, and the eval's `pq` is their mean;
  # `pq_dataset` is the PQ of the counts summed over the patches.
  with open(conic.workdir / "eval" / "test_cases.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  counts = {k: np.array([float(r[k]) for r in rows]) for k in ("pq_tp", "pq_fp", "pq_fn")}
  iou_sum = np.array([float(r["pq_iou_sum"]) for r in rows])

  def conic_pq(tp, fp, fn, iou):
    return tp / (tp + fp / 2 + fn / 2 + 1e-6) * (iou / (tp + 1e-6))

  per_patch = conic_pq(counts["pq_tp"], counts["pq_fp"], counts["pq_fn"], iou_sum)
  assert [float(r["pq"]) for r in rows] == pytest.approx(per_patch, rel=1e-12, abs=1e-15)
  assert result["pq"] == pytest.approx(per_patch.mean(), rel=1e-12, abs=1e-15)
  summed = [counts[k].sum() for k in ("pq_tp", "pq_fp", "pq_fn")]
  assert result["pq_dataset"] == pytest.approx(conic_pq(*summed, iou_sum.sum()), abs=1e-12)


def test_folder_journey(folder):
  check_journey(folder, {"test": SEGMENTATION_METRICS})
