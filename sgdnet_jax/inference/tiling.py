"""Tiling: an image of any size predicted at its own resolution in sliding windows.

`predict_tiled` blends the windows with Gaussian weights (sigma = tile / 8, as nnU-Net and MONAI);
`parse_tile` and `check_overlap` check `--tile` and `--overlap` before anything is loaded.
"""

import math
from collections.abc import Callable

import ml_collections
import numpy as np

from sgdnet_jax import models
from sgdnet_jax.core import errors

TILE_MODES = ("off", "auto")


def parse_tile(text: str, model_config: ml_collections.ConfigDict) -> str | int:
  """`--tile` value: 'off', 'auto' or a window size in pixels that the model takes."""
  if text in TILE_MODES:
    return text
  try:
    size = int(text)
  except ValueError:
    size = 0
  if size < 1:
    raise errors.UserError(
      f"--tile {text!r}: expected off, auto or a window size in pixels (e.g. 256)"
    )
  models.check_input_size(model_config, size, f"--tile {size}")
  return size


def check_overlap(overlap: float):
  if not 0 <= overlap < 1:
    raise errors.UserError(
      f"--overlap {overlap}: expected a fraction of the window in [0, 1), e.g. 0.5"
    )


def tile_size(tile: str | int, height: int, width: int, train_size: int) -> int:
  """The window size for an image of (height, width); 0 to resize it whole instead.

  'off' resizes every image to the training size (as the prepared training data was made);
  'auto' tiles images larger than the training size with windows of the training size; a number
  tiles every image with windows of that size.
  """
  if tile == "off":
    return 0
  if tile == "auto":
    return train_size if max(height, width) > train_size else 0
  return int(tile)


def gaussian_weights(tile: int) -> np.ndarray:
  """(tile, tile) blending weights: a Gaussian of sigma tile / 8 about the window's centre.

  Windows weigh their centres most, where the model sees the most context. The weight at the
  edge midpoints (4 sigma) is about 3e-4 and in the corners about 1e-7, never 0: every pixel of
  a window contributes, so the blended map has no division by zero.
  """
  sigma = tile / 8
  offsets = np.arange(tile) - (tile - 1) / 2
  line = np.exp(-(offsets**2) / (2 * sigma**2))
  return np.outer(line, line)


def window_starts(length: int, tile: int, overlap: float) -> list[int]:
  """Window offsets along one axis of `length` >= `tile`, evenly spaced, the last at the end.

  Neighbouring windows overlap by at least `overlap` of the window (nnU-Net's placement): the
  last window is shifted back to end at the border instead of reaching past it.
  """
  step = max(tile * (1 - overlap), 1)
  count = math.ceil((length - tile) / step) + 1
  if count == 1:
    return [0]
  return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def predict_tiled(
  batch_fn: Callable[[np.ndarray], dict[str, np.ndarray]],
  image: np.ndarray,
  tile: int,
  overlap: float,
  batch_size: int,
) -> dict[str, np.ndarray]:
  """Maps of one normalised (H, W, 3) image of any size, predicted in sliding windows.

  `batch_fn` takes (batch_size, tile, tile, 3) windows and returns (batch_size, tile, tile)
  maps. A side shorter than the window is padded symmetrically with zeros (the mean colour after
  normalisation) and cropped afterwards. Each map is the Gaussian-weighted mean of the windows
  covering a pixel, accumulated in float64; a per-pixel model gives back its untiled map.
  """
  height, width = image.shape[:2]
  pad_h, pad_w = max(tile - height, 0), max(tile - width, 0)
  top, left = pad_h // 2, pad_w // 2
  padded = np.pad(image, ((top, pad_h - top), (left, pad_w - left), (0, 0)))
  weights = gaussian_weights(tile)
  corners = [
    (y, x)
    for y in window_starts(padded.shape[0], tile, overlap)
    for x in window_starts(padded.shape[1], tile, overlap)
  ]
  sums: dict[str, np.ndarray] = {}
  total_weight = np.zeros(padded.shape[:2])
  for start in range(0, len(corners), batch_size):
    chunk = corners[start : start + batch_size]
    windows = np.zeros((batch_size, tile, tile, image.shape[2]), np.float32)
    for i, (y, x) in enumerate(chunk):
      windows[i] = padded[y : y + tile, x : x + tile]
    maps = batch_fn(windows)
    for name, values in maps.items():
      total = sums.setdefault(name, np.zeros(padded.shape[:2]))
      for i, (y, x) in enumerate(chunk):
        total[y : y + tile, x : x + tile] += weights * np.asarray(values[i], np.float64)
    for y, x in chunk:
      total_weight[y : y + tile, x : x + tile] += weights
  return {
    name: (total / total_weight)[top : top + height, left : left + width].astype(np.float32)
    for name, total in sums.items()
  }
