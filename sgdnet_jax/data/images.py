"""Decoding and resizing of images and masks, shared by preparation, evaluation and prediction.

Conventions (docs/data.md): images become 8-bit RGB (grayscale expanded, alpha dropped) and
are resized bilinearly (PIL, antialiased); masks are binarised with `> 0` and resized by nearest
neighbour. JPEGs are decoded with DCT scaling (`draft`) to the smallest size not below the target
before the bilinear resize, which is several times faster on large dermoscopy photographs. EXIF
orientation is ignored: the masks are drawn on the stored pixel grid.

Images with more than 8 bits per sample (16-bit PNG/TIFF, 32-bit integer or float TIFF) are
scaled linearly from their own range (darkest sample to 0, brightest to 255, all channels
together), never clipped: docs/data.md, "High-bit-depth images".
"""

import io
import os

import numpy as np
from PIL import Image

# What PIL raises on a missing, truncated or corrupt file (and UnsupportedMaskError below).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
# Single-channel PIL modes with more than 8 bits per sample.
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class UnsupportedMaskError(ValueError):
  """A mask file that decodes, but not to values that can be trusted; the message says why."""


def _decoded_from_16_bits(image: Image.Image) -> bool:
  """Whether PIL will decode this (not yet loaded) image to 8 bits from 16-bit samples.

  PIL has no 16-bit colour modes: a 48-bit RGB (or 16-bit grey+alpha) PNG or TIFF loads as 8-bit
  RGB / LA made of each sample's high byte; only the tile's raw mode (`RGB;16B`) tells.
  """
  if image.mode in HIGH_BIT_DEPTH_MODES or not image.tile:
    return False
  args = image.tile[0].args
  raw_mode = args if isinstance(args, str) else args[0] if isinstance(args, tuple) and args else ""
  return isinstance(raw_mode, str) and ";16" in raw_mode


def stretch_to_uint8(values: np.ndarray) -> np.ndarray:
  """`values` mapped linearly from their own finite range onto 0..255 (uint8, same shape).

  All channels share one range, so colours keep their balance; an image of a single value, NaN
  and infinities become 0.
  """
  values = np.asarray(values)
  # float32 is exact for 16-bit samples times 255; wider types need float64.
  values = values.astype(np.float32 if values.dtype.itemsize <= 2 else np.float64)
  finite = np.isfinite(values)
  if not finite.any():
    return np.zeros(values.shape, np.uint8)
  low, high = values[finite].min(), values[finite].max()
  if high == low:
    return np.zeros(values.shape, np.uint8)
  scaled = (values - low) * 255 / (high - low)
  return np.rint(np.where(finite, scaled, 0)).astype(np.uint8)


def load_rgb(
  path: os.PathLike, draft_size: int | None = None
) -> tuple[Image.Image, tuple[int, int], str]:
  """Decodes an image completely as RGB.

  Returns the image, its original (height, width) and a note ('' or how it was converted). With
  `draft_size`, a JPEG may be decoded at a reduced scale that keeps both sides at least
  `draft_size`. High-bit-depth images are stretched from their own range (`stretch_to_uint8`).
  Raises one of DECODE_ERRORS if the file cannot be read completely.
  """
  with Image.open(path) as image:
    original_size = (image.size[1], image.size[0])
    from_16_bits = _decoded_from_16_bits(image)
    if draft_size:
      image.draft("RGB", (draft_size, draft_size))
    image.load()
    if image.mode in HIGH_BIT_DEPTH_MODES:
      gray = Image.fromarray(stretch_to_uint8(np.asarray(image)))
      note = f"high-bit-depth image (PIL mode {image.mode}) scaled from its own range to 0..255"
      return gray.convert("RGB"), original_size, note
    if from_16_bits:
      rgb = stretch_to_uint8(np.asarray(image.convert("RGB")))
      note = "16-bit colour image scaled from its own range (of its high bytes) to 0..255"
      return Image.fromarray(rgb), original_size, note
    if image.mode == "RGB":
      return image.copy(), original_size, ""
    note = {
      "L": "grayscale expanded to RGB",
      "RGBA": "alpha channel dropped",
      "LA": "grayscale expanded to RGB, alpha channel dropped",
    }.get(image.mode, f"converted from PIL mode {image.mode} to RGB")
    return image.convert("RGB"), original_size, note


def load_mask(path: os.PathLike) -> tuple[np.ndarray, str]:
  """Decodes a mask file completely: its values (see `mask_values`) and a conversion note.

  Raises UnsupportedMaskError for a 16-bit colour mask, whose low bytes PIL drops (a label 1..255
  would read as background).
  """
  with Image.open(path) as image:
    if _decoded_from_16_bits(image):
      raise UnsupportedMaskError(
        "16-bit colour mask (the decoder keeps only the high byte of each sample, so small "
        "labels would read as background); save it as 8-bit or 16-bit grayscale"
      )
    image.load()
    return mask_values(image)


def mask_values(image: Image.Image) -> tuple[np.ndarray, str]:
  """The mask's pixel values as a 2-D array, and a note ('' or how it was converted).

  Mode '1' (bilevel BMP, as PH2 masks often load) gives bool; integer and float modes give their
  values (16-bit included, so any value > 0 stays foreground); colour masks are converted to
  grayscale first.
  """
  if image.mode in ("1", "L", *HIGH_BIT_DEPTH_MODES):
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
