"""Masks for a folder of images from an exported model (`export`), without the rest of sgdnet_jax.

RULE: this file imports only the Python standard library, jax, numpy and pillow (PIL) - never
another sgdnet_jax module - so that it runs wherever those are installed; `export` copies it into
the model folder. tests/test_export.py checks the rule.

  python -m sgdnet_jax.serving --model DIR --images FOLDER --out OUT [--batch-size 8]
  python DIR/serving.py --model DIR --images FOLDER --out OUT

Every image is converted to 8-bit RGB (grayscale expanded, alpha dropped) and resized to the
model's input size with bilinear resampling (PIL), as in training; its foreground probability is
resized back to the image's own size (bilinear) and thresholded at 0.5. `OUT/<image name>.png`
is the 0/255 mask.
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


class ServingError(Exception):
  """A missing or unusable model folder, image folder or image; printed as one line."""


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
    self._call = jax.jit(self.exported.call)

  def probabilities(self, images: np.ndarray) -> np.ndarray:
    """Foreground probabilities of a batch of uint8 RGB images at the model's size."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != (*self.size, 3):
      raise ServingError(
        f"images of dtype {images.dtype} and shape {images.shape}: expected uint8 "
        f"[N, {self.size[0]}, {self.size[1]}, 3]"
      )
    return np.asarray(self._call(images))


def load_image(path: pathlib.Path, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
  """The image as uint8 RGB at `size` (bilinear) and its original (height, width)."""
  try:
    with Image.open(path) as image:
      image = image.convert("RGB")
  except (OSError, SyntaxError, ValueError) as error:
    raise ServingError(f"{path}: cannot read this image ({error})") from None
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
) -> list[pathlib.Path]:
  """Writes one mask per image of `images_dir` into `out_dir`; returns the mask paths.

  Batches are padded to `batch_size`, so the program compiles once.
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
  written = []
  for start in range(0, len(paths), batch_size):
    chunk = paths[start : start + batch_size]
    loaded = [load_image(path, model.size) for path in chunk]
    batch = np.zeros((batch_size, *model.size, 3), np.uint8)
    batch[: len(chunk)] = [image for image, _ in loaded]
    probabilities = model.probabilities(batch)
    for path, (_, original), probability in zip(chunk, loaded, probabilities):
      target = out / f"{path.stem}.png"
      Image.fromarray(mask_at(probability[..., 0], original)).save(target)
      written.append(target)
  return written


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m sgdnet_jax.serving", description=__doc__.split("\n")[0]
  )
  parser.add_argument("--model", required=True, help="folder written by `export`")
  parser.add_argument("--images", required=True, help="folder of images")
  parser.add_argument("--out", required=True, help="folder for the 0/255 PNG masks")
  parser.add_argument("--batch-size", type=int, default=8, help="images per model call")
  args = parser.parse_args(argv)
  try:
    written = predict_folder(ExportedModel(args.model), args.images, args.out, args.batch_size)
  except (ServingError, OSError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  print(f"wrote {len(written)} masks to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
