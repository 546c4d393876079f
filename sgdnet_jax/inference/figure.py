"""`figure`: the paper's Figure 2 for any two trained models, one panel per case.

  python -m sgdnet_jax.main figure --config configs/isic2018.py:variant=sgdnet --workdir A \
      --config-b configs/isic2018.py:variant=cto --workdir-b B --split test [--cases ID,ID]

Columns, as in the paper: the image, the ground truth, model A's mask, model B's mask (each in
red over the image, the ground truth outlined in green), A's structural guidance map and B's
boundary map (its edge output). The guidance map (SGE's `g`, 16 channels at 1/4 resolution) is
drawn as one channel by a stated rule: `l2`, the L2 norm over the channels, or `pca`, the first
principal component of the channels over the image's pixels (sign: its largest magnitude is
positive); each divided by its maximum (`pca`: min-max) and resized bilinearly to the image. A
model without SGE has no guidance and one without an edge branch no boundary map: their column
is mid-grey. A second row zooms (nearest neighbour) into the yellow box, a quarter of the image's
side, where the two masks disagree on most pixels. Tiles are enlarged by an integer factor to at
least MIN_TILE px, under a header naming the columns. Writes `<case>.png` and `.pdf` per case
and `figure.png` / `.pdf` of all of them; with `channels`, `<case>_guidance.png` shows each
guidance channel (min-max each).
"""

import dataclasses
import functools
import io
import itertools
import math
import os
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from PIL import Image, ImageDraw

from sgdnet_jax import models
from sgdnet_jax.core import compilation_cache, errors, paths
from sgdnet_jax.data import augment, pipeline
from sgdnet_jax.inference import postprocessing, predict
from sgdnet_jax.workdir import guard, image_size, variables_io

GUIDANCE_RULES = ("l2", "pca")
MIN_TILE = 128
HEADER = 16  # px of the column names above the tiles
BOX_COLOR = (255, 220, 0)
EMPTY = 128  # the grey of a column the model cannot fill


@dataclasses.dataclass
class FigureResult:
  """What one `figure` run wrote."""

  out: paths.Path
  cases: list[str]
  files: list[str] = dataclasses.field(default_factory=list)


def render_guidance(guidance: np.ndarray, rule: str) -> np.ndarray:
  """(h, w, C) guidance -> (h, w) in [0, 1] by `rule` (module docstring)."""
  values = np.asarray(guidance, np.float64)
  if rule == "l2":
    norm = np.sqrt(np.sum(values**2, axis=-1))
    return norm / max(float(norm.max()), 1e-12)
  flat = values.reshape(-1, values.shape[-1])
  centred = flat - flat.mean(axis=0)
  component = centred @ np.linalg.svd(centred, full_matrices=False)[2][0]
  if component[np.argmax(np.abs(component))] < 0:
    component = -component
  low, high = component.min(), component.max()
  return ((component - low) / max(high - low, 1e-12)).reshape(values.shape[:2])


def zoom_box(mask_a: np.ndarray, mask_b: np.ndarray, side: int) -> tuple[int, int]:
  """(top, left) of the side x side window holding most pixels where the masks differ (the
  first such window in row order)."""
  differ = np.pad((mask_a != mask_b).astype(np.int64), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
  sums = (
    differ[side:, side:] - differ[:-side, side:] - differ[side:, :-side] + differ[:-side, :-side]
  )
  top, left = np.unravel_index(np.argmax(sums), sums.shape)
  return int(top), int(left)


def _enlarge(tile: np.ndarray, scale: int) -> np.ndarray:
  return np.repeat(np.repeat(tile, scale, axis=0), scale, axis=1)


def _grey_or(values: np.ndarray | None, size: int) -> np.ndarray:
  if values is None:
    return np.full((size, size, 3), EMPTY, np.uint8)
  return predict._gray_panel(values)


def _draw_box(tile: np.ndarray, top: int, left: int, side: int, width: int) -> np.ndarray:
  boxed = tile.copy()
  bottom, right = top + side, left + side
  boxed[top : top + width, left:right] = BOX_COLOR
  boxed[bottom - width : bottom, left:right] = BOX_COLOR
  boxed[top:bottom, left : left + width] = BOX_COLOR
  boxed[top:bottom, right - width : right] = BOX_COLOR
  return boxed


def header(labels: Sequence[str], tile_width: int) -> np.ndarray:
  """(HEADER, len(labels) * tile_width, 3): each label over its column, black on white."""
  strip = Image.new("RGB", (len(labels) * tile_width, HEADER), "white")
  draw = ImageDraw.Draw(strip)
  for i, label in enumerate(labels):
    draw.text((i * tile_width + 3, 2), label, fill="black")
  return np.asarray(strip)


def case_panel(
  image: np.ndarray,
  truth: np.ndarray,
  probability_a: np.ndarray,
  probability_b: np.ndarray,
  guidance_a: np.ndarray | None,
  boundary_b: np.ndarray | None,
  scale: int,
) -> np.ndarray:
  """(2 S scale, 6 S scale, 3) uint8: the six columns, then their zoom into the box."""
  size = image.shape[0]
  mask_a, mask_b = probability_a > 0.5, probability_b > 0.5
  tiles = [
    image,
    predict._gray_panel(truth.astype(np.float32)),
    predict.overlay(image, mask_a, truth),
    predict.overlay(image, mask_b, truth),
    _grey_or(guidance_a, size),
    _grey_or(boundary_b, size),
  ]
  side = max(size // 4, 1)
  top, left = zoom_box(mask_a, mask_b, side)
  zooms = [
    np.asarray(
      Image.fromarray(tile[top : top + side, left : left + side]).resize(
        (size * scale, size * scale), Image.NEAREST
      )
    )
    for tile in tiles
  ]
  width = max(1, scale // 2)
  boxed = [
    _draw_box(_enlarge(t, scale), top * scale, left * scale, side * scale, width) for t in tiles
  ]
  return np.concatenate([np.concatenate(boxed, axis=1), np.concatenate(zooms, axis=1)], axis=0)


def channel_strip(guidance: np.ndarray, size: int, scale: int) -> np.ndarray:
  """(S scale, C S scale, 3): each guidance channel min-max normalised, resized to S."""
  tiles = []
  for c in range(guidance.shape[-1]):
    channel = np.asarray(guidance[..., c], np.float64)
    low, high = channel.min(), channel.max()
    shown = postprocessing.resize_probability((channel - low) / max(high - low, 1e-12), size, size)
    tiles.append(_enlarge(predict._gray_panel(shown), scale))
  return np.concatenate(tiles, axis=1)


@functools.lru_cache(maxsize=8)
def _forward(model):
  """Jitted (variables, images) -> probability, and edge / guidance where the model has them.

  Cached: an equal model (same config) reuses the traced and compiled function."""

  def run(variables, images):
    outputs = model.apply(variables, images, train=False)
    maps = {"probability": models.foreground_probability(outputs["o1"])}
    if "edge" in outputs:
      maps["edge"] = outputs["edge"][..., 0]
    if "guidance" in outputs["aux"]:
      maps["guidance"] = outputs["aux"]["guidance"]
    return maps

  return jax.jit(run)


def _write_image(path: paths.Path, array: np.ndarray, fmt: str) -> None:
  encoded = io.BytesIO()
  Image.fromarray(array).save(encoded, format=fmt)
  paths.write_bytes_atomic(path, encoded.getvalue())


def figure(
  config_a: ml_collections.ConfigDict,
  config_b: ml_collections.ConfigDict,
  workdir_a: str | os.PathLike,
  workdir_b: str | os.PathLike,
  out_dir: str | os.PathLike,
  split: str = "test",
  cases: Sequence[str] = (),
  limit: int = 2,
  guidance: str = "l2",
  channels: bool = False,
  overwrite: bool = False,
) -> FigureResult:
  """Draws the panels of `cases` of `split` (else its first `limit` cases) of models A and B.

  The data come from `config_a`; everything is checked before anything is written.
  """
  compilation_cache.enable(config_a.compilation_cache_dir)
  if guidance not in GUIDANCE_RULES:
    raise errors.UserError(f"--guidance {guidance}: expected one of {', '.join(GUIDANCE_RULES)}")
  guard.check_model_fits(config_a, [workdir_a])
  guard.check_model_fits(config_b, [workdir_b])
  size = image_size.resolve(config_a, [workdir_a])
  size_b = image_size.resolve(config_b, [workdir_b])
  if size != size_b:
    raise errors.UserError(
      f"--workdir {workdir_a} runs at {size} px and --workdir-b {workdir_b} at {size_b} px;"
      " compare models trained at one size"
    )
  config_a.data.image_size = size
  try:
    _, names = pipeline.resolve_split(config_a.data, split)
  except ValueError as e:
    raise errors.UserError(f"--split {split}: {e}") from None
  unknown = [c for c in cases if c not in names]
  if unknown:
    raise errors.UserError(
      f"--cases {','.join(unknown)}: not in split {split} ({len(names)} cases, e.g."
      f" {', '.join(names[:3])}); pass case ids of the split"
    )
  chosen = list(cases) or list(names[:limit])
  if not chosen:
    raise errors.UserError(f"--limit {limit}: no case chosen; pass --limit 1 or more")
  out = paths.as_path(out_dir)
  if (out / "figure.png").exists() and not overwrite:
    raise errors.UserError(
      f"{out / 'figure.png'} exists; pass --overwrite to draw it again or another --out"
    )

  variables = [jax.device_put(variables_io.load_variables(w)) for w in (workdir_a, workdir_b)]
  forwards = [_forward(models.build(c.model)) for c in (config_a, config_b)]
  batch_size = config_a.eval_batch_size
  scale = math.ceil(MIN_TILE / size)
  found = itertools.islice(
    (
      case
      for case in predict._split_cases(config_a, split, batch_size, 1, 0)
      if case.name in chosen
    ),
    len(chosen),
  )
  panels, strips = {}, {}
  for chunk in predict._chunks(found, batch_size):
    batch = np.zeros((batch_size, size, size, 3), np.float32)
    batch[: len(chunk)] = augment.normalize(np.stack([case.pixels for case in chunk]))
    maps_a, maps_b = (
      {name: np.asarray(values) for name, values in forward(model_variables, batch).items()}
      for forward, model_variables in zip(forwards, variables)
    )
    for i, case in enumerate(chunk):
      rendered = None
      if "guidance" in maps_a:
        rendered = postprocessing.resize_probability(
          render_guidance(maps_a["guidance"][i], guidance), size, size
        )
        if channels:
          strips[case.name] = channel_strip(maps_a["guidance"][i], size, scale)
      panels[case.name] = case_panel(
        case.pixels,
        case.truth,
        maps_a["probability"][i],
        maps_b["probability"][i],
        rendered,
        maps_b["edge"][i] if "edge" in maps_b else None,
        scale,
      )
  labels = (
    "image",
    "ground truth",
    f"A: {config_a.model.variant}",
    f"B: {config_b.model.variant}",
    f"A: guidance, {guidance}",
    "B: boundary",
  )
  top = header(labels, size * scale)
  out.mkdir(parents=True, exist_ok=True)
  result = FigureResult(out, chosen)
  for name in chosen:
    for fmt in ("png", "pdf"):
      _write_image(out / f"{name}.{fmt}", np.concatenate([top, panels[name]]), fmt.upper())
      result.files.append(str(out / f"{name}.{fmt}"))
    if name in strips:
      _write_image(out / f"{name}_guidance.png", strips[name], "PNG")
      result.files.append(str(out / f"{name}_guidance.png"))
  whole = np.concatenate([top, *(panels[name] for name in chosen)])
  for fmt in ("png", "pdf"):
    _write_image(out / f"figure.{fmt}", whole, fmt.upper())
    result.files.append(str(out / f"figure.{fmt}"))
  return result
