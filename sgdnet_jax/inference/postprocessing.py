"""Outputs of the probability map: resized, stored as float16, and cleaned up.

`resize_probability` brings a map to a case's original size (as `evaluate` at native resolution
and `predict` do); `float16_probability` rounds a map so that `> 0.5` on the stored values gives
exactly the mask of the float32 map; `postprocess` keeps the largest component, fills holes, or
drops small components (8-connected, as the instance metrics count components).
"""

from collections.abc import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from sgdnet_jax.core import errors

POST_STEPS = ("largest", "fill_holes", "min_size=N")
_EIGHT_CONNECTED = np.ones((3, 3), bool)


def resize_probability(probability: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear (PIL, half-pixel centres) resize of a (h, w) float map to (height, width)."""
  image = Image.fromarray(probability.astype(np.float32), mode="F")
  return np.asarray(image.resize((width, height), Image.BILINEAR))


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
