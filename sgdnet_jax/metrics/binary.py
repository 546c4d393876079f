"""Entry points for binary segmentation: one image pair, or a batch as evaluation produces it."""

import functools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from sgdnet_jax.metrics import _arrays, overlap, surface


def binary_metrics(
  pred: Any,
  gt: Any,
  spacing: float | Sequence[float] | None = None,
  hd95: str = "pooled",
  one_empty: str = "diagonal",
) -> dict[str, float]:
  """Metrics of one predicted mask against its ground truth (host, float64).

  Args:
    pred: boolean mask (H, W).
    gt: boolean mask (H, W).
    spacing: pixel size, a number or (row, column); None means 1 pixel.
    hd95: `pooled` (medpy, default) or `max_directed` (MONAI).
    one_empty: `diagonal` (default) or `nan` when exactly one mask is empty.

  Returns:
    `dice`, `iou`, `hd`, `hd95`, `assd`, `asd` (asd = mean d(pred->gt), medpy's
    `asd(pred, gt)`). Distances are NaN when both masks are empty.
  """
  if hd95 not in surface.HD95_CONVENTIONS:
    raise ValueError(f"binary_metrics: hd95={hd95!r}; expected one of {surface.HD95_CONVENTIONS}")
  pred, gt = np.asarray(pred), np.asarray(gt)
  _arrays.check_mask_pair(pred, gt, batched=False, where="binary_metrics")
  record = per_image_metrics(pred[None], gt[None], spacing=spacing, one_empty=one_empty)
  return {
    "dice": float(record["dice"][0]),
    "iou": float(record["iou"][0]),
    "hd": float(record["hd"][0]),
    "hd95": float(record[f"hd95_{hd95}"][0]),
    "assd": float(record["assd"][0]),
    "asd": float(record["asd"][0]),
  }


def per_image_metrics(
  pred: Any,
  gt: Any,
  *,
  spacing: float | Sequence[float] | None = None,
  one_empty: str = "diagonal",
  distances: bool = True,
) -> dict[str, np.ndarray]:
  """Per-image record of a batch on the host: the input of `PerImageValues` and `compute_results`.

  Args:
    pred: boolean masks (B, H, W).
    gt: boolean masks (B, H, W).
    spacing: pixel size, a number or (row, column); None means 1 pixel.
    one_empty: `diagonal` or `nan`, the distance policy when one mask is empty.
    distances: also compute the surface-distance metrics (the costly part).

  Returns:
    Arrays (B,): `tp`, `fp`, `fn`, `tn` (int64), `dice`, `iou` and, with
    `distances`, `hd`, `hd95_pooled`, `hd95_max_directed`, `assd`, `asd`.
  """
  pred, gt = np.asarray(pred), np.asarray(gt)
  record = overlap.confusion_counts(pred, gt)
  record["dice"] = overlap.dice_from_counts(record["tp"], record["fp"], record["fn"])
  record["iou"] = overlap.iou_from_counts(record["tp"], record["fp"], record["fn"])
  if distances:
    record.update(surface.distance_metrics(pred, gt, spacing=spacing, one_empty=one_empty))
  return record


@functools.partial(jax.jit, static_argnames=("spacing", "one_empty", "distances"))
def per_image_metrics_jax(
  pred: jax.Array,
  gt: jax.Array,
  *,
  spacing: float | tuple[float, float] | None = None,
  one_empty: str = "diagonal",
  distances: bool = True,
) -> dict[str, jax.Array]:
  """The same record as `per_image_metrics`, computed on the accelerator (jitted).

  Counts are int32 and scores float32; call it inside the evaluation step and
  hand the result (with the batch's validity mask) to `PerImageValues`.
  """
  record = overlap.confusion_counts(pred, gt)
  record["dice"] = overlap.dice_from_counts(record["tp"], record["fp"], record["fn"])
  record["iou"] = overlap.iou_from_counts(record["tp"], record["fp"], record["fn"])
  if distances:
    record.update(surface.distance_metrics_jax(pred, gt, spacing=spacing, one_empty=one_empty))
  return record
