"""`predict`: masks and pictures people can look at.

  python -m sgdnet_jax.main predict --config configs/<exp>.py[:args] --workdir W [W2 ...] \
      (--images FILE_OR_DIR ... | --split test) [--out W/predictions] [--limit N] \
      [--tta none|flip|flip_rot] [--tile off|auto|SIZE --overlap F] [--save-probabilities] \
      [--post largest,fill_holes,min_size=N] [--num-parts K --part-id I] [--overwrite]

For every image it writes `masks/<id>.png` (0/255 at the image's original size) and
`panels/<id>.png` (input | prediction overlay, red, with the ground truth outlined in green when
known | the foreground probability | the SGE edge map when the model has one); `overview.png`
tiles the first panels. `<id>` is the file name without its extension (two inputs with one
stem, such as `x.jpg` and `x.png`, are refused before anything is written) or the case id of a
split. Predict replaces only its own outputs: it refuses an `--out` that holds anything without
its marker file (`.sgdnet_predict`, written there first; a workdir's `predictions/` is its own
anyway) and an `--out` that holds an input image. The model is each workdir's best checkpoint
(or a `convert` output); several workdirs average their probabilities. With
`--save-probabilities`, `probabilities/<id>.npy` holds the float16 foreground probability at
the original size, and `> 0.5` on it gives the mask exactly (before `--post`). Images whose
outputs exist are skipped unless `overwrite`; an unreadable image is skipped, named in the
result, and the others are predicted. See `sgdnet_jax.inference` (`ensemble`, `tiling`,
`postprocessing`) for TTA, tiling and post-processing.
"""

import dataclasses
import io
import itertools
import os
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from PIL import Image

from sgdnet_jax import models
from sgdnet_jax.core import compilation_cache, errors, paths
from sgdnet_jax.data import augment, images, layouts, pipeline
from sgdnet_jax.inference import ensemble, postprocessing, tiling
from sgdnet_jax.workdir import guard, image_size, layout, variables_io

OVERVIEW_PANELS = 12
# Written into every --out that predict writes: a folder holding it (or a workdir's predictions/,
# predict's by the workdir's layout) is predict's, and only there are outputs replaced.
MARKER = ".sgdnet_predict"


@dataclasses.dataclass
class PredictResult:
  """What one `predict` run did."""

  out: paths.Path
  written: int = 0  # images predicted and written
  existing: int = 0  # images skipped because all their outputs exist (see `overwrite`)
  unreadable: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (path, why)


@dataclasses.dataclass
class _Case:
  name: str
  pixels: np.ndarray  # (h, w, 3) uint8: at the training size, or the original for tiling
  size: tuple[int, int]  # original (height, width)
  truth: np.ndarray | None  # (S, S) bool ground truth, when known
  tile: int  # window size, 0 for one forward of the whole image at the training size


def _outline(mask: np.ndarray) -> np.ndarray:
  """1-pixel inner boundary of a boolean mask."""
  padded = np.pad(mask, 1)
  interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
  return mask & ~interior


def _gray_panel(values: np.ndarray) -> np.ndarray:
  return np.repeat((np.clip(values, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)


def overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None) -> np.ndarray:
  """`image` with the boolean prediction `pred` in red and the ground truth outlined in green."""
  shown = image.astype(np.float32)
  shown[pred] = 0.55 * shown[pred] + 0.45 * np.array([230, 40, 40])
  shown = shown.astype(np.uint8)
  shown[_outline(pred)] = (255, 0, 0)
  if truth is not None:
    shown[_outline(truth)] = (0, 255, 0)
  return shown


def panel(
  image: np.ndarray, probability: np.ndarray, edge: np.ndarray | None, truth: np.ndarray | None
) -> np.ndarray:
  """Side-by-side picture of one case at the model's resolution, (S, k*S, 3) uint8."""
  tiles = [image, overlay(image, probability > 0.5, truth), _gray_panel(probability)]
  if edge is not None:
    tiles.append(_gray_panel(edge / max(float(edge.max()), 1e-6)))
  return np.concatenate(tiles, axis=1)


def _write_atomic(path: paths.Path, write):
  """`write(file)` into memory, then one atomic write (a local rename or one object upload)."""
  if jax.process_index() != 0:  # every process computes the same outputs; process 0 writes
    return
  encoded = io.BytesIO()
  write(encoded)
  paths.write_bytes_atomic(path, encoded.getvalue())


def _write_png(path: paths.Path, array: np.ndarray):
  _write_atomic(path, lambda f: Image.fromarray(array).save(f, format="PNG"))


def collect_images(inputs: Sequence[str]) -> list[pathlib.Path]:
  """Image files named directly or found (sorted) in the named folders, each once.

  Two files with one stem would write the same outputs: refused, naming both.
  """
  files: list[pathlib.Path] = []
  for item in map(pathlib.Path, inputs):
    if item.is_dir():
      files += sorted(p for p in item.iterdir() if p.suffix.lower() in layouts.IMAGE_EXTENSIONS)
    elif item.is_file():
      files.append(item)
    else:
      raise FileNotFoundError(f"--images {item}: no such file or folder")
  if not files:
    raise FileNotFoundError(
      f"--images {list(inputs)}: no images ({', '.join(layouts.IMAGE_EXTENSIONS)}) found"
    )
  unique = list({p.resolve(): p for p in reversed(files)}.values())[::-1]
  by_stem: dict[str, pathlib.Path] = {}
  for path in unique:
    if path.stem in by_stem:
      raise errors.UserError(
        f"--images: {by_stem[path.stem]} and {path} would both be written as "
        f"masks/{path.stem}.png; rename one or predict them into different --out folders"
      )
    by_stem[path.stem] = path
  return unique


def check_out(out: paths.Path, workdirs: Sequence[paths.Path], inputs: Sequence[pathlib.Path]):
  """Refuses an `out` that holds files predict did not write, or that holds an input: predict
  would replace a user's file (`masks/x.png`, `overview.png`) or read its own outputs."""
  if paths.is_local(out):
    inside = [p for p in inputs if pathlib.Path(out).resolve() in p.resolve().parents]
    if inside:
      raise errors.UserError(
        f"--images {inside[0]} lies inside --out {out}; nothing was written; choose an --out "
        "folder outside the images (predict writes masks/, panels/ and overview.png there)"
      )
  ours = (out / MARKER).exists() or any(out == layout.predictions_dir(w) for w in workdirs)
  if ours or not out.exists():
    return
  if not out.is_dir():
    raise errors.UserError(f"--out {out} is a file; nothing was written; give a folder")
  entries = sorted(entry.name for entry in out.iterdir())
  if entries:
    more = f" and {len(entries) - 1} other entries" if len(entries) > 1 else ""
    raise errors.UserError(
      f"--out {out} holds {entries[0]}{more}, which predict did not write (no {MARKER}); "
      "nothing was written; choose a new or empty --out folder"
    )


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


def _output_paths(out: paths.Path, name: str, save_probabilities: bool) -> list[paths.Path]:
  """Every file one case writes, the mask last (its presence marks a finished case)."""
  files = [out / "panels" / f"{name}.png"]
  if save_probabilities:
    files.append(out / "probabilities" / f"{name}.npy")
  return [*files, out / "masks" / f"{name}.png"]


def _file_cases(
  files: Sequence[pathlib.Path], size: int, tile: str | int, unreadable: list
) -> Iterator[_Case]:
  for path in files:
    try:
      rgb, original, _ = images.load_rgb(path)
    except images.DECODE_ERRORS as e:
      unreadable.append((str(path), " ".join(str(e).split()) or type(e).__name__))
      continue
    window = tiling.tile_size(tile, *original, size)
    pixels = np.asarray(rgb, np.uint8) if window else images.resize_image(rgb, size)
    yield _Case(path.stem, pixels, original, None, window)


def _split_cases(
  config: ml_collections.ConfigDict, split: str, batch_size: int, num_parts: int, part_id: int
) -> Iterator[_Case]:
  mean, std = np.asarray(augment.IMAGENET_MEAN), np.asarray(augment.IMAGENET_STD)
  batches = pipeline.make_eval_iterator(
    config.data, split, batch_size * num_parts, part_id, num_parts
  )
  for batch in batches:
    valid = np.asarray(batch["valid"], bool)
    shown = np.clip(np.asarray(batch["image"]) * std + mean + 0.5, 0, 255).astype(np.uint8)
    for i in np.flatnonzero(valid):
      yield _Case(
        str(np.asarray(batch["case_id"])[i]),
        shown[i],
        tuple(int(v) for v in np.asarray(batch["original_size"])[i]),
        np.asarray(batch["mask"])[i] > 0,
        0,
      )


def _chunks(cases: Iterator[_Case], size: int) -> Iterator[list[_Case]]:
  chunk = []
  for case in cases:
    chunk.append(case)
    if len(chunk) == size:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


def _load_variable_sets(workdirs: Sequence[str]) -> list[dict[str, Any]]:
  variable_sets = [variables_io.load_variables(w) for w in workdirs]
  ensemble.check_same_structure(variable_sets, workdirs)
  return variable_sets


def predict(
  config: ml_collections.ConfigDict,
  workdirs: str | os.PathLike | Sequence[str | os.PathLike],
  out_dir: str | os.PathLike,
  inputs: Sequence[str] = (),
  split: str = "",
  limit: int = 0,
  variable_sets: Sequence[dict[str, Any]] | None = None,
  *,
  tta: str = "none",
  tile: str | int = "off",
  overlap: float = 0.5,
  save_probabilities: bool = False,
  post: str = "",
  num_parts: int = 1,
  part_id: int = 0,
  overwrite: bool = False,
  progress: bool = True,
) -> PredictResult:
  """Writes masks, panels (and probabilities) and an overview; returns what it did.

  `workdirs` (one or several: an ensemble) give the variables unless `variable_sets` does.
  Inputs are checked (files, split, options) before any output folder is created. Share
  `part_id` of `num_parts` (`share`) of the sorted inputs is predicted, at most
  `limit` of them (0: all).
  """
  compilation_cache.enable(config.compilation_cache_dir)
  workdirs = paths.as_paths(workdirs)
  ensemble.check_tta(tta)
  tiling.check_overlap(overlap)
  guard.check_model_fits(config, workdirs)
  size, batch_size = image_size.resolve(config, workdirs), config.eval_batch_size
  tile = tiling.parse_tile(str(tile), config.model)
  post_steps = postprocessing.parse_post(post)
  files = [] if split else collect_images(inputs)
  if split:
    try:
      _, names = pipeline.resolve_split(config.data, split)
    except ValueError as e:
      raise errors.UserError(f"--split {split}: {e}") from None
    names = share(names, num_parts, part_id)
  else:
    inputs_share = share(files, num_parts, part_id)
    names = [p.stem for p in inputs_share]
  if limit:
    names = names[:limit]
  out = paths.as_path(out_dir)
  check_out(out, workdirs, files)
  todo = {
    n
    for n in names
    if overwrite or not all(p.exists() for p in _output_paths(out, n, save_probabilities))
  }
  result = PredictResult(out, existing=len(names) - len(todo))
  if not todo:
    return result

  variable_sets = jax.device_put(
    list(variable_sets) if variable_sets else _load_variable_sets(workdirs)
  )
  model = models.build(config.model)
  has_edge = config.model.edge_branch != "none"
  forward = ensemble.probability_fn(model, tta, edge=True)

  def batch_maps(images_nhwc: np.ndarray) -> dict[str, np.ndarray]:
    maps = forward(variable_sets, jnp.asarray(images_nhwc))
    return {name: np.asarray(values) for name, values in maps.items()}

  for sub in ("masks", "panels", *(("probabilities",) if save_probabilities else ())):
    (out / sub).mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    paths.write_text_atomic(out / MARKER, "predict's outputs: it may replace them here\n")
  if split:
    cases = _split_cases(config, split, batch_size, num_parts, part_id)
  else:
    cases = _file_cases([p for p in inputs_share if p.stem in todo], size, tile, result.unreadable)
  # A split is read whole: stop once every case still to do has come by.
  cases = itertools.islice((case for case in cases if case.name in todo), len(todo))
  panels: list[np.ndarray] = []

  def write(case: _Case, maps: dict[str, np.ndarray]):
    """The case's outputs from its maps at `case.pixels`' resolution; the mask last."""
    native = postprocessing.resize_probability(maps["probability"], *case.size)
    panel_path, *probability_path, mask_path = _output_paths(out, case.name, save_probabilities)
    if save_probabilities:
      half = postprocessing.float16_probability(native)
      _write_atomic(probability_path[0], lambda f: np.save(f, half))
      mask = half > 0.5
    else:
      mask = native > 0.5
    if post_steps:
      mask = postprocessing.postprocess(mask, post_steps)
    shown = (
      case.pixels if not case.tile else images.resize_image(Image.fromarray(case.pixels), size)
    )
    probability = postprocessing.resize_probability(maps["probability"], size, size)
    edge = postprocessing.resize_probability(maps["edge"], size, size) if has_edge else None
    picture = panel(shown, probability, edge, case.truth)
    _write_png(panel_path, picture)
    _write_png(mask_path, (mask * 255).astype(np.uint8))
    if len(panels) < OVERVIEW_PANELS:
      panels.append(picture)
    result.written += 1

  bar = tqdm.tqdm(total=len(todo), unit="img", desc="predict", disable=not progress)
  for chunk in _chunks(cases, batch_size):
    whole = [case for case in chunk if not case.tile]
    if whole:
      padded = np.zeros((batch_size, size, size, 3), np.float32)
      padded[: len(whole)] = augment.normalize(np.stack([case.pixels for case in whole]))
      maps = batch_maps(padded)
      for i, case in enumerate(whole):
        write(case, {name: values[i] for name, values in maps.items()})
    for case in chunk:
      if case.tile:
        normalized = augment.normalize(case.pixels)
        write(case, tiling.predict_tiled(batch_maps, normalized, case.tile, overlap, batch_size))
    bar.update(result.written + len(result.unreadable) - bar.n)
  bar.update(result.written + len(result.unreadable) - bar.n)
  bar.close()
  if panels:
    _write_png(out / "overview.png", np.concatenate(panels, axis=0))
  return result
