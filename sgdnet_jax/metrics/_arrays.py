"""Input checks and numpy/jax dispatch shared by the metric modules."""

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Spacing = tuple[float, float]


def namespace(*arrays: Any):
  """Returns `jnp` if any argument is a jax array (or tracer), else `np`.

  Functions that work on both keep numpy in -> numpy out (exact int64 counts,
  float64 on the host) and jax in -> jax out (usable under `jit`).
  """
  return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def check_mask_pair(pred: Any, gt: Any, *, batched: bool, where: str) -> None:
  """Raises a clear error unless `pred` and `gt` are boolean masks of one shape."""
  for name, mask in (("pred", pred), ("gt", gt)):
    dtype = getattr(mask, "dtype", None)
    if dtype is None or dtype != np.dtype(bool):
      raise TypeError(
        f"{where}: `{name}` must be a boolean mask (threshold first, e.g."
        f" `probs > 0.5` or `mask > 0`); got {type(mask).__name__} with"
        f" dtype {dtype}"
      )
  if pred.shape != gt.shape:
    raise ValueError(
      f"{where}: `pred` shape {tuple(pred.shape)} differs from `gt` shape {tuple(gt.shape)}"
    )
  expected_ndim, layout = (3, "(B, H, W)") if batched else (2, "(H, W)")
  if pred.ndim != expected_ndim:
    raise ValueError(f"{where}: expected {layout} masks, got shape {tuple(pred.shape)}")
  if pred.shape[-1] == 0 or pred.shape[-2] == 0:
    raise ValueError(f"{where}: masks have an empty spatial axis: {tuple(pred.shape)}")


def normalize_spacing(spacing: float | Sequence[float] | None, where: str) -> Spacing:
  """Returns the pixel size as (row spacing, column spacing); None means (1, 1)."""
  if spacing is None:
    return (1.0, 1.0)
  values = (spacing, spacing) if np.isscalar(spacing) else tuple(spacing)
  if len(values) != 2:
    raise ValueError(f"{where}: `spacing` must be a number or (row, column) pair, got {spacing!r}")
  values = tuple(float(v) for v in values)
  if not all(math.isfinite(v) and v > 0 for v in values):
    raise ValueError(f"{where}: `spacing` entries must be positive and finite, got {spacing!r}")
  return values


def image_diagonal(height: int, width: int, spacing: Spacing) -> float:
  """Length of the image diagonal in spacing units (the one-empty-mask penalty)."""
  return math.hypot(height * spacing[0], width * spacing[1])
