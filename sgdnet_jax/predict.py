"""`predict`: masks and pictures people can look at.

  python -m sgdnet_jax.main predict --config configs/<exp>.py[:args] --workdir W \
      (--images FILE_OR_DIR ... | --split test) [--out W/predictions] [--limit N]

For every image it writes `masks/<id>.png` (0/255 at the image's original size) and
`panels/<id>.png` (input | prediction overlay, red, with the ground truth outlined in green when
known | the foreground probability | the SGE edge map when the model has one); `overview.png`
tiles the first panels. The model is the workdir's best checkpoint (or a `convert` output).
The output folder may be a `gs://` URL (`sgdnet_jax.paths`); only process 0 writes.
"""

import io
import os
import pathlib
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from sgdnet_jax import models, variables_io
from sgdnet_jax.data import augment, images, pipeline
from sgdnet_jax.paths import Path, as_path, write_bytes_atomic

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
PANEL_SIZE = 256


def _outline(mask: np.ndarray) -> np.ndarray:
  """1-pixel inner boundary of a boolean mask."""
  padded = np.pad(mask, 1)
  interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
  return mask & ~interior


def _gray_panel(values: np.ndarray) -> np.ndarray:
  return np.repeat((np.clip(values, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)


def panel(
  image: np.ndarray, probability: np.ndarray, edge: np.ndarray | None, truth: np.ndarray | None
) -> np.ndarray:
  """Side-by-side picture of one case at the model's resolution, (S, k*S, 3) uint8."""
  pred = probability > 0.5
  overlay = image.astype(np.float32)
  overlay[pred] = 0.55 * overlay[pred] + 0.45 * np.array([230, 40, 40])
  overlay = overlay.astype(np.uint8)
  overlay[_outline(pred)] = (255, 0, 0)
  if truth is not None:
    overlay[_outline(truth)] = (0, 255, 0)
  tiles = [image, overlay, _gray_panel(probability)]
  if edge is not None:
    tiles.append(_gray_panel(edge / max(float(edge.max()), 1e-6)))
  return np.concatenate(tiles, axis=1)


def _write_png(path: Path, array: np.ndarray):
  if jax.process_index() != 0:  # every process draws the same pictures
    return
  encoded = io.BytesIO()
  Image.fromarray(array).save(encoded, format="PNG")
  write_bytes_atomic(path, encoded.getvalue())


def _native_mask(probability: np.ndarray, height: int, width: int) -> np.ndarray:
  """Probability at the model's resolution -> 0/255 mask at (height, width) (bilinear, > 0.5)."""
  resized = Image.fromarray(probability.astype(np.float32), mode="F").resize(
    (width, height), Image.BILINEAR
  )
  return ((np.asarray(resized) > 0.5) * 255).astype(np.uint8)


def _file_batches(paths: Sequence[pathlib.Path], size: int, batch_size: int) -> Iterator[dict]:
  for start in range(0, len(paths), batch_size):
    chunk = paths[start : start + batch_size]
    shown, sizes = [], []
    for path in chunk:
      try:
        rgb, original, _ = images.load_rgb(path)
      except images.DECODE_ERRORS as e:
        raise ValueError(f"{path}: cannot read this image ({e})") from None
      shown.append(images.resize_image(rgb, size))
      sizes.append(original)
    yield {"ids": [p.stem for p in chunk], "shown": np.stack(shown), "sizes": sizes, "truth": None}


def _split_batches(
  config: ml_collections.ConfigDict, split: str, batch_size: int
) -> Iterator[dict]:
  dataset, _ = pipeline.resolve_split(config.data, split)
  mean, std = np.asarray(augment.IMAGENET_MEAN), np.asarray(augment.IMAGENET_STD)
  for batch in pipeline.make_eval_iterator(config.data, split, batch_size, 0, 1):
    valid = np.asarray(batch["valid"], bool)
    shown = np.clip(np.asarray(batch["image"]) * std + mean + 0.5, 0, 255).astype(np.uint8)
    yield {
      "ids": [str(c) for c in np.asarray(batch["case_id"])[valid]],
      "shown": shown[valid],
      "sizes": [tuple(int(v) for v in s) for s in np.asarray(batch["original_size"])[valid]],
      "truth": np.asarray(batch["mask"])[valid] > 0,
    }


def collect_images(inputs: Sequence[str]) -> list[pathlib.Path]:
  """Image files named directly or found (sorted) in the named folders."""
  paths: list[pathlib.Path] = []
  for item in map(pathlib.Path, inputs):
    if item.is_dir():
      paths += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    elif item.is_file():
      paths.append(item)
    else:
      raise FileNotFoundError(f"--images {item}: no such file or folder")
  if not paths:
    raise FileNotFoundError(
      f"--images {list(inputs)}: no images ({', '.join(IMAGE_SUFFIXES)}) found"
    )
  return paths


def predict(
  config: ml_collections.ConfigDict,
  workdir: str | os.PathLike,
  out_dir: str | os.PathLike,
  inputs: Sequence[str] = (),
  split: str = "",
  limit: int = 0,
  variables=None,
) -> tuple[Path, int]:
  """Writes masks, panels and an overview; returns (output folder, number of images)."""
  model = models.build(config.model)
  variables = variables if variables is not None else variables_io.load_variables(workdir)
  size = config.data.image_size

  @jax.jit
  def forward(images_nhwc):
    outputs = model.apply(variables, images_nhwc, train=False)
    edge = outputs["edge"][..., 0] if "edge" in outputs else jnp.zeros(images_nhwc.shape[:3])
    return models.foreground_probability(outputs["o1"]), edge

  batch_size = config.eval_batch_size
  batches = (
    _split_batches(config, split, batch_size)
    if split
    else _file_batches(collect_images(inputs), size, batch_size)
  )
  out = as_path(out_dir)
  for sub in ("masks", "panels"):
    (out / sub).mkdir(parents=True, exist_ok=True)
  panels, written = [], 0
  has_edge = config.model.edge_branch != "none"
  for batch in batches:
    shown = batch["shown"]
    count = len(batch["ids"]) if not limit else min(len(batch["ids"]), limit - written)
    if count <= 0:
      break
    padded = np.zeros((batch_size, size, size, 3), np.float32)
    padded[: len(shown)] = augment.normalize(shown)
    probability, edge = (np.asarray(a) for a in forward(jnp.asarray(padded)))
    for i in range(count):
      case_id = batch["ids"][i]
      _write_png(out / "masks" / f"{case_id}.png", _native_mask(probability[i], *batch["sizes"][i]))
      truth = batch["truth"][i] if batch["truth"] is not None else None
      picture = panel(shown[i], probability[i], edge[i] if has_edge else None, truth)
      _write_png(out / "panels" / f"{case_id}.png", picture)
      if len(panels) < 12:
        panels.append(picture)
      written += 1
  if panels:
    _write_png(out / "overview.png", np.concatenate(panels, axis=0))
  return out, written
