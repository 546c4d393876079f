"""Dice / IoU aggregations and empty policies, clu metric objects and the results record."""

import ast
import json
import math
import pathlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from clu import metrics as clu_metrics

from sgdnet_jax import metrics
from sgdnet_jax.metrics import overlap
from tests import tolerances


def _mask(shape, rows, cols):
  mask = np.zeros(shape, bool)
  mask[rows, cols] = True
  return mask


# Four 4x4 images with hand-countable pixels:
#   0: gt 4 px, pred 2 px inside it   -> tp 2, fp 0, fn 2, tn 12
#   1: gt 2 px, pred 3 px, overlap 1  -> tp 1, fp 2, fn 1, tn 12
#   2: both empty                     -> tp 0, fp 0, fn 0, tn 16
#   3: gt empty, pred 1 px            -> tp 0, fp 1, fn 0, tn 15
SHAPE = (4, 4)
PRED = np.stack(
  [
    _mask(SHAPE, 0, slice(0, 2)),
    _mask(SHAPE, 1, slice(1, 4)),
    np.zeros(SHAPE, bool),
    _mask(SHAPE, 3, 3),
  ]
)
GT = np.stack(
  [
    _mask(SHAPE, slice(0, 2), slice(0, 2)),
    _mask(SHAPE, 1, slice(0, 2)),
    np.zeros(SHAPE, bool),
    np.zeros(SHAPE, bool),
  ]
)
EXPECTED_COUNTS = {
  "tp": [2, 1, 0, 0],
  "fp": [0, 2, 0, 1],
  "fn": [2, 1, 0, 0],
  "tn": [12, 12, 16, 15],
}


def test_confusion_counts_numpy_and_jax():
  host = metrics.confusion_counts(PRED, GT)
  device = jax.jit(metrics.confusion_counts)(jnp.asarray(PRED), jnp.asarray(GT))
  for key, expected in EXPECTED_COUNTS.items():
    np.testing.assert_array_equal(host[key], expected)
    np.testing.assert_array_equal(np.asarray(device[key]), expected)
    assert host[key].dtype == np.int64 and isinstance(device[key], jax.Array)


def test_per_image_scores_and_empty_cases():
  scores = metrics.overlap_scores(metrics.confusion_counts(PRED, GT))
  np.testing.assert_allclose(scores["dice"], [4 / 6, 2 / 5, 1.0, 0.0])
  np.testing.assert_allclose(scores["iou"], [2 / 4, 1 / 4, 1.0, 0.0])
  # background IoU: tn / (tn + fn + fp)
  np.testing.assert_allclose(
    scores["medi_seg_miou"], [(0.5 + 12 / 14) / 2, (0.25 + 12 / 15) / 2, 1.0, (0 + 15 / 16) / 2]
  )
  np.testing.assert_allclose(scores["thresholded_jaccard"], [0.0, 0.0, 1.0, 0.0])


@pytest.mark.parametrize(
  "metric,aggregation,empty,expected,n_used",
  [
    ("dice", "per_image_mean", "score", (4 / 6 + 2 / 5 + 1 + 0) / 4, 4),
    ("dice", "per_image_mean", "skip_empty_gt", (4 / 6 + 2 / 5) / 2, 2),
    ("dice", "global", "score", 2 * 3 / (2 * 3 + 3 + 3), 4),
    ("dice", "global", "skip_empty_gt", 2 * 3 / (2 * 3 + 2 + 3), 2),
    ("iou", "per_image_mean", "score", (0.5 + 0.25 + 1 + 0) / 4, 4),
    ("iou", "global", "score", 3 / (3 + 3 + 3), 4),
    (
      "iou",
      "medi_seg_miou",
      "score",
      ((0.5 + 12 / 14) / 2 + (0.25 + 12 / 15) / 2 + 1 + 15 / 32) / 4,
      4,
    ),
    ("iou", "medi_seg_miou", "skip_empty_gt", ((0.5 + 12 / 14) / 2 + (0.25 + 12 / 15) / 2) / 2, 2),
    ("thresholded_jaccard", "per_image_mean", "score", 0.25, 4),
  ],
)
def test_aggregations(metric, aggregation, empty, expected, n_used):
  result = overlap.aggregate(EXPECTED_COUNTS, metric, aggregation, empty)
  assert result.value == pytest.approx(expected, rel=1e-12)
  assert (result.n_used, result.n_total, result.n_excluded) == (n_used, 4, 4 - n_used)


def test_thresholded_jaccard_keeps_values_at_or_above_threshold():
  np.testing.assert_allclose(
    overlap.thresholded_jaccard(np.array([0.64, 0.65, 0.9])), [0.0, 0.65, 0.9]
  )


def test_aggregate_rejects_undefined_combinations():
  with pytest.raises(ValueError, match="not defined for dice"):
    overlap.aggregate(EXPECTED_COUNTS, "dice", "medi_seg_miou")
  with pytest.raises(ValueError, match="empty policy"):
    overlap.aggregate(EXPECTED_COUNTS, "iou", "global", "skip")
  only_empty_gt = {k: v[2:] for k, v in EXPECTED_COUNTS.items()}
  result = overlap.aggregate(only_empty_gt, "dice", "per_image_mean", "skip_empty_gt")
  assert math.isnan(result.value) and result.n_used == 0


def test_per_image_values_in_a_clu_collection_give_the_global_dice():

  @flax.struct.dataclass
  class EvalMetrics(clu_metrics.Collection):
    per_image: metrics.PerImageValues

  collection = EvalMetrics.empty()
  for valid in (np.array([True, True, True, False]), np.ones(4, bool)):
    record = metrics.per_image_metrics_jax(jnp.asarray(PRED), jnp.asarray(GT))
    collection = collection.merge(
      EvalMetrics.single_from_model_output(pred=PRED, gt=GT, mask=valid, **record)
    )
  result = collection.compute()
  assert result["per_image"]["fp"].tolist() == [0, 2, 0, 0, 2, 0, 1]
  results = metrics.compute_results(result["per_image"], metrics.MetricOptions(dice="global"))
  expected = {k: 2 * sum(v) - v[3] for k, v in EXPECTED_COUNTS.items()}
  global_dice = 2 * expected["tp"] / (2 * expected["tp"] + expected["fp"] + expected["fn"])
  assert results.values["dice"] == pytest.approx(global_dice, rel=1e-12)
  assert results.cases["dice"].n_total == 7


def test_metrics_package_imports_no_torch_models_or_data():
  package = pathlib.Path(metrics.__file__).parent
  for path in package.glob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        names = [node.module or ""]
      else:
        continue
      for name in names:
        assert not name.startswith(("torch", "sgdnet_jax.models", "sgdnet_jax.data")), (path, name)


def test_per_image_values_drop_padding_and_merge_batches():
  record = metrics.per_image_metrics(PRED, GT)
  collected = metrics.PerImageValues.empty()
  collected = collected.merge(
    metrics.PerImageValues.from_model_output(
      mask=np.array([True, True, False, False]), pred=PRED, **record
    )
  )
  device_record = metrics.per_image_metrics_jax(jnp.asarray(PRED), jnp.asarray(GT))
  collected = collected.merge(metrics.PerImageValues.from_model_output(**device_record))
  values = collected.compute()
  assert "pred" not in values
  np.testing.assert_array_equal(values["tp"], [2, 1, 2, 1, 0, 0])
  np.testing.assert_allclose(
    values["hd95_pooled"][:2],
    values["hd95_pooled"][2:4],
    rtol=tolerances.rounding(np.float32, terms=8),
  )  # the device computes distances in float32, the host in float64
  masked = metrics.PerImageValues.from_model_output(
    mask=np.array([True, False, True, True]), **record
  )
  assert masked.compute()["fp"].tolist() == [0, 0, 1]
  with pytest.raises(ValueError, match="none of"):
    metrics.PerImageValues.from_model_output(pred=PRED)


def test_summarize_report_conventions_counts_and_json():
  record = metrics.per_image_metrics(PRED, GT)
  report = metrics.compute_results(record)
  assert report.values["dice"] == pytest.approx((4 / 6 + 2 / 5 + 1 + 0) / 4)
  assert report.cases["dice"] == metrics.CaseCounts(4, 4, 0)
  # Distances: image 2 (both empty) excluded, image 3 (one empty) scored with the diagonal.
  assert report.cases["hd95"] == metrics.CaseCounts(3, 4, 1)
  assert record["hd"][3] == pytest.approx(math.hypot(4, 4))
  assert "medpy hd95" in report.conventions["hd95"].definition
  assert "diagonal" in report.conventions["hd95"].empty_policy
  assert report.resolution == "256x256"
  payload = json.loads(json.dumps(report.to_dict()))
  assert payload["metrics"]["hd95"]["n_excluded"] == 1
  assert "hd95" in report.format_table()

  options = metrics.MetricOptions(
    dice="global",
    iou="medi_seg_miou",
    overlap_empty="skip_empty_gt",
    hd95="max_directed",
    distance_empty="nan",
    resolution="original",
  )
  nan_record = metrics.per_image_metrics(PRED, GT, one_empty="nan")
  skipped = metrics.compute_results(nan_record, options)
  assert skipped.cases["dice"] == metrics.CaseCounts(2, 4, 2)
  assert skipped.cases["hd95"] == metrics.CaseCounts(2, 4, 2)
  assert "MONAI" in skipped.conventions["hd95"].definition
  assert skipped.values["hd95"] == pytest.approx(np.nanmean(nan_record["hd95_max_directed"]))


def test_summarize_refuses_a_record_computed_under_another_policy():
  record = metrics.per_image_metrics(PRED, GT, one_empty="nan")
  with pytest.raises(ValueError, match="one_empty='nan'"):
    metrics.compute_results(record, metrics.MetricOptions(distance_empty="diagonal"))
  with pytest.raises(ValueError, match="hd95='mean'"):
    metrics.MetricOptions(hd95="mean")
