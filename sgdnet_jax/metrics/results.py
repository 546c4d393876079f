"""Results records: values with the convention and case counts behind each number.

`compute_results(record, options)` turns a per-image record (from
`per_image_metrics[_jax]` and/or `panoptic_counts`, merged over the test set with
`PerImageValues`) into a `MetricResults`:

* `values`: metric name -> float;
* `conventions`: metric name -> `MetricConvention(definition, empty_policy, per_case_column)`,
  the last naming the per-image field (the column of evaluate's per-case CSV) that holds the
  metric's per-case values, or None where none does (`thresholded_jaccard`, `pq_dataset`);
* `cases`: metric name -> `CaseCounts(n_used, n_total, n_excluded)`;
* `resolution`: the evaluation resolution the masks were compared at.

Which metrics appear depends on the fields present: overlap counts give
`dice`, `iou`, `thresholded_jaccard`; distances give `hd`, `hd95`, `assd`;
panoptic counts give `pq`, `pq_dataset` and, with classes, `mpq_plus`.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sgdnet_jax.metrics import overlap, panoptic, surface

_SURFACE = (
  "surface = A XOR erode(A, 3x3 cross), outside the image = background;"
  " exact Euclidean distance to the nearest surface pixel of the other mask"
)
_DICE = {
  "per_image_mean": "foreground Dice 2TP/(2TP+FP+FN) per image, mean over images",
  "global": "foreground Dice 2TP/(2TP+FP+FN) of one confusion matrix over all test pixels",
}
_IOU = {
  "per_image_mean": "foreground IoU TP/(TP+FP+FN) per image, mean over images",
  "global": "foreground IoU TP/(TP+FP+FN) of one confusion matrix over all test pixels",
  "medi_seg_miou": "MedISeg mIoU: per image (IoU_fg + IoU_bg)/2, mean over images",
}
_OVERLAP_EMPTY = {
  "score": "both masks empty -> 1; empty ground truth with a prediction -> 0; all images count",
  "skip_empty_gt": "images with an empty ground truth are skipped (MedISeg / CTO)",
}
_HD95 = {
  "pooled": "95th percentile (linear interpolation) of the pooled d(P->G) and d(G->P) (medpy hd95)",
  "max_directed": "larger of the directed 95th percentiles of d(P->G) and d(G->P)"
  " (MONAI HausdorffDistanceMetric(percentile=95))",
}
_DISTANCE_EMPTY = {
  "diagonal": "both masks empty -> excluded; exactly one empty -> the image diagonal"
  " hypot(H*row_spacing, W*col_spacing)",
  "nan": "both masks empty -> excluded; exactly one empty -> excluded (NaN-skip)",
}


@dataclasses.dataclass(frozen=True)
class MetricOptions:
  """The selectable conventions of docs/metrics.md; the defaults are the project's."""

  dice: str = "per_image_mean"  # per_image_mean | global
  iou: str = "per_image_mean"  # per_image_mean | global | medi_seg_miou
  overlap_empty: str = "score"  # score | skip_empty_gt
  hd95: str = "pooled"  # pooled | max_directed
  distance_empty: str = "diagonal"  # diagonal | nan
  jaccard_threshold: float = overlap.ISIC_JACCARD_THRESHOLD
  resolution: str = "256x256"  # the size masks were compared at, e.g. "original"
  spacing: float | tuple[float, float] | None = None  # as given to the distance functions

  def __post_init__(self):
    choices = {
      "dice": tuple(_DICE),
      "iou": tuple(_IOU),
      "overlap_empty": tuple(_OVERLAP_EMPTY),
      "hd95": tuple(_HD95),
      "distance_empty": tuple(_DISTANCE_EMPTY),
    }
    for field, allowed in choices.items():
      if getattr(self, field) not in allowed:
        raise ValueError(
          f"MetricOptions.{field}={getattr(self, field)!r}; expected one of {allowed}"
        )


@dataclasses.dataclass(frozen=True)
class MetricConvention:
  definition: str
  empty_policy: str
  per_case_column: str | None  # the per-image field of the metric's per-case values, if any


@dataclasses.dataclass(frozen=True)
class CaseCounts:
  n_used: int
  n_total: int
  n_excluded: int


@dataclasses.dataclass(frozen=True)
class MetricResults:
  """Metric values plus, for each, its convention and the images it used."""

  values: Mapping[str, float]
  conventions: Mapping[str, MetricConvention]
  cases: Mapping[str, CaseCounts]
  resolution: str

  def merged(self, other: "MetricResults") -> "MetricResults":
    """Both results in one (e.g. segmentation + panoptic); names must not clash."""
    clash = set(self.values) & set(other.values)
    if clash or self.resolution != other.resolution:
      raise ValueError(
        f"MetricResults.merged: clashing names {sorted(clash)} or resolutions"
        f" {self.resolution!r} / {other.resolution!r}"
      )
    return MetricResults(
      {**self.values, **other.values},
      {**self.conventions, **other.conventions},
      {**self.cases, **other.cases},
      self.resolution,
    )

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready form: resolution and, per metric, value, convention and case counts."""
    return {
      "resolution": self.resolution,
      "metrics": {
        name: {
          "value": value,
          **dataclasses.asdict(self.conventions[name]),
          **dataclasses.asdict(self.cases[name]),
        }
        for name, value in self.values.items()
      },
    }

  def format_table(self) -> str:
    """Human-readable table; conventions listed under it."""
    lines = [
      f"evaluation resolution: {self.resolution}",
      f"{'metric':<20} {'value':>12} {'used/total':>12} {'excluded':>9}",
    ]
    for name, value in self.values.items():
      c = self.cases[name]
      lines.append(f"{name:<20} {value:>12.6g} {f'{c.n_used}/{c.n_total}':>12} {c.n_excluded:>9}")
    lines.append("conventions:")
    for name, convention in self.conventions.items():
      lines.append(f"  {name}: {convention.definition}. Empty: {convention.empty_policy}.")
    return "\n".join(lines)


def _has(record: Mapping[str, Any], keys: Sequence[str]) -> bool:
  present = [k in record for k in keys]
  if any(present) and not all(present):
    raise ValueError(
      f"compute_results: record has only part of {keys}: missing"
      f" {[k for k, p in zip(keys, present) if not p]}"
    )
  return all(present)


def _check_distance_policy(record: Mapping[str, Any], name: str, policy: str) -> None:
  """Fails if the distances were computed under the other one-empty policy."""
  tp, fp, fn = (np.asarray(record[k], np.int64) for k in ("tp", "fp", "fn"))
  one_empty = ((tp + fp) == 0) != ((tp + fn) == 0)
  is_nan = np.isnan(np.asarray(record[name], np.float64))
  wrong = is_nan[one_empty] if policy == "diagonal" else ~is_nan[one_empty]
  if wrong.any():
    other = "nan" if policy == "diagonal" else "diagonal"
    raise ValueError(
      f"compute_results: {int(wrong.sum())} images with exactly one empty mask have {name}"
      f" computed with one_empty={other!r}, but options.distance_empty={policy!r}"
    )


def _unit(spacing: Any) -> str:
  return "in pixels" if spacing is None else f"in units of spacing {spacing}"


def compute_results(
  record: Mapping[str, Any], options: MetricOptions = MetricOptions()
) -> MetricResults:
  """Aggregates a per-image record of the whole test set into a `MetricResults`."""
  values, conventions, cases = {}, {}, {}

  def add(
    name: str,
    value: float,
    n_used: int,
    n_total: int,
    definition: str,
    empty: str,
    column: str | None = None,
  ):
    values[name] = float(value)
    conventions[name] = MetricConvention(definition, empty, column)
    cases[name] = CaseCounts(n_used, n_total, n_total - n_used)

  if _has(record, overlap.COUNT_KEYS):
    empty = _OVERLAP_EMPTY[options.overlap_empty]
    # The per-image `dice` and `iou` fields are foreground scores: MedISeg mIoU has none.
    iou_column = None if options.iou == "medi_seg_miou" else "iou"
    for name, aggregation, definition, column in (
      ("dice", options.dice, _DICE[options.dice], "dice"),
      ("iou", options.iou, _IOU[options.iou], iou_column),
      (
        "thresholded_jaccard",
        "per_image_mean",
        f"ISIC 2018: per-image foreground IoU, 0 below {options.jaccard_threshold},"
        " mean over images",
        None,
      ),
    ):
      result = overlap.aggregate(
        record, name, aggregation, options.overlap_empty, options.jaccard_threshold
      )
      add(name, result.value, result.n_used, result.n_total, definition, empty, column)

  if _has(record, surface.DISTANCE_KEYS):
    unit = _unit(options.spacing)
    definitions = {
      "hd": f"Hausdorff distance: max of d(P->G) and d(G->P), {unit}; {_SURFACE}",
      "hd95": f"{_HD95[options.hd95]}, {unit}; {_SURFACE}",
      "assd": f"mean of the pooled d(P->G) and d(G->P) (medpy >= 0.5.2 assd, MONAI"
      f" symmetric), {unit}; {_SURFACE}",
    }
    for name, field in (("hd", "hd"), ("hd95", f"hd95_{options.hd95}"), ("assd", "assd")):
      if _has(record, overlap.COUNT_KEYS):
        _check_distance_policy(record, field, options.distance_empty)
      per_image = np.asarray(record[field], np.float64)
      used = ~np.isnan(per_image)
      value = per_image[used].mean() if used.any() else np.nan
      add(
        name,
        value,
        int(used.sum()),
        per_image.size,
        definitions[name],
        _DISTANCE_EMPTY[options.distance_empty],
        field,
      )

  if _has(record, panoptic.COUNT_KEYS):
    n = int(np.size(record["pq_tp"]))
    matching = (
      "CoNIC: instances matched iff IoU > 0.5, DQ = TP/(TP+FP/2+FN/2+1e-6),"
      " SQ = sum IoU/(TP+1e-6), PQ = DQ*SQ; binary predictions split into"
      " 8-connected components"
    )
    add(
      "pq",
      panoptic.pq(record),
      n,
      n,
      f"{matching}; PQ per patch, mean over patches",
      "a patch without ground truth and prediction contributes 0",
      "pq",  # evaluate's per-case CSV computes it from each patch's counts
    )
    add(
      "pq_dataset",
      panoptic.pq_dataset(record),
      n,
      n,
      f"{matching}; TP, FP, FN and sum IoU summed over all patches, then PQ once",
      "patches without instances add nothing",
    )
    if _has(record, panoptic.CLASS_COUNT_KEYS):
      num_classes = np.shape(record["class_tp"])[-1]
      add(
        "mpq_plus",
        panoptic.mpq_plus(record),
        n,
        n,
        f"{matching}; CoNIC mPQ+: per class pq_dataset, mean over {num_classes} classes",
        "a class absent from ground truth and prediction everywhere contributes 0",
      )

  if not values:
    raise ValueError(f"compute_results: the record has no known fields (got {sorted(record)})")
  return MetricResults(values, conventions, cases, options.resolution)
