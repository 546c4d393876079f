"""Inference features shared by `predict` and `evaluate`: TTA, ensembles, tiling, clean-ups.

* Test-time augmentation (`TTA_MODES`): `none` is the plain forward (bit-identical to the
  evaluation forward); `flip` averages the foreground probability over the four mirrorings
  (identity, horizontal, vertical, both), as nnU-Net mirrors in 2-D; `flip_rot` over the eight
  symmetries of the square (four 90-degree rotations, each also mirrored). Every prediction is
  mapped back to the input's orientation before averaging.
* Ensembles: `mean_over_models` averages the probabilities of several variable sets (e.g. the
  five folds) computed by one compiled forward.
* Tiling: `predict_tiled` predicts an image of any size at its own resolution with sliding
  windows and Gaussian-weighted blending (sigma = tile / 8, as nnU-Net and MONAI).
* Outputs: `float16_probability` rounds a probability map so that `> 0.5` on the stored values
  gives exactly the mask of the float32 map; `postprocess` keeps the largest component, fills
  holes, or drops small components (8-connected, as the instance metrics count components).
* Work sharing: `share` splits a sorted input list into disjoint shares for several machines.
* Checks before anything is loaded or traced: `parse_tile` (a window size the model takes).
"""

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from scipy import ndimage

from sgdnet_jax import models
from sgdnet_jax.core import errors

TTA_MODES = ("none", "flip", "flip_rot")
TILE_MODES = ("off", "auto")
POST_STEPS = ("largest", "fill_holes", "min_size=N")
# (quarter turns, mirrored first) for each symmetry each TTA mode averages over.
_SYMMETRIES = {
  "none": ((0, False),),
  # Identity, left-right, up-down (= half turn of the left-right mirror), both (= half turn).
  "flip": ((0, False), (0, True), (2, True), (2, False)),
  "flip_rot": tuple((k, m) for k in range(4) for m in (False, True)),
}
_EIGHT_CONNECTED = np.ones((3, 3), bool)

Maps = dict[str, jax.Array]


def check_tta(tta: str):
  if tta not in TTA_MODES:
    raise errors.UserError(f"--tta {tta!r}: unknown mode; use one of {', '.join(TTA_MODES)}")


def _transform(x: jax.Array, quarter_turns: int, mirrored: bool) -> jax.Array:
  """A symmetry of the (height, width) axes 1 and 2 of an (N, H, W[, C]) array."""
  if mirrored:
    x = jnp.flip(x, axis=2)
  return jnp.rot90(x, quarter_turns, axes=(1, 2)) if quarter_turns else x


def _inverse(x: jax.Array, quarter_turns: int, mirrored: bool) -> jax.Array:
  if quarter_turns:
    x = jnp.rot90(x, -quarter_turns, axes=(1, 2))
  return jnp.flip(x, axis=2) if mirrored else x


def with_tta(forward: Callable[[jax.Array], Maps], images: jax.Array, tta: str) -> Maps:
  """Mean of `forward`'s (N, H, W) maps over the symmetries of `tta`, each mapped back.

  The transformed batches run one after another through a single traced `forward`
  (`lax.map`), so compile time and memory do not grow with the number of symmetries.
  """
  if tta == "none":
    return forward(images)
  symmetries = _SYMMETRIES[tta]
  if tta == "flip_rot" and images.shape[1] != images.shape[2]:
    raise ValueError(f"--tta flip_rot needs square inputs, got {images.shape[1:3]}")
  stacked = jnp.stack([_transform(images, k, m) for k, m in symmetries])
  outputs = jax.lax.map(forward, stacked)
  return {
    name: sum(_inverse(maps[t], k, m) for t, (k, m) in enumerate(symmetries)) / len(symmetries)
    for name, maps in outputs.items()
  }


@functools.lru_cache(maxsize=8)
def maps_fn(model, tta: str = "none", edge: bool = False, out_shardings=None) -> Callable:
  """Jitted (variables, images NHWC) -> {'probability': (N, H, W)[, 'edge': (N, H, W)]}.

  `probability` is the foreground probability of the final output o1; `edge` the SGE edge map
  (zeros for models without one). For `predict`; `evaluate` uses `probability_fn`. Cached: an
  equal model (same config) reuses the traced and compiled function.
  """
  check_tta(tta)

  def forward(variables, images):
    outputs = model.apply(variables, images, train=False)
    maps = {"probability": models.foreground_probability(outputs["o1"])}
    if edge:
      maps["edge"] = outputs["edge"][..., 0] if "edge" in outputs else jnp.zeros(images.shape[:3])
    return maps

  return jax.jit(
    lambda variables, images: with_tta(lambda x: forward(variables, x), images, tta),
    out_shardings=out_shardings,
  )


@functools.lru_cache(maxsize=8)
def probability_fn(model, tta: str = "none", out_shardings=None) -> Callable:
  """Jitted (variables, images NHWC) -> foreground probability (N, H, W), with `tta`.

  With tta='none' this is exactly evaluate's forward, so the paper's numbers do not move.
  Cached like `maps_fn`.
  """
  check_tta(tta)
  forward = lambda v, x: models.foreground_probability(model.apply(v, x, train=False)["o1"])
  if tta == "none":
    return jax.jit(forward, out_shardings=out_shardings)
  return jax.jit(
    lambda v, images: with_tta(lambda x: {"p": forward(v, x)}, images, tta)["p"],
    out_shardings=out_shardings,
  )


def mean_over_models(fn: Callable, variable_sets: Sequence[Any], images: jax.Array):
  """Mean of `fn(variables, images)` (an array or a dict of arrays) over the variable sets.

  One set returns `fn`'s output unchanged; the models run one after another on one compile.
  """
  total = fn(variable_sets[0], images)
  if len(variable_sets) == 1:
    return total
  for variables in variable_sets[1:]:
    total = jax.tree_util.tree_map(jnp.add, total, fn(variables, images))
  return jax.tree_util.tree_map(lambda t: t / len(variable_sets), total)


def check_same_structure(variable_sets: Sequence[Any], names: Sequence[str]):
  """Refuses an ensemble whose members do not share one architecture (tree and shapes)."""
  reference = jax.tree_util.tree_map(np.shape, variable_sets[0])
  for variables, name in zip(variable_sets[1:], names[1:]):
    if jax.tree_util.tree_map(np.shape, variables) != reference:
      raise errors.UserError(
        f"--workdir {name}: its model differs from that of {names[0]} (parameter names or "
        "shapes); ensemble only workdirs trained with the same model config"
      )


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


def float16_probability(probability: np.ndarray) -> np.ndarray:
  """`probability` as float16 such that `result > 0.5` equals `probability > 0.5` exactly.

  Rounding keeps order and 0.5 is exact, so only values just above 0.5 that round down to 0.5
  need care: they become the next float16 above 0.5.
  """
  half = probability.astype(np.float16)
  half[(probability > 0.5) & (half <= 0.5)] = np.nextafter(np.float16(0.5), np.float16(1))
  return half


def parse_post(spec: str) -> tuple[tuple[str, int], ...]:
  """`--post largest,fill_holes,min_size=N` -> ((step, argument), ...), in the order given."""
  steps = []
  for item in filter(None, (part.strip() for part in spec.split(","))):
    name, _, value = item.partition("=")
    if name in ("largest", "fill_holes") and not value:
      steps.append((name, 0))
    elif name == "min_size" and value.isdigit() and int(value) >= 1:
      steps.append((name, int(value)))
    else:
      raise errors.UserError(
        f"--post {spec!r}: cannot use {item!r}; give comma-separated steps from "
        f"{', '.join(POST_STEPS)} (N a positive number of pixels)"
      )
  return tuple(steps)


def postprocess(mask: np.ndarray, steps: Sequence[tuple[str, int]]) -> np.ndarray:
  """A boolean (H, W) mask after the steps of `parse_post`, applied in order.

  largest: keep the largest 8-connected component (the first in raster order on a tie);
  fill_holes: fill background regions not connected to the border; min_size=N: drop
  8-connected components of fewer than N pixels.
  """
  mask = np.asarray(mask, bool)
  for name, argument in steps:
    if name == "fill_holes":
      mask = ndimage.binary_fill_holes(mask)
      continue
    labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    if count == 0:
      continue
    sizes = np.bincount(labels.ravel())[1:]
    if name == "largest":
      mask = labels == 1 + int(np.argmax(sizes))
    else:
      keep = np.concatenate([[False], sizes >= argument])
      mask = keep[labels]
  return mask


def share(items: Sequence[Any], num_parts: int, part_id: int) -> list[Any]:
  """Share `part_id` of `num_parts` of `items`: every num_parts-th item from position part_id.

  The shares of one list are disjoint and together cover it, so `num_parts` machines given the
  same sorted input each predict a different part.
  """
  if num_parts < 1 or not 0 <= part_id < num_parts:
    raise errors.UserError(
      f"--num-parts {num_parts} --part-id {part_id}: need num-parts >= 1 and "
      "0 <= part-id < num-parts"
    )
  return list(items[part_id::num_parts])
