"""Overlap metrics: Dice, IoU, MedISeg mIoU and the ISIC 2018 thresholded Jaccard.

Definitions are those of docs/metrics.md. Per-image values come from pixel counts,
which are exact integers, so every aggregation is computed from counts:

* `per_image_mean`: mean over images of the per-image score (ISIC, MONAI, nnU-Net);
* `global`: one confusion matrix summed over all test pixels;
* `medi_seg_miou` (IoU only): per image 1/2 (IoU_fg + IoU_bg), then the mean
  (what MedISeg calls mIoU).

Empty cases (`empty` policy): `score` (default) gives Dice = IoU = 1 when both
masks are empty and 0 when only the ground truth is empty; `skip_empty_gt` drops
images with an empty ground truth from every aggregation (MedISeg / CTO).

The per-image functions take numpy or jax arrays and return the same kind, so
they run inside a jitted evaluation step; the aggregations run on the host in
float64.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from sgdnet_jax.metrics import _arrays

AGGREGATIONS = ("per_image_mean", "global", "medi_seg_miou")
EMPTY_POLICIES = ("score", "skip_empty_gt")
ISIC_JACCARD_THRESHOLD = 0.65
COUNT_KEYS = ("tp", "fp", "fn", "tn")


@dataclasses.dataclass(frozen=True)
class Aggregate:
  """One aggregated metric value and the number of images it used."""

  value: float
  n_used: int
  n_total: int

  @property
  def n_excluded(self) -> int:
    return self.n_total - self.n_used


def confusion_counts(pred: Any, gt: Any) -> dict[str, Any]:
  """Per-image pixel counts of boolean masks (B, H, W): tp, fp, fn, tn, each (B,).

  numpy in -> int64 numpy out; jax in -> int32 jax out (jit-able).
  """
  _arrays.check_mask_pair(pred, gt, batched=True, where="confusion_counts")
  xp = _arrays.namespace(pred, gt)
  axes = (-2, -1)
  return {
    "tp": xp.sum(pred & gt, axis=axes),
    "fp": xp.sum(pred & ~gt, axis=axes),
    "fn": xp.sum(~pred & gt, axis=axes),
    "tn": xp.sum(~pred & ~gt, axis=axes),
  }


def dice_from_counts(tp: Any, fp: Any, fn: Any) -> Any:
  """Dice = 2TP / (2TP + FP + FN); 1 when both masks are empty."""
  xp = _arrays.namespace(tp, fp, fn)
  denominator = 2 * tp + fp + fn
  return xp.where(denominator > 0, 2 * tp / xp.maximum(denominator, 1), 1.0)


def iou_from_counts(tp: Any, fp: Any, fn: Any) -> Any:
  """IoU = TP / (TP + FP + FN); 1 when both masks are empty."""
  xp = _arrays.namespace(tp, fp, fn)
  denominator = tp + fp + fn
  return xp.where(denominator > 0, tp / xp.maximum(denominator, 1), 1.0)


def medi_seg_miou_from_counts(tp: Any, fp: Any, fn: Any, tn: Any) -> Any:
  """MedISeg's mIoU of one image: 1/2 (IoU of the foreground + IoU of the background)."""
  return 0.5 * (iou_from_counts(tp, fp, fn) + iou_from_counts(tn, fn, fp))


def thresholded_jaccard(iou: Any, threshold: float = ISIC_JACCARD_THRESHOLD) -> Any:
  """ISIC 2018 score of one image: its IoU, or 0 when the IoU is below `threshold`."""
  xp = _arrays.namespace(iou)
  return xp.where(iou >= threshold, iou, 0.0)


def overlap_scores(counts: Mapping[str, Any]) -> dict[str, Any]:
  """Per-image dice, iou, medi_seg_miou and thresholded_jaccard from confusion counts."""
  tp, fp, fn, tn = (counts[k] for k in COUNT_KEYS)
  iou = iou_from_counts(tp, fp, fn)
  return {
    "dice": dice_from_counts(tp, fp, fn),
    "iou": iou,
    "medi_seg_miou": medi_seg_miou_from_counts(tp, fp, fn, tn),
    "thresholded_jaccard": thresholded_jaccard(iou),
  }


def aggregate(
  counts: Mapping[str, Any],
  metric: str,
  aggregation: str = "per_image_mean",
  empty: str = "score",
  jaccard_threshold: float = ISIC_JACCARD_THRESHOLD,
) -> Aggregate:
  """Aggregates one overlap metric over images from per-image counts (host, float64).

  Args:
    counts: per-image `tp`, `fp`, `fn`, `tn` arrays of shape (N,).
    metric: `dice`, `iou` or `thresholded_jaccard`.
    aggregation: `per_image_mean` or `global`; for `iou` also `medi_seg_miou`.
      `thresholded_jaccard` is defined as a per-image mean only.
    empty: `score` or `skip_empty_gt` (see the module docstring).
    jaccard_threshold: the thresholded Jaccard cut-off (ISIC 2018: 0.65).

  Returns:
    The value (NaN if no image is used) with n_used / n_total.
  """
  allowed = {
    "dice": ("per_image_mean", "global"),
    "iou": AGGREGATIONS,
    "thresholded_jaccard": ("per_image_mean",),
  }
  if metric not in allowed:
    raise ValueError(
      f"overlap.aggregate: unknown metric {metric!r}; expected one of {tuple(allowed)}"
    )
  if aggregation not in allowed[metric]:
    raise ValueError(
      f"overlap.aggregate: aggregation {aggregation!r} is not defined for {metric};"
      f" expected one of {allowed[metric]}"
    )
  if empty not in EMPTY_POLICIES:
    raise ValueError(f"overlap.aggregate: empty policy {empty!r}; expected one of {EMPTY_POLICIES}")
  missing = [k for k in COUNT_KEYS if k not in counts]
  if missing:
    raise ValueError(f"overlap.aggregate: counts lack {missing}")
  tp, fp, fn, tn = (np.asarray(counts[k], dtype=np.int64).reshape(-1) for k in COUNT_KEYS)
  used = np.ones(tp.shape, bool) if empty == "score" else (tp + fn) > 0
  n_used, n_total = int(used.sum()), int(tp.size)
  if n_used == 0:
    return Aggregate(float("nan"), 0, n_total)
  tp, fp, fn, tn = tp[used], fp[used], fn[used], tn[used]
  if aggregation == "global":
    tp, fp, fn = tp.sum(), fp.sum(), fn.sum()
    score = dice_from_counts(tp, fp, fn) if metric == "dice" else iou_from_counts(tp, fp, fn)
    return Aggregate(float(score), n_used, n_total)
  if aggregation == "medi_seg_miou":
    per_image = medi_seg_miou_from_counts(tp, fp, fn, tn)
  elif metric == "dice":
    per_image = dice_from_counts(tp, fp, fn)
  elif metric == "iou":
    per_image = iou_from_counts(tp, fp, fn)
  else:
    per_image = thresholded_jaccard(iou_from_counts(tp, fp, fn), jaccard_threshold)
  return Aggregate(float(np.mean(per_image)), n_used, n_total)
