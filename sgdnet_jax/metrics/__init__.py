"""Segmentation metrics with stated conventions (`docs/metrics.md`): Dice, IoU, HD, HD95, ASSD, PQ.

One image pair (users, scripts; host):

    metrics.binary_metrics(pred, gt, spacing=None, hd95="pooled")
    # -> {"dice", "iou", "hd", "hd95", "assd", "asd"}; pred, gt: bool (H, W)

An evaluation loop (batches of boolean masks (B, H, W)), as validation and `evaluate` run it:

    record = metrics.per_image_metrics(pred, gt)        # host (numpy, k-d tree), or
    record = metrics.per_image_metrics_jax(pred, gt)    # inside the jitted step (exact EDT)
    # per batch, on the host (every process calls it; `mask` marks real images):
    collected = collected.merge(metrics.PerImageValues.from_model_output(mask=valid, **record))
    # after the loop:
    results = metrics.compute_results(collected.compute(), metrics.MetricOptions())
    results.values["dice"], results.conventions["hd95"], results.cases["hd95"].n_excluded

`collected` starts as `metrics.PerImageValues.empty()`. Record fields: `tp`, `fp`, `fn`, `tn`,
`dice`, `iou`, `hd`, `hd95_pooled`, `hd95_max_directed`, `assd`, `asd` (distances NaN when
excluded by the empty policy; `distances=False` for overlap only), and `index` when given.
Panoptic (CoNIC, host): `panoptic_counts(gt_instances, pred, gt_classes=None, pred_classes=None)`
gives `pq_tp`, `pq_fp`, `pq_fn`, `pq_iou_sum` (+ per-class `class_*`), collected and aggregated
the same way into `pq`, `pq_dataset`, `mpq_plus`.

Conventions are chosen in `MetricOptions`: Dice / IoU aggregation (`per_image_mean` default,
`global`, `medi_seg_miou`), overlap empty policy (`score` default, `skip_empty_gt`), HD95
(`pooled` default, `max_directed`), distance empty policy (`diagonal` default, `nan`), resolution
and spacing. This package imports nothing of the models or data packages.
"""

from sgdnet_jax.metrics.binary import binary_metrics, per_image_metrics, per_image_metrics_jax
from sgdnet_jax.metrics.overlap import confusion_counts, overlap_scores
from sgdnet_jax.metrics.panoptic import connected_components, panoptic_counts
from sgdnet_jax.metrics.per_image import PER_IMAGE_FIELDS, PerImageValues
from sgdnet_jax.metrics.results import (
  CaseCounts,
  MetricConvention,
  MetricOptions,
  MetricResults,
  compute_results,
)
from sgdnet_jax.metrics.surface import (
  directed_surface_distances,
  distance_metrics,
  distance_metrics_jax,
  squared_edt_jax,
)

__all__ = [
  "PER_IMAGE_FIELDS",
  "CaseCounts",
  "MetricConvention",
  "MetricOptions",
  "MetricResults",
  "PerImageValues",
  "binary_metrics",
  "compute_results",
  "confusion_counts",
  "connected_components",
  "directed_surface_distances",
  "distance_metrics",
  "distance_metrics_jax",
  "overlap_scores",
  "panoptic_counts",
  "per_image_metrics",
  "per_image_metrics_jax",
  "squared_edt_jax",
]
