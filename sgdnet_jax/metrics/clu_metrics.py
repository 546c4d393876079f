"""clu metric objects: mergeable across batches, devices and hosts.

* `ConfusionSums`: pixel counts TP, FP, FN, TN summed over images, built inside
  a jitted step (or on the host), merged with `merge` and across devices with
  `reduce` / `Collection.gather_from_model_output`. Counts are kept exact beyond
  int32 as two int32 words (high * 2**20 + low), so a dataset at its original
  resolution does not overflow. `compute()` gives the `global` Dice and IoU.
* `PerImageValues`: a `clu.metrics.CollectingMetric` of the per-image records
  of `per_image_metrics[_jax]` / `panoptic_counts`; it keeps one row per real
  image (the `mask` of padded evaluation batches is applied in `compute`) and
  feeds `summarize`, which needs per-image values for per-image means, the
  empty policies and n_used / n_total.

`PerImageValues.from_model_output` runs on the host and gathers its inputs
across processes (`multihost_utils.process_allgather`), so every process must
call it for every batch; after the loop every process holds all images.
"""

from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics
from jax.experimental import multihost_utils

from sgdnet_jax.metrics import overlap, panoptic, surface

PER_IMAGE_FIELDS = (
  overlap.COUNT_KEYS
  + ("dice", "iou")
  + surface.DISTANCE_KEYS
  + panoptic.COUNT_KEYS
  + panoptic.CLASS_COUNT_KEYS
)
_LOW_BITS = 20


def _carry(high: jax.Array, low: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Moves whole multiples of 2**20 from the low word into the high word."""
  return high + (low >> _LOW_BITS), low & ((1 << _LOW_BITS) - 1)


@flax.struct.dataclass
class ConfusionSums(clu_metrics.Metric):
  """TP, FP, FN, TN pixel counts over all (unmasked) images, exact up to 2**51 pixels."""

  high: jax.Array  # (4,) int32, in the order of overlap.COUNT_KEYS
  low: jax.Array  # (4,) int32, each < 2**20 after a carry
  images: jax.Array  # () int32

  @classmethod
  def empty(cls) -> "ConfusionSums":
    zeros = jnp.zeros((len(overlap.COUNT_KEYS),), jnp.int32)
    return cls(high=zeros, low=zeros, images=jnp.array(0, jnp.int32))

  @classmethod
  def from_model_output(cls, pred: Any, gt: Any, mask: Any = None, **_) -> "ConfusionSums":
    """From boolean masks (B, H, W); `mask` (B,) marks the real images of a padded batch."""
    counts = overlap.confusion_counts(jnp.asarray(pred), jnp.asarray(gt))
    per_image = jnp.stack([counts[k] for k in overlap.COUNT_KEYS], axis=-1)
    valid = jnp.ones(per_image.shape[:1], bool) if mask is None else jnp.asarray(mask, bool)
    if valid.shape != per_image.shape[:1]:
      raise ValueError(
        f"ConfusionSums: `mask` shape {valid.shape} does not match the batch {per_image.shape[:1]}"
      )
    per_image = jnp.where(valid[:, None], per_image, 0)
    high = jnp.sum(per_image >> _LOW_BITS, axis=0, dtype=jnp.int32)
    low = jnp.sum(per_image & ((1 << _LOW_BITS) - 1), axis=0, dtype=jnp.int32)
    high, low = _carry(high, low)
    return cls(high=high, low=low, images=jnp.sum(valid, dtype=jnp.int32))

  def merge(self, other: "ConfusionSums") -> "ConfusionSums":
    high, low = _carry(self.high + other.high, self.low + other.low)
    return type(self)(high=high, low=low, images=self.images + other.images)

  def counts(self) -> dict[str, int]:
    """Exact totals on the host: tp, fp, fn, tn and the number of images."""
    totals = (np.asarray(self.high, np.int64) << _LOW_BITS) + np.asarray(self.low, np.int64)
    result = {k: int(v) for k, v in zip(overlap.COUNT_KEYS, totals)}
    result["images"] = int(self.images)
    return result

  def compute(self) -> dict[str, float]:
    """`global` Dice and IoU (one confusion matrix over all pixels), float64."""
    c = self.counts()
    return {
      "dice": float(overlap.dice_from_counts(c["tp"], c["fp"], c["fn"])),
      "iou": float(overlap.iou_from_counts(c["tp"], c["fp"], c["fn"])),
    }


@flax.struct.dataclass
class PerImageValues(clu_metrics.CollectingMetric):
  """Per-image records collected on the host; `compute()` drops padded images."""

  @classmethod
  def from_model_output(cls, mask: Any = None, **outputs: Any) -> "PerImageValues":
    """Keeps the known per-image fields of `outputs` (see `PER_IMAGE_FIELDS`).

    Args:
      mask: optional (B,) booleans, False for padding examples.
      **outputs: per-image arrays with leading axis B, e.g. the record of
        `per_image_metrics_jax`; other keys (such as `pred`, `gt`) are ignored.
    """
    fields = {k: v for k, v in outputs.items() if k in PER_IMAGE_FIELDS and v is not None}
    if not fields:
      raise ValueError(
        f"PerImageValues: none of {PER_IMAGE_FIELDS} in the outputs (got {sorted(outputs)})"
      )
    batch = {np.shape(v)[0] if np.ndim(v) else None for v in fields.values()}
    if len(batch) != 1 or None in batch:
      raise ValueError(
        f"PerImageValues: fields need one leading batch axis, got shapes"
        f" { {k: np.shape(v) for k, v in fields.items()} }"
      )
    size = batch.pop()
    fields["mask"] = np.ones(size, bool) if mask is None else mask
    if np.shape(fields["mask"]) != (size,):
      raise ValueError(f"PerImageValues: `mask` shape {np.shape(fields['mask'])} is not ({size},)")
    gathered = multihost_utils.process_allgather(fields, tiled=True)
    return cls(values={k: (np.asarray(v),) for k, v in gathered.items()})

  def compute(self) -> dict[str, np.ndarray]:
    """The collected fields of the real images, concatenated over batches and hosts."""
    if not self.values:
      return {}
    values = super().compute()
    keep = values.pop("mask").astype(bool)
    return {k: v[keep] for k, v in values.items()}


def collect(records: list[Mapping[str, Any]]) -> dict[str, np.ndarray]:
  """Merges per-batch records (each may carry a `mask`) into one record of real images.

  The plain-loop form of `PerImageValues` for scripts: the same gathering, merge
  and masking, without a clu `Collection`.
  """
  metric = PerImageValues.empty()
  for record in records:
    metric = metric.merge(PerImageValues.from_model_output(**record))
  return metric.compute()
