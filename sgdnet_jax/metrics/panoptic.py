"""Panoptic quality as in the CoNIC challenge: `pq`, `pq_dataset` and `mpq_plus` (host).

* Instances: ground truth from its instance map (0 = background); predictions
  from the model's instance map or, for a binary prediction, its
  8-connected components.
* Matching: a (gt, pred) pair is a true positive iff IoU > 0.5 (strictly); the
  pairing is unique at this threshold, so no assignment solver is needed.
* DQ = TP / (TP + FP/2 + FN/2 + 1e-6), SQ = sum IoU_TP / (TP + 1e-6), PQ = DQ SQ.
* `pq`: PQ per patch (`pq_per_patch`), then the mean over patches (a patch with neither gt
  nor prediction contributes 0, as in CoNIC's `get_pq`).
* `pq_dataset`: TP, FP, FN and sum IoU summed over all patches, then PQ once.
* `mpq_plus`: `pq_dataset` per class (the class-c instances are the pixels of
  the instance map whose class map equals c), then the mean over the classes
  (CoNIC: 6 classes; a class absent everywhere contributes 0).
"""

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import ndimage

MATCH_IOU = 0.5
EPSILON = 1e-6
COUNT_KEYS = ("pq_tp", "pq_fp", "pq_fn", "pq_iou_sum")
CLASS_COUNT_KEYS = ("class_tp", "class_fp", "class_fn", "class_iou_sum")
CONIC_NUM_CLASSES = 6


def connected_components(binary: Any) -> np.ndarray:
  """Instance maps (..., H, W) int32 of boolean masks: 8-connected components, 1..n."""
  binary = np.asarray(binary)
  if binary.dtype != bool or binary.ndim < 2:
    raise TypeError(
      "connected_components: expected a boolean array (..., H, W), got"
      f" dtype {binary.dtype}, shape {binary.shape}"
    )
  eight_connected = np.ones((3, 3), bool)
  labels = np.zeros(binary.shape, np.int32)
  for index in np.ndindex(binary.shape[:-2]):  # each image on its own
    labels[index] = ndimage.label(binary[index], structure=eight_connected)[0]
  return labels


def _check_labels(labels: np.ndarray, name: str, where: str) -> None:
  if not np.issubdtype(labels.dtype, np.integer):
    raise TypeError(f"{where}: `{name}` must be an integer label map, got dtype {labels.dtype}")
  if labels.size and labels.min() < 0:
    raise ValueError(f"{where}: `{name}` has negative labels")


def match_counts(gt_instances: Any, pred_instances: Any) -> tuple[int, int, int, float]:
  """(TP, FP, FN, sum of matched IoU) of two instance maps (H, W); 0 is background."""
  gt = np.asarray(gt_instances).reshape(-1).astype(np.int64)
  pred = np.asarray(pred_instances).reshape(-1).astype(np.int64)
  gt_ids, gt_areas = np.unique(gt[gt > 0], return_counts=True)
  pred_ids, pred_areas = np.unique(pred[pred > 0], return_counts=True)
  overlap = (gt > 0) & (pred > 0)
  if not overlap.any():
    return 0, len(pred_ids), len(gt_ids), 0.0
  stride = int(pred.max()) + 1
  pairs, intersections = np.unique(gt[overlap] * stride + pred[overlap], return_counts=True)
  pair_gt_area = gt_areas[np.searchsorted(gt_ids, pairs // stride)]
  pair_pred_area = pred_areas[np.searchsorted(pred_ids, pairs % stride)]
  iou = intersections / (pair_gt_area + pair_pred_area - intersections)
  matched = iou > MATCH_IOU
  tp = int(matched.sum())
  return tp, len(pred_ids) - tp, len(gt_ids) - tp, float(iou[matched].sum())


def pq_from_counts(tp: Any, fp: Any, fn: Any, iou_sum: Any) -> tuple[Any, Any, Any]:
  """(DQ, SQ, PQ) from match counts, with CoNIC's 1e-6 terms."""
  dq = tp / (tp + 0.5 * fp + 0.5 * fn + EPSILON)
  sq = iou_sum / (tp + EPSILON)
  return dq, sq, dq * sq


def _as_instances(pred: np.ndarray, where: str) -> np.ndarray:
  if pred.dtype == bool:
    return connected_components(pred)
  _check_labels(pred, "pred", where)
  return pred


def panoptic_counts(
  gt_instances: Any,
  pred: Any,
  gt_classes: Any = None,
  pred_classes: Any = None,
  num_classes: int = CONIC_NUM_CLASSES,
) -> dict[str, np.ndarray]:
  """Per-patch panoptic record of a batch (B, H, W): the input of `compute_results`.

  Args:
    gt_instances: integer instance maps (B, H, W), 0 = background.
    pred: boolean masks (B, H, W), turned into 8-connected instances, or integer
      instance maps (B, H, W).
    gt_classes: optional integer class maps (B, H, W), 0 = background, 1..C.
    pred_classes: class maps of the prediction; required with `gt_classes`.
    num_classes: number of foreground classes (CoNIC: 6).

  Returns:
    `pq_tp`, `pq_fp`, `pq_fn`, `pq_iou_sum` (B,) and, with classes,
    `class_tp`, `class_fp`, `class_fn`, `class_iou_sum` (B, C).
  """
  where = "panoptic_counts"
  gt_instances, pred = np.asarray(gt_instances), np.asarray(pred)
  _check_labels(gt_instances, "gt_instances", where)
  if gt_instances.ndim != 3 or pred.shape != gt_instances.shape:
    raise ValueError(
      f"{where}: expected (B, H, W) maps of one shape, got gt_instances"
      f" {gt_instances.shape} and pred {pred.shape}"
    )
  if (gt_classes is None) != (pred_classes is None):
    raise ValueError(f"{where}: give both `gt_classes` and `pred_classes`, or neither")
  pred_instances = _as_instances(pred, where)
  record = _counts_record(
    [match_counts(g, p) for g, p in zip(gt_instances, pred_instances)], COUNT_KEYS
  )
  if gt_classes is None:
    return record
  gt_classes, pred_classes = np.asarray(gt_classes), np.asarray(pred_classes)
  for name, classes in (("gt_classes", gt_classes), ("pred_classes", pred_classes)):
    if classes.shape != gt_instances.shape:
      raise ValueError(f"{where}: `{name}` shape {classes.shape} differs from {gt_instances.shape}")
    _check_labels(classes, name, where)
  per_class = [
    match_counts(g * (gc == c), p * (pc == c))
    for g, p, gc, pc in zip(gt_instances, pred_instances, gt_classes, pred_classes)
    for c in range(1, num_classes + 1)
  ]
  class_record = _counts_record(per_class, CLASS_COUNT_KEYS)
  record.update({k: v.reshape(-1, num_classes) for k, v in class_record.items()})
  return record


def _counts_record(
  counts: list[tuple[int, int, int, float]], keys: tuple[str, ...]
) -> dict[str, np.ndarray]:
  table = np.array(counts, np.float64).reshape(-1, 4)
  record = {key: table[:, i].astype(np.int64) for i, key in enumerate(keys[:3])}
  record[keys[3]] = table[:, 3]
  return record


def pq_per_patch(record: Mapping[str, Any]) -> np.ndarray:
  """PQ of every patch (B,): the per-case values `pq` averages (0 without gt and prediction)."""
  return pq_from_counts(*(np.asarray(record[k], np.float64) for k in COUNT_KEYS))[2]


def pq(record: Mapping[str, Any]) -> float:
  """CoNIC / HoVer-Net `pq`: PQ of every patch, then the mean over patches."""
  return float(np.mean(pq_per_patch(record)))


def pq_dataset(record: Mapping[str, Any]) -> float:
  """PQ of the counts summed over all patches."""
  return float(pq_from_counts(*(np.sum(record[k], dtype=np.float64) for k in COUNT_KEYS))[2])


def mpq_plus(record: Mapping[str, Any]) -> float:
  """CoNIC mPQ+: per class, PQ of the counts summed over patches; then the class mean."""
  totals = [np.sum(record[k], axis=0, dtype=np.float64) for k in CLASS_COUNT_KEYS]
  return float(np.mean(pq_from_counts(*totals)[2]))
