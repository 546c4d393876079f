"""Segmentation metrics with stated conventions (METRICS.md): Dice, IoU, HD, HD95, ASSD, PQ.

One image pair (users, scripts; host):

    metrics.binary_metrics(pred, gt, spacing=None, hd95="pooled")
    # -> {"dice", "iou", "hd", "hd95", "assd", "asd"}; pred, gt: bool (H, W)

An evaluation loop (batches of boolean masks (B, H, W)):

    # inside the jitted eval step (accelerator; exact EDT in jax.numpy):
    record = metrics.per_image_metrics_jax(pred, gt)        # dict of (B,) arrays
    # ... or on the host (numpy, k-d tree; faster than the jax path on CPU):
    record = metrics.per_image_metrics(pred, gt)
    # per batch, on the host (every process calls it; `mask` marks real images):
    collected = collected.merge(metrics.PerImageValues.from_model_output(mask=valid, **record))
    # after the loop:
    report = metrics.summarize(collected.compute(), metrics.MetricOptions())
    report.values["dice"], report.conventions["hd95"], report.cases["hd95"].n_excluded
    report.to_dict()  # JSON, with every metric's definition, empty policy and counts

`collected` starts as `metrics.PerImageValues.empty()`; `metrics.collect(records)`
does the same merge without clu. `ConfusionSums` is a jit-able, mergeable clu
metric of exact pixel counts for the `global` Dice / IoU (e.g. a cheap
validation score); both classes fit in a `clu.metrics.Collection`.

Record fields: `tp`, `fp`, `fn`, `tn`, `dice`, `iou`, `hd`, `hd95_pooled`,
`hd95_max_directed`, `assd`, `asd` (distances NaN when excluded by the empty
policy; pass `distances=False` for overlap only). Panoptic (CoNIC, host):
`panoptic_counts(gt_instances, pred, gt_classes=None, pred_classes=None)` gives
`pq_tp`, `pq_fp`, `pq_fn`, `pq_iou_sum` (+ per-class `class_*`), collected and
summarised the same way into `pq`, `pq_dataset`, `mpq_plus`.

Conventions are chosen in `MetricOptions`: Dice / IoU aggregation
(`per_image_mean` default, `global`, `medi_seg_miou`), overlap empty policy
(`score` default, `skip_empty_gt`), HD95 (`pooled` default, `max_directed`),
distance empty policy (`diagonal` default, `nan`), resolution and spacing.
This package imports nothing of the models or data packages.
"""

from sgdnet_jax.metrics.binary import binary_metrics, per_image_metrics, per_image_metrics_jax
from sgdnet_jax.metrics.clu_metrics import PER_IMAGE_FIELDS, ConfusionSums, PerImageValues, collect
from sgdnet_jax.metrics.overlap import confusion_counts, overlap_scores
from sgdnet_jax.metrics.panoptic import connected_components, panoptic_counts
from sgdnet_jax.metrics.report import (
  CaseCounts,
  MetricConvention,
  MetricOptions,
  MetricsReport,
  summarize,
)
from sgdnet_jax.metrics.surface import (
  directed_surface_distances,
  distance_metrics,
  distance_metrics_jax,
  squared_edt_jax,
)
