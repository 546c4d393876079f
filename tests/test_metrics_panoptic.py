"""Panoptic quality against a direct re-implementation of CoNIC's `get_pq` / mPQ+ (METRICS.md)."""

import numpy as np
import pytest
from skimage import measure

from sgdnet_jax import metrics
from sgdnet_jax.metrics import panoptic

SHAPE = (32, 32)


def _relabel(instances):
  """Contiguous ids 1..n in the order of the original ids (CoNIC's `remap_label`)."""
  out = np.zeros(instances.shape, np.int32)
  for new_id, old_id in enumerate(i for i in np.unique(instances) if i != 0):
    out[instances == old_id] = new_id + 1
  return out


def reference_get_pq(true, pred):
  """CoNIC `get_pq` (match_iou 0.5): explicit pairwise IoU table, pairs with IoU > 0.5."""
  true, pred = _relabel(true), _relabel(pred)
  true_ids = [i for i in np.unique(true) if i != 0]
  pred_ids = [i for i in np.unique(pred) if i != 0]
  pairwise = np.zeros((len(true_ids), len(pred_ids)))
  for t in true_ids:
    t_mask = true == t
    for p in np.unique(pred[t_mask]):
      if p == 0:
        continue
      p_mask = pred == p
      inter = np.logical_and(t_mask, p_mask).sum()
      pairwise[t - 1, p - 1] = inter / (t_mask.sum() + p_mask.sum() - inter)
  paired_true, paired_pred = np.nonzero(pairwise > 0.5)
  paired_iou = pairwise[paired_true, paired_pred]
  tp = len(paired_true)
  fp = len(pred_ids) - len(set(paired_pred))
  fn = len(true_ids) - len(set(paired_true))
  dq = tp / (tp + 0.5 * fp + 0.5 * fn + 1.0e-6)
  sq = paired_iou.sum() / (tp + 1.0e-6)
  return dq * sq, (tp, fp, fn, paired_iou.sum())


def reference_mpq_plus(trues, preds, true_classes, pred_classes, num_classes):
  """CoNIC `get_multi_pq_info` per patch and class, summed over patches, PQ per class, mean."""
  totals = np.zeros((num_classes, 4))
  for true, pred, tc, pc in zip(trues, preds, true_classes, pred_classes):
    for c in range(num_classes):
      totals[c] += reference_get_pq(true * (tc == c + 1), pred * (pc == c + 1))[1]
  tp, fp, fn, iou_sum = totals.T
  dq = tp / (tp + 0.5 * fp + 0.5 * fn + 1.0e-6)
  return np.mean(dq * iou_sum / (tp + 1.0e-6))


def _square(instances, top, left, size, value):
  instances[top : top + size, left : left + size] = value


def _fixtures():
  """Ground-truth instance maps and instance predictions: touching, unmatched, borderline."""
  gt = np.zeros((5,) + SHAPE, np.int32)
  pred = np.zeros((5,) + SHAPE, np.int32)
  # 0: two touching gt squares sharing an edge, predicted as one blob; a far FP; a missed gt.
  _square(gt[0], 2, 2, 6, 7)
  _square(gt[0], 2, 8, 6, 3)
  _square(gt[0], 20, 20, 5, 11)
  pred[0, 2:8, 2:14] = 1  # covers both touching squares: IoU exactly 0.5 each, not matched
  _square(pred[0], 25, 2, 4, 2)
  # 1: good matches with shifted boundaries, ids not contiguous.
  _square(gt[1], 4, 4, 8, 5)
  _square(gt[1], 16, 16, 10, 9)
  _square(pred[1], 5, 4, 8, 40)
  _square(pred[1], 16, 17, 10, 3)
  # 2: IoU exactly 0.5 (strict threshold: not a match) next to a clear match.
  _square(gt[2], 0, 0, 4, 1)
  pred[2, 0:4, 0:2] = 1  # 8 px inside a 16 px square: IoU 0.5
  _square(gt[2], 10, 10, 6, 2)
  _square(pred[2], 10, 10, 6, 2)
  # 3: neither gt nor prediction; 4: gt only.
  _square(gt[4], 3, 3, 5, 1)
  return gt, pred


GT, PRED = _fixtures()


def test_match_counts_and_pq_match_reference_get_pq():
  record = metrics.panoptic_counts(GT, PRED)
  reference = [reference_get_pq(g, p) for g, p in zip(GT, PRED)]
  for i, (_, (tp, fp, fn, iou_sum)) in enumerate(reference):
    assert (record["pq_tp"][i], record["pq_fp"][i], record["pq_fn"][i]) == (tp, fp, fn)
    assert record["pq_iou_sum"][i] == pytest.approx(iou_sum, rel=1e-12)
  assert record["pq_tp"].tolist() == [0, 2, 1, 0, 0]  # touching and borderline pairs unmatched
  assert panoptic.pq(record) == pytest.approx(np.mean([r[0] for r in reference]), rel=1e-12)
  totals = np.sum([r[1] for r in reference], axis=0)
  dq = totals[0] / (totals[0] + 0.5 * totals[1] + 0.5 * totals[2] + 1e-6)
  assert panoptic.pq_dataset(record) == pytest.approx(
    dq * totals[3] / (totals[0] + 1e-6), rel=1e-12
  )


def test_binary_prediction_uses_8_connected_components():
  binary = PRED > 0
  binary[1, 13, 12] = True  # touches the first square only diagonally: joins it
  labels = metrics.connected_components(binary)
  for image, expected in zip(binary, labels):
    np.testing.assert_array_equal(measure.label(image, connectivity=2), expected)
  record = metrics.panoptic_counts(GT, binary)
  for i, (g, p) in enumerate(zip(GT, labels)):
    _, (tp, fp, fn, iou_sum) = reference_get_pq(g, p)
    assert (record["pq_tp"][i], record["pq_fp"][i], record["pq_fn"][i]) == (tp, fp, fn)
    assert record["pq_iou_sum"][i] == pytest.approx(iou_sum, rel=1e-12)


def test_mpq_plus_matches_reference():
  rng = np.random.default_rng(0)
  num_classes = 3
  gt_classes = np.zeros_like(GT)
  pred_classes = np.zeros_like(PRED)
  for b in range(len(GT)):  # one class per instance; the prediction sometimes disagrees
    for i in np.unique(GT[b])[1:]:
      gt_classes[b][GT[b] == i] = rng.integers(1, num_classes + 1)
    for i in np.unique(PRED[b])[1:]:
      pred_classes[b][PRED[b] == i] = rng.integers(1, num_classes + 1)
  record = metrics.panoptic_counts(GT, PRED, gt_classes, pred_classes, num_classes=num_classes)
  assert record["class_tp"].shape == (len(GT), num_classes)
  expected = reference_mpq_plus(GT, PRED, gt_classes, pred_classes, num_classes)
  assert panoptic.mpq_plus(record) == pytest.approx(expected, rel=1e-12)
  report = metrics.compute_results(record)
  assert set(report.values) == {"pq", "pq_dataset", "mpq_plus"}
  assert report.values["mpq_plus"] == pytest.approx(expected, rel=1e-12)
  assert report.cases["pq"] == metrics.CaseCounts(5, 5, 0)
  assert "IoU > 0.5" in report.conventions["pq"].definition


def test_empty_patch_contributes_zero_and_bad_inputs_fail():
  record = metrics.panoptic_counts(GT[3:4], PRED[3:4])
  assert panoptic.pq(record) == 0.0
  with pytest.raises(TypeError, match="integer label map"):
    metrics.panoptic_counts(GT.astype(np.float32), PRED)
  with pytest.raises(ValueError, match="both `gt_classes` and `pred_classes`"):
    metrics.panoptic_counts(GT, PRED, gt_classes=GT)
  with pytest.raises(ValueError, match=r"\(B, H, W\)"):
    metrics.panoptic_counts(GT[0], PRED[0])
