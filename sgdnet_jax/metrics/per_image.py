"""`PerImageValues`: per-image metric records collected over batches and hosts (a clu metric).

It keeps one row per real image of the records of `per_image_metrics[_jax]` / `panoptic_counts`
(the `mask` of padded evaluation batches is applied in `compute`) and feeds `compute_results`,
which needs per-image values for per-image means, the empty policies and n_used / n_total.
`from_model_output` runs on the host and gathers its inputs across processes
(`multihost_utils.process_allgather`), so every process must call it for every batch; after the
loop every process holds all images. Validation and `evaluate` both collect through it.
"""

from typing import Any

import flax
import numpy as np
from clu import metrics as clu
from jax.experimental import multihost_utils

from sgdnet_jax.metrics import overlap, panoptic, surface

# The metric fields, plus `index` (the case's position in its split) to restore the split order.
PER_IMAGE_FIELDS = (
  overlap.COUNT_KEYS
  + ("dice", "iou")
  + surface.DISTANCE_KEYS
  + panoptic.COUNT_KEYS
  + panoptic.CLASS_COUNT_KEYS
  + ("index",)
)


@flax.struct.dataclass
class PerImageValues(clu.CollectingMetric):
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
