"""Surface distances: HD, HD95 (pooled / max_directed), ASSD, ASD — exact, two backends.

Definitions (docs/metrics.md, medpy 0.5.2 semantics):

* surface(A) = A XOR erode(A, 3x3 cross); pixels outside the image count as
  background, so a mask touching the border keeps its border pixels.
* d(A->B): for every surface pixel of A, the Euclidean distance (in `spacing`
  units) to the nearest surface pixel of B.
* hd = max of both directions; assd = mean of the concatenation of both
  directions (medpy `assd`, MONAI symmetric); asd = mean of d(pred->gt) (medpy
  `asd`).
* hd95 `pooled` (medpy `hd95`): 95th percentile, linear interpolation, of the
  concatenation of d(P->G) and d(G->P). `max_directed` (MONAI
  `HausdorffDistanceMetric(percentile=95)`): the larger of the two directed
  95th percentiles. Both are always returned: `hd95_pooled`, `hd95_max_directed`.
* Empty masks: both empty -> NaN (not counted; `n_excluded` in reports); exactly
  one empty -> `one_empty="diagonal"` (default) gives every distance metric the
  image diagonal, `one_empty="nan"` excludes the image instead.

Backends:

* `distance_metrics` (host, numpy, float64): each pair is cropped to the
  bounding box of its union, then nearest neighbours between the two surface
  point sets come from a k-d tree (exact); pixels on both surfaces are at 0
  without a search. No distance image is built, so the cost follows the number
  of surface pixels, not the image area (benchmarks/metrics.py: about 8x faster
  than medpy at 256x256 and 40x at 1024x768 on lesion masks).
* `distance_metrics_jax` (accelerator, jit-able): an exact separable squared
  Euclidean distance transform in `jax.numpy` (`squared_edt_jax`): a linear
  column pass (nearest feature above / below via cumulative max / min) then a
  min-plus row pass over the shorter image axis, evaluated in row blocks so the
  memory stays below `max_block_elements` floats regardless of the image size
  (work O(H W min(H, W)) per image). Squared distances are integers times the
  squared spacing, exact in float32 for unit spacing; the percentile uses an
  exact integer rank. No all-pairs matrix of surface pixels is ever built.
"""

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from scipy import spatial

from sgdnet_jax.metrics import _arrays

HD95_CONVENTIONS = ("pooled", "max_directed")
ONE_EMPTY_POLICIES = ("diagonal", "nan")
DISTANCE_KEYS = ("hd", "hd95_pooled", "hd95_max_directed", "assd", "asd")
PERCENTILE = 95


def surface(mask: Any) -> Any:
  """Surface pixels of boolean masks (..., H, W): mask XOR erode(mask, 3x3 cross).

  Outside the image counts as background. numpy in -> numpy out, jax in -> jax out.
  """
  xp = _arrays.namespace(mask)
  pad = [(0, 0)] * (mask.ndim - 2) + [(1, 1), (1, 1)]
  padded = xp.pad(mask, pad)
  eroded = (
    mask
    & padded[..., :-2, 1:-1]
    & padded[..., 2:, 1:-1]
    & padded[..., 1:-1, :-2]
    & padded[..., 1:-1, 2:]
  )
  return mask & ~eroded


def _check_one_empty(one_empty: str, where: str) -> None:
  if one_empty not in ONE_EMPTY_POLICIES:
    raise ValueError(f"{where}: one_empty={one_empty!r}; expected one of {ONE_EMPTY_POLICIES}")


def _rank_split(count: Any) -> tuple[Any, Any, Any]:
  """Lower index, upper index and fraction of the 95th percentile of `count` sorted values.

  The virtual index q/100 (n - 1) of numpy's linear method is split with integer
  arithmetic, so the pair of order statistics is exact for any n. Works on
  Python ints and on jax integer arrays (then an empty count gives index 0).
  """
  last = (count - 1) * (count > 0)
  scaled = PERCENTILE * last
  low = scaled // 100
  return low, low + (low < last), (scaled % 100) / 100


def _lerp(low: Any, high: Any, fraction: Any, xp) -> Any:
  """Linear interpolation written as numpy's `percentile` does (stable near 1)."""
  step = high - low
  return xp.where(fraction >= 0.5, high - step * (1 - fraction), low + step * fraction)


# ----------------------------------------------------------------------------
# Host backend (numpy + k-d tree).
# ----------------------------------------------------------------------------


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice]:
  rows = np.flatnonzero(mask.any(axis=1))
  cols = np.flatnonzero(mask.any(axis=0))
  return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _directed(points: np.ndarray, in_a: np.ndarray, in_b: np.ndarray) -> np.ndarray:
  """Distances from the points of A to the nearest point of B, in A's order.

  Points on both surfaces are at distance 0 and need no search.
  """
  distances = np.zeros(np.count_nonzero(in_a))
  search = ~in_b[in_a]
  if search.any():
    tree = spatial.cKDTree(points[in_b])
    distances[search] = tree.query(points[in_a][search])[0]
  return distances


def _surface_distance_pair(
  pred: np.ndarray, gt: np.ndarray, spacing: _arrays.Spacing
) -> tuple[np.ndarray, np.ndarray]:
  """d(P->G) and d(G->P) of two non-empty 2-D masks, each in row-major surface order.

  Both masks are cropped to the bounding box of their union first: no surface
  pixel lies outside it and the erosion sees background there either way, so
  the result is unchanged and the pixel scans shrink to the lesion's size.
  """
  box = _bounding_box(pred | gt)
  surface_p, surface_g = surface(pred[box]), surface(gt[box])
  flat = np.flatnonzero(surface_p | surface_g)  # flatnonzero: far faster than 2-D nonzero
  rows, cols = np.divmod(flat, surface_p.shape[1])
  in_p, in_g = surface_p.ravel()[flat], surface_g.ravel()[flat]
  points = np.stack([rows * spacing[0], cols * spacing[1]], axis=-1)
  return _directed(points, in_p, in_g), _directed(points, in_g, in_p)


def directed_surface_distances(
  a: np.ndarray, b: np.ndarray, spacing: float | Sequence[float] | None = None
) -> np.ndarray:
  """Distances from each surface pixel of mask `a` to the surface of mask `b` (host).

  The same values, in row-major order of `a`'s surface pixels, as medpy's
  `__surface_distances(a, b, spacing)`. An empty `a` gives an empty array; an
  empty `b` (with `a` not empty) gives +inf distances.
  """
  a, b = np.asarray(a), np.asarray(b)
  _arrays.check_mask_pair(a, b, batched=False, where="directed_surface_distances")
  spacing = _arrays.normalize_spacing(spacing, "directed_surface_distances")
  if not a.any():
    return np.zeros(0)
  if not b.any():
    return np.full(np.count_nonzero(surface(a)), np.inf)
  return _surface_distance_pair(a, b, spacing)[0]


def _percentile(values: np.ndarray) -> float:
  """numpy's `percentile(values, 95)` (linear), with a partial sort of two elements."""
  low, high, fraction = _rank_split(values.size)
  partitioned = np.partition(values, (low, high))
  return float(_lerp(partitioned[low], partitioned[high], fraction, np))


def _summarize_distances(d_pg: np.ndarray, d_gp: np.ndarray) -> tuple[float, ...]:
  """(hd, hd95_pooled, hd95_max_directed, assd, asd) of two non-empty directed lists."""
  pooled = np.concatenate([d_pg, d_gp])
  return (
    pooled.max(),
    _percentile(pooled),
    max(_percentile(d_pg), _percentile(d_gp)),
    pooled.mean(),
    d_pg.mean(),
  )


def distance_metrics(
  pred: Any, gt: Any, spacing: float | Sequence[float] | None = None, one_empty: str = "diagonal"
) -> dict[str, np.ndarray]:
  """Per-image surface-distance metrics on the host.

  Args:
    pred: boolean masks (B, H, W), numpy (or anything `np.asarray` accepts).
    gt: boolean masks (B, H, W).
    spacing: pixel size, a number or (row, column); None means 1 pixel.
    one_empty: `diagonal` or `nan`, the policy when exactly one mask is empty.

  Returns:
    `hd`, `hd95_pooled`, `hd95_max_directed`, `assd`, `asd`: float64 arrays (B,),
    NaN where the empty policy excludes an image.
  """
  pred, gt = np.asarray(pred), np.asarray(gt)
  _arrays.check_mask_pair(pred, gt, batched=True, where="distance_metrics")
  _check_one_empty(one_empty, "distance_metrics")
  spacing = _arrays.normalize_spacing(spacing, "distance_metrics")
  penalty = _arrays.image_diagonal(*pred.shape[-2:], spacing) if one_empty == "diagonal" else np.nan
  pred_empty = ~pred.any(axis=(1, 2))
  gt_empty = ~gt.any(axis=(1, 2))
  out = np.full((len(DISTANCE_KEYS), pred.shape[0]), np.nan)
  for i in range(pred.shape[0]):
    if pred_empty[i] and gt_empty[i]:
      continue
    if pred_empty[i] or gt_empty[i]:
      out[:, i] = penalty
      continue
    out[:, i] = _summarize_distances(*_surface_distance_pair(pred[i], gt[i], spacing))
  return dict(zip(DISTANCE_KEYS, out))


# ----------------------------------------------------------------------------
# Accelerator backend (jax.numpy, jit-able).
# ----------------------------------------------------------------------------


def _column_squared_distances(features: jax.Array, step: float) -> jax.Array:
  """Squared distance to the nearest feature in the same column (axis -2); inf if none."""
  height = features.shape[-2]
  axis = features.ndim - 2
  rows = lax.broadcasted_iota(jnp.int32, features.shape, axis)
  above = lax.cummax(jnp.where(features, rows, -2 * height), axis=axis)
  below = lax.cummin(jnp.where(features, rows, 3 * height), axis=axis, reverse=True)
  gap = jnp.minimum(rows - above, below - rows)  # >= 2 * height when the column is empty
  distance = gap.astype(jnp.float32) * step
  return jnp.where(gap < height, distance * distance, jnp.inf)


def _row_min_plus(column_sq: jax.Array, step: float, max_block_elements: int) -> jax.Array:
  """out[..., j] = min_k column_sq[..., k] + ((j - k) step)^2 along the last axis."""
  width = column_sq.shape[-1]
  offsets = (jnp.arange(width)[:, None] - jnp.arange(width)[None, :]).astype(jnp.float32) * step
  parabola = offsets * offsets  # (output column j, input column k)
  rows = column_sq.reshape(-1, width)
  rows_per_block = max(1, min(rows.shape[0], max_block_elements // (width * width)))
  envelope = lax.map(
    lambda row: jnp.min(row[None, :] + parabola, axis=-1), rows, batch_size=rows_per_block
  )
  return envelope.reshape(column_sq.shape)


def squared_edt_jax(
  features: Any,
  spacing: float | Sequence[float] | None = None,
  *,
  max_block_elements: int = 1 << 24,
) -> jax.Array:
  """Exact squared Euclidean distance transform, jit-able.

  Args:
    features: boolean array (..., H, W); distances are measured to its True pixels.
    spacing: pixel size, a number or (row, column); None means 1.
    max_block_elements: bound on the floats materialised by the quadratic pass.

  Returns:
    float32 (..., H, W): squared distance from every pixel to the nearest True
    pixel of the same image, 0 on True pixels, +inf in an image without any.
  """
  features = jnp.asarray(features)
  if features.dtype != bool or features.ndim < 2:
    raise TypeError(
      f"squared_edt_jax: `features` must be a boolean array (..., H, W);"
      f" got dtype {features.dtype}, shape {features.shape}"
    )
  row_step, col_step = _arrays.normalize_spacing(spacing, "squared_edt_jax")
  if features.shape[-1] > features.shape[-2]:  # the quadratic pass runs on the shorter axis
    transposed = squared_edt_jax(
      jnp.swapaxes(features, -1, -2), (col_step, row_step), max_block_elements=max_block_elements
    )
    return jnp.swapaxes(transposed, -1, -2)
  column_sq = _column_squared_distances(features, row_step)
  return _row_min_plus(column_sq, col_step, max_block_elements)


def _sorted_distances(edt: jax.Array, member: jax.Array) -> jax.Array:
  """Distances on `member` pixels sorted ascending per image (B, H*W); +inf after them."""
  keys = jnp.where(member, jnp.sqrt(edt), jnp.inf)
  return jnp.sort(keys.reshape(keys.shape[0], -1), axis=-1)


def _at(sorted_values: jax.Array, index: jax.Array) -> jax.Array:
  return jnp.take_along_axis(sorted_values, index[:, None], axis=-1)[:, 0]


def _percentile_sorted(sorted_values: jax.Array, count: jax.Array) -> jax.Array:
  """95th percentile (linear) of the first `count` entries of each sorted row."""
  low, high, fraction = _rank_split(count)
  return _lerp(_at(sorted_values, low), _at(sorted_values, high), fraction, jnp)


def _sum_finite(sorted_values: jax.Array, count: jax.Array, block: int) -> jax.Array:
  """Sum of the first `count` entries per row, in blocks of `block` to keep float32 sums short."""
  index = jnp.arange(sorted_values.shape[-1])
  values = jnp.where(index < count[:, None], sorted_values, 0.0)
  return jnp.sum(jnp.sum(values.reshape(values.shape[0], -1, block), axis=-1), axis=-1)


@functools.partial(jax.jit, static_argnames=("spacing", "one_empty", "max_block_elements"))
def distance_metrics_jax(
  pred: jax.Array,
  gt: jax.Array,
  spacing: float | tuple[float, float] | None = None,
  one_empty: str = "diagonal",
  max_block_elements: int = 1 << 24,
) -> dict[str, jax.Array]:
  """Per-image surface-distance metrics on the accelerator (jitted).

  Same arguments and keys as `distance_metrics` (spacing must be hashable: a
  number or a tuple); returns float32 jax arrays (B,). Agrees with the host
  backend and medpy to about 1e-7 relative.
  """
  _arrays.check_mask_pair(pred, gt, batched=True, where="distance_metrics_jax")
  _check_one_empty(one_empty, "distance_metrics_jax")
  spacing = _arrays.normalize_spacing(spacing, "distance_metrics_jax")
  batch, height, width = pred.shape
  surface_p, surface_g = surface(pred), surface(gt)
  edt = squared_edt_jax(
    jnp.stack([surface_g, surface_p]), spacing, max_block_elements=max_block_elements
  )
  sorted_pg = _sorted_distances(edt[0], surface_p)  # d(P->G) on the prediction's surface
  sorted_gp = _sorted_distances(edt[1], surface_g)  # d(G->P) on the ground truth's surface
  sorted_pooled = jnp.sort(jnp.concatenate([sorted_pg, sorted_gp], axis=-1), axis=-1)
  count_pg = jnp.sum(surface_p, axis=(-2, -1), dtype=jnp.int32)
  count_gp = jnp.sum(surface_g, axis=(-2, -1), dtype=jnp.int32)
  count = count_pg + count_gp
  sum_pg = _sum_finite(sorted_pg, count_pg, width)
  sum_gp = _sum_finite(sorted_gp, count_gp, width)
  hd = _at(sorted_pooled, jnp.maximum(count - 1, 0))
  hd95_pooled = _percentile_sorted(sorted_pooled, count)
  hd95_max_directed = jnp.maximum(
    _percentile_sorted(sorted_pg, count_pg), _percentile_sorted(sorted_gp, count_gp)
  )
  assd = (sum_pg + sum_gp) / jnp.maximum(count, 1)
  asd = sum_pg / jnp.maximum(count_pg, 1)

  pred_empty = ~jnp.any(pred, axis=(-2, -1))
  gt_empty = ~jnp.any(gt, axis=(-2, -1))
  penalty = _arrays.image_diagonal(height, width, spacing) if one_empty == "diagonal" else jnp.nan
  values = (hd, hd95_pooled, hd95_max_directed, assd, asd)
  return {
    key: jnp.where(
      pred_empty & gt_empty, jnp.nan, jnp.where(pred_empty | gt_empty, penalty, value)
    ).astype(jnp.float32)
    for key, value in zip(DISTANCE_KEYS, values)
  }
