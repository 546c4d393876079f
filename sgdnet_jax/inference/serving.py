"""Masks for a folder of images from an exported model (`export`), without the rest of sgdnet_jax.

RULE: this file imports only the Python standard library, jax, numpy and pillow (PIL) - never
another sgdnet_jax module - so that it runs wherever `requirements-serving.txt` is installed (those
three, jaxlib, and flatbuffers, which `jax.export.deserialize` needs); `export` copies both files
into the model folder. tests/test_inference_export.py checks the rule.

  python -m sgdnet_jax.inference.serving --model DIR --images FOLDER --out OUT [--batch-size 8]
  python DIR/serving.py --model DIR --images FOLDER --out OUT

Images are decoded exactly as `predict` decodes them (`decode_rgb` repeats
`sgdnet_jax.data.images.load_rgb`; tests/test_inference_export.py compares the two): 8-bit RGB,
grayscale expanded, alpha dropped, images with more than 8 bits per sample stretched linearly from
their own range to 0..255. Each is resized to the model's input size with bilinear resampling (PIL),
as in training; its foreground probability is resized back to the image's own size (bilinear) and
thresholded at 0.5. `OUT/<image stem>.png` is the 0/255 mask.

The model runs on JAX's default backend when it was exported for it (`export` targets cpu, cuda
and tpu by default), else on the CPU when it was exported for the CPU; serving prints which.

Exit status 0 when every image's mask was written, 1 when some image could not be read (it is
skipped and named on stderr, the others are written), 2 for a missing or unusable model folder,
image folder or option.
"""

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence

import jax
import numpy as np
from PIL import Image

CARD_FILE = "model.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
# What PIL raises on a missing, truncated or corrupt file (as sgdnet_jax.data.images).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
# Single-channel PIL modes with more than 8 bits per sample.
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class ServingError(Exception):
  """A missing or unusable model folder, image folder or option; printed as one line."""


def backend_platform() -> str:
  """JAX's default backend as jax.export names platforms: cpu, cuda, rocm or tpu."""
  device = jax.devices()[0]
  if device.platform == "gpu":
    return "rocm" if "rocm" in device.client.platform_version.lower() else "cuda"
  return device.platform


def choose_platform(available: str, exported: Sequence[str]) -> str:
  """The platform to run a model exported for `exported` on, JAX's backend being `available`.

  That backend when the model was exported for it, else the CPU (which JAX always has) when the
  model was exported for it; else a ServingError.
  """
  if available in exported:
    return available
  if "cpu" in exported:
    return "cpu"
  raise ServingError(
    f"the model was exported for {', '.join(exported)} but JAX here runs on {available} (and "
    f"the CPU); export it again with --platforms {available} (or cpu)"
  )


class ExportedModel:
  """An exported model: `probabilities(uint8 [N, H, W, 3]) -> float32 [N, H, W, 1]`."""

  def __init__(self, directory: str | pathlib.Path):
    directory = pathlib.Path(directory)
    try:
      self.card = json.loads((directory / CARD_FILE).read_text())
      serialized = (directory / self.card["file"]).read_bytes()
    except (OSError, ValueError, KeyError) as error:
      raise ServingError(
        f"{directory}: not an exported model folder ({error}); run `export` first"
      ) from None
    self.exported = jax.export.deserialize(bytearray(serialized))
    *_, height, width, _ = self.exported.in_avals[0].shape
    self.size = (int(height), int(width))
    self.platform = choose_platform(backend_platform(), self.exported.platforms)
    self.device = jax.devices("cpu" if self.platform == "cpu" else None)[0]
    self._call = jax.jit(self.exported.call)

  def probabilities(self, images: np.ndarray) -> np.ndarray:
    """Foreground probabilities of a batch of uint8 RGB images at the model's size."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != (*self.size, 3):
      raise ServingError(
        f"images of dtype {images.dtype} and shape {images.shape}: expected uint8 "
        f"[N, {self.size[0]}, {self.size[1]}, 3]"
      )
    return np.asarray(self._call(jax.device_put(images, self.device)))


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


def decode_rgb(path: pathlib.Path) -> Image.Image:
  """The image decoded completely as 8-bit RGB, as `sgdnet_jax.data.images.load_rgb` does.

  Raises one of DECODE_ERRORS if the file cannot be read completely.
  """
  with Image.open(path) as image:
    from_16_bits = _decoded_from_16_bits(image)
    image.load()
    if image.mode in HIGH_BIT_DEPTH_MODES:
      return Image.fromarray(stretch_to_uint8(np.asarray(image))).convert("RGB")
    if from_16_bits:
      return Image.fromarray(stretch_to_uint8(np.asarray(image.convert("RGB"))))
    return image.copy() if image.mode == "RGB" else image.convert("RGB")


def load_image(path: pathlib.Path, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
  """The image as uint8 RGB at `size` (bilinear) and its original (height, width).

  Raises one of DECODE_ERRORS if the file cannot be read completely.
  """
  image = decode_rgb(path)
  original = (image.height, image.width)
  if original != size:
    image = image.resize((size[1], size[0]), Image.BILINEAR)
  return np.asarray(image, np.uint8), original


def mask_at(probability: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """A (H, W) probability map -> 0/255 uint8 mask at `size` (bilinear resize, > 0.5)."""
  resized = Image.fromarray(np.asarray(probability, np.float32)).resize(
    (size[1], size[0]), Image.BILINEAR
  )
  return ((np.asarray(resized) > 0.5) * 255).astype(np.uint8)


def predict_folder(
  model: ExportedModel, images_dir: str, out_dir: str, batch_size: int = 8
) -> tuple[list[pathlib.Path], list[tuple[pathlib.Path, str]]]:
  """Writes one mask per readable image of `images_dir` into `out_dir`.

  Returns the mask paths and the unreadable images with the reason. Batches are padded to
  `batch_size`, so the program compiles once.
  """
  folder = pathlib.Path(images_dir)
  if not folder.is_dir():
    raise ServingError(f"--images {folder}: no such folder")
  paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
  if not paths:
    raise ServingError(f"--images {folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
  if batch_size < 1:
    raise ServingError(f"--batch-size {batch_size}: expected at least 1")
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  written, unreadable = [], []
  for start in range(0, len(paths), batch_size):
    loaded = []
    for path in paths[start : start + batch_size]:
      try:
        loaded.append((path, *load_image(path, model.size)))
      except DECODE_ERRORS as error:
        unreadable.append((path, " ".join(str(error).split()) or type(error).__name__))
    if not loaded:
      continue
    batch = np.zeros((batch_size, *model.size, 3), np.uint8)
    batch[: len(loaded)] = [image for _, image, _ in loaded]
    probabilities = model.probabilities(batch)
    for (path, _, original), probability in zip(loaded, probabilities):
      target = out / f"{path.stem}.png"
      Image.fromarray(mask_at(probability[..., 0], original)).save(target)
      written.append(target)
  return written, unreadable


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m sgdnet_jax.inference.serving", description=__doc__.split("\n")[0]
  )
  parser.add_argument("--model", required=True, help="folder written by `export`")
  parser.add_argument("--images", required=True, help="folder of images")
  parser.add_argument("--out", required=True, help="folder for the 0/255 PNG masks")
  parser.add_argument("--batch-size", type=int, default=8, help="images per model call")
  args = parser.parse_args(argv)
  try:
    model = ExportedModel(args.model)
    print(f"serving on {model.platform} (exported for {', '.join(model.exported.platforms)})")
    written, unreadable = predict_folder(model, args.images, args.out, args.batch_size)
  except (ServingError, OSError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  print(f"wrote {len(written)} masks to {args.out}")
  if unreadable:
    print(f"skipped {len(unreadable)} unreadable images:", file=sys.stderr)
    for path, reason in unreadable:
      print(f"  {path}: {reason}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
