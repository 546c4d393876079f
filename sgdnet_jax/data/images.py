"""Decoding and resizing of images and masks, shared by preparation, evaluation and prediction.

Conventions (SPEC §0.9, DATA.md): images become 8-bit RGB (grayscale expanded, alpha dropped) and
are resized bilinearly (PIL, antialiased); masks are binarised with `> 0` and resized by nearest
neighbour. JPEGs are decoded with DCT scaling (`draft`) to the smallest size not below the target
before the bilinear resize, which is several times faster on large dermoscopy photographs. EXIF
orientation is ignored: the masks are drawn on the stored pixel grid.
"""

import io
import os

import numpy as np
from PIL import Image

# What PIL raises on a missing, truncated or corrupt file.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def load_rgb(
  path: os.PathLike, draft_size: int | None = None
) -> tuple[Image.Image, tuple[int, int], str]:
  """Decodes an image completely as RGB.

  Returns the image, its original (height, width) and a note ('' or how it was converted). With
  `draft_size`, a JPEG may be decoded at a reduced scale that keeps both sides at least
  `draft_size`. Raises one of DECODE_ERRORS if the file cannot be read completely.
  """
  with Image.open(path) as image:
    original_size = (image.size[1], image.size[0])
    if draft_size:
      image.draft("RGB", (draft_size, draft_size))
    image.load()
    if image.mode == "RGB":
      return image.copy(), original_size, ""
    note = {
      "L": "grayscale expanded to RGB",
      "RGBA": "alpha channel dropped",
      "LA": "grayscale expanded to RGB, alpha channel dropped",
    }.get(image.mode, f"converted from PIL mode {image.mode} to RGB")
    return image.convert("RGB"), original_size, note


def load_mask(path: os.PathLike) -> tuple[np.ndarray, str]:
  """Decodes a mask file completely: its values (see `mask_values`) and a conversion note."""
  with Image.open(path) as image:
    image.load()
    return mask_values(image)


def mask_values(image: Image.Image) -> tuple[np.ndarray, str]:
  """The mask's pixel values as a 2-D array, and a note ('' or how it was converted).

  Mode '1' (bilevel BMP, as PH2 masks often load) gives bool; integer modes give their values;
  colour masks are converted to grayscale first.
  """
  if image.mode in ("1", "L", "I", "I;16", "I;16B", "I;16L"):
    return np.asarray(image), ""
  return np.asarray(image.convert("L")), f"mask converted from PIL mode {image.mode} to grayscale"


def binary_problem(values: np.ndarray) -> str:
  """'' if the mask is binary-like (0 and at most one other value), else what is wrong."""
  if values.dtype == np.bool_:
    return ""
  if values.dtype == np.uint8:
    present = np.flatnonzero(np.bincount(values.ravel(), minlength=256))
  else:
    present = np.unique(values)
  if len(present) == 1 or (len(present) == 2 and present[0] == 0):
    return ""
  shown = ", ".join(str(v) for v in present[:8]) + (", ..." if len(present) > 8 else "")
  return (
    f"{len(present)} distinct values ({shown}); expected 0 for background and one "
    "foreground value such as 255"
  )


def resize_image(image: Image.Image, size: int) -> np.ndarray:
  """Bilinear resize of an RGB image to (size, size, 3) uint8."""
  if image.size != (size, size):
    image = image.resize((size, size), Image.BILINEAR)
  return np.asarray(image, dtype=np.uint8)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
  """Nearest-neighbour resize of a 2-D mask or label map to (size, size), same dtype."""
  if mask.shape == (size, size):
    return np.ascontiguousarray(mask)
  small = mask.dtype in (np.bool_, np.uint8)  # PIL mode L; other integers go through mode I.
  resized = Image.fromarray(mask.astype(np.uint8 if small else np.int32))
  return np.asarray(resized.resize((size, size), Image.NEAREST)).astype(mask.dtype)


def encode_mask_png(mask: np.ndarray) -> bytes:
  """A boolean mask as a 1-bit PNG (compact and lossless)."""
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(mask, dtype=bool)).save(buffer, format="PNG")
  return buffer.getvalue()


def decode_mask(data: bytes) -> np.ndarray:
  """A mask file's bytes (PNG, BMP, ...) as a boolean (H, W) array, foreground = value > 0."""
  return load_mask(io.BytesIO(data))[0] > 0
