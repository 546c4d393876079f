"""`prepare`: read a downloaded dataset, check it, and write it once as a TFDS ArrayRecord dataset.

    python -m sgdnet_jax.main prepare --dataset isic2018 --source ~/downloads/isic2018 \
        --out data/isic2018 [--size 256] [--no-strict] [--overwrite]
    python -m sgdnet_jax.main prepare --dataset synthetic --source data/demo_source \
        --out data/demo [--num-cases 300] [--generated-size 256]

Output folder (written under a temporary name beside it, renamed into place only on success):

    dataset.json   what was found: counts per subset against the official counts, folders, every
                  problem and skipped case, ignored files, notes, warnings, options
    cases.json    one entry per prepared case, in record order: case_id, subset, index (record
                  within the subset), image and mask (paths relative to the source), height and
                  width of the original, group (CoNIC source image)
    splits/       the split protocols (see `splits`)
    tfds/         the TFDS dataset (builder `prepared_segmentation`, config = dataset name), one
                  split per subset, ArrayRecord files; features: image (S,S,3) uint8, mask (S,S)
                  uint8 0/1, case_id, native_mask_png (the original-resolution mask), and for
                  CoNIC instances (S,S) int32 and classes (S,S) uint8

Strict mode (the default) fails, after checking everything, with one message naming every
offending file; `--no-strict` skips those cases and lists them in dataset.json. A source without
any image/mask pair is an error naming the folders it looked in.

`--out` is never the source, inside it or around it; `--overwrite` replaces only a prepared
dataset (dataset.json, cases.json and tfds/ present) holding nothing else (a user's file inside is
named and refused). Anything else is refused before anything is touched. SIGTERM or SIGINT
remove the staging folder (`staging`) and leave `--out` as it was; the staging folders a SIGKILLed
prepare into the same `--out` left (`.<out>.tmp-<pid>`, its pid gone) are removed.
"""

import collections
import concurrent.futures
import dataclasses
import datetime
import json
import os
import pathlib
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
import tqdm
from PIL import Image

from sgdnet_jax.core import errors, paths
from sgdnet_jax.data import images, layouts, remote, splits, staging, synthetic

# Dataset name -> the layout it is read with.
LAYOUT_OF = {name: name for name in layouts.READERS} | {"synthetic": "folder"}
DATASETS = tuple(LAYOUT_OF)
SUBSET_ORDER = (layouts.TRAIN, layouts.VALIDATION, layouts.TEST, layouts.FULL)
BUILDER_VERSION = "1.0.0"
# What every prepared dataset holds; `--overwrite` replaces only a folder that has all of them.
PREPARED_MARKERS = ("dataset.json", "cases.json", "tfds/")
PAPER_SIZE = 256  # the paper's (and CTO's) training size
SIZE_MULTIPLE = 32  # the encoder's total stride


class PreparationError(errors.UserError, RuntimeError):
  """The source cannot be prepared; the message says why and names the files."""


class OutputRefusedError(errors.UserError, ValueError):
  """`--out` cannot be written without risking other data; nothing was touched."""


@dataclasses.dataclass
class _CaseResult:
  case: layouts.Case
  example: dict | None
  height: int = 0
  width: int = 0
  problems: list[layouts.Problem] = dataclasses.field(default_factory=list)
  notes: list[str] = dataclasses.field(default_factory=list)


def _load_file_case(root: pathlib.Path, case: layouts.Case, size: int) -> _CaseResult:
  """Decodes, checks and resizes one image/mask pair of a file layout."""
  result = _CaseResult(case, None)
  image = mask = None
  try:
    image, (result.height, result.width), note = images.load_rgb(root / case.image, draft_size=size)
    result.notes += [note] if note else []
  except images.DECODE_ERRORS as e:
    result.problems.append(
      layouts.Problem(
        "unreadable_image",
        case.case_id,
        (case.image,),
        f"{e} (expected a complete {pathlib.Path(case.image).suffix} image)",
      )
    )
  try:
    mask, note = images.load_mask(root / case.mask)
    result.notes += [note] if note else []
  except images.UnsupportedMaskError as e:
    result.problems.append(layouts.Problem("unreadable_mask", case.case_id, (case.mask,), str(e)))
  except images.DECODE_ERRORS as e:
    result.problems.append(
      layouts.Problem(
        "unreadable_mask",
        case.case_id,
        (case.mask,),
        f"{e} (expected a complete {pathlib.Path(case.mask).suffix} image)",
      )
    )
  if mask is not None:
    if image is not None and mask.shape != (result.height, result.width):
      result.problems.append(
        layouts.Problem(
          "size_mismatch",
          case.case_id,
          (case.image, case.mask),
          f"image is {result.width}x{result.height} but mask is {mask.shape[1]}x"
          f"{mask.shape[0]} (width x height); expected the same size",
        )
      )
    detail = images.binary_problem(mask)
    if detail:
      result.problems.append(layouts.Problem("non_binary_mask", case.case_id, (case.mask,), detail))
  if result.problems:
    return result
  foreground = mask > 0
  if not foreground.any():
    result.notes.append("mask is empty (no foreground)")
  mask_path = root / case.mask
  native_png = (
    mask_path.read_bytes()
    if mask_path.suffix.lower() == ".png"
    else images.encode_mask_png(foreground)
  )
  result.example = {
    "image": images.resize_image(image, size),
    "mask": images.resize_mask(foreground.astype(np.uint8), size),
    "case_id": case.case_id,
    "native_mask_png": native_png,
  }
  return result


class _ConicArrays:
  """Row access to the memory-mapped CoNIC arrays (never loaded whole)."""

  def __init__(self, root: pathlib.Path, case: layouts.Case):
    self.images = np.load(root / case.image, mmap_mode="r")
    self.labels = np.load(root / case.mask, mmap_mode="r")

  def __call__(self, case: layouts.Case, size: int) -> _CaseResult:
    image = np.asarray(self.images[case.array_index])
    labels = np.asarray(self.labels[case.array_index])
    instances = labels[..., 0].astype(np.int32)
    foreground = instances > 0
    result = _CaseResult(case, None, height=image.shape[0], width=image.shape[1])
    if not foreground.any():
      result.notes.append("mask is empty (no foreground)")
    result.example = {
      "image": images.resize_image(Image.fromarray(image), size),
      "mask": images.resize_mask(foreground.astype(np.uint8), size),
      "instances": images.resize_mask(instances, size),
      "classes": images.resize_mask(labels[..., 1].astype(np.uint8), size),
      "case_id": case.case_id,
      "native_mask_png": images.encode_mask_png(foreground),
    }
    return result


def _ordered_parallel_map(fn: Callable, items: Sequence, workers: int) -> Iterator:
  """fn over items on `workers` threads (PIL releases the GIL), in order, a bounded window ahead."""
  if workers <= 1:
    yield from map(fn, items)
    return
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    window = collections.deque()
    for item in items:
      window.append(pool.submit(fn, item))
      if len(window) >= 4 * workers:
        yield window.popleft().result()
    while window:
      yield window.popleft().result()


class PreparedSegmentation(tfds.core.GeneratorBasedBuilder):
  """Binary segmentation cases of one dataset, resized to a square training size.

  The TFDS config is the dataset name; `listing` is what `layouts` found in the unpacked
  download. After `download_and_prepare`, `results` (per subset, in record order), `problems`
  and `notes` describe what was done.
  """

  VERSION = tfds.core.Version(BUILDER_VERSION)
  # tfds looks for a checksums file beside the builder's code through `importlib_resources`, a
  # backport Python >= 3.9 installs lack. This builder downloads nothing: no code path needed.
  code_path = None
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name) for name in DATASETS]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Download the dataset by hand (licences forbid redistribution), "
    "unpack it and pass that folder as manual_dir (docs/data.md)."
  )

  def __init__(
    self,
    *,
    listing: layouts.Listing,
    image_size: int,
    workers: int = 1,
    progress: bool = True,
    **kwargs,
  ):
    self.image_size = image_size
    self.workers = workers
    self.progress = progress
    self.listing = listing
    self.results: dict[str, list[_CaseResult]] = {}
    self.problems: list[layouts.Problem] = []
    self.notes: dict[str, list[str]] = collections.defaultdict(list)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.image_size
    tensor = lambda shape, dtype: tfds.features.Tensor(
      shape=shape, dtype=dtype, encoding=tfds.features.Encoding.BYTES
    )
    features = {
      "image": tensor((size, size, 3), np.uint8),
      "mask": tensor((size, size), np.uint8),
      "case_id": tfds.features.Text(),
      "native_mask_png": tfds.features.Tensor(shape=(), dtype=np.object_),
    }
    if self.builder_config.name == "conic":
      features |= {
        "instances": tensor((size, size), np.int32),
        "classes": tensor((size, size), np.uint8),
      }
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(features),
      disable_shuffling=True,
      description=f"{self.builder_config.name} resized to {size}x{size} (images bilinear, "
      "masks nearest, binarised > 0), with the original-resolution masks.",
    )

  # tfds prints download banners meant for downloaded datasets; this one reads local files.
  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass

  def _split_generators(self, dl_manager):
    del dl_manager  # the listing was read before; tfds would refuse an empty manual_dir
    root = self.listing.root
    self.problems += self.listing.problems
    id_counts = collections.Counter(c.case_id for c in self.listing.cases)
    by_subset = collections.defaultdict(list)
    for case in self.listing.cases:
      if id_counts[case.case_id] > 1:
        self.problems.append(
          layouts.Problem(
            "duplicate",
            case.case_id,
            (case.image,),
            "case id also in another subset; expected each case once",
          )
        )
      else:
        by_subset[case.subset].append(case)
    if not by_subset:
      raise PreparationError(
        "no usable case (every case is a duplicate); problems:\n" + _problem_lines(self.problems)
      )
    bar = tqdm.tqdm(
      total=len(self.listing.cases),
      desc=f"prepare {self.builder_config.name}",
      unit="case",
      disable=not self.progress,
      file=sys.stderr,
    )
    return {
      subset: self._generate_examples(root, by_subset[subset], bar)
      for subset in SUBSET_ORDER
      if subset in by_subset
    }

  def _generate_examples(self, root: pathlib.Path, cases: list[layouts.Case], bar: tqdm.tqdm):
    if cases[0].array_index >= 0:
      load = _ConicArrays(root, cases[0])
    else:
      load = lambda case, size: _load_file_case(root, case, size)
    subset = cases[0].subset
    kept = self.results.setdefault(subset, [])
    for result in _ordered_parallel_map(lambda c: load(c, self.image_size), cases, self.workers):
      bar.update()
      self.problems += result.problems
      for note in result.notes:
        self.notes[note].append(result.case.case_id)
      if result.example is not None:
        example, result.example = result.example, None  # keep only the metadata
        kept.append(result)
        yield result.case.case_id, example
    if not kept:
      raise PreparationError(
        f"no usable case in the {subset} subset; problems:\n" + _problem_lines(self.problems)
      )


def _problem_lines(problems: Iterable[layouts.Problem]) -> str:
  return "\n".join(f"  {p.message()}" for p in problems)


def _counts(builder: PreparedSegmentation, dataset: str) -> dict[str, dict]:
  """Per subset: image/mask pairs found on disk, cases prepared, and the official count."""
  found = collections.Counter(c.subset for c in builder.listing.cases)
  expected = layouts.EXPECTED_COUNTS.get(dataset, {})
  return {
    subset: {
      "found": found.get(subset, 0),
      "prepared": len(builder.results.get(subset, [])),
      "expected": expected.get(subset),
    }
    for subset in SUBSET_ORDER
    if subset in found or subset in expected
  }


def _count_warnings(counts: dict[str, dict], dataset: str) -> list[str]:
  warnings = []
  for subset, count in counts.items():
    if count["expected"] is not None and count["found"] != count["expected"]:
      warnings.append(
        f"{dataset} {subset}: found {count['found']} image/mask pairs, the "
        f"official release has {count['expected']} (a partial or modified "
        "download?)"
      )
  return warnings


def default_size(dataset: str, source: os.PathLike) -> tuple[int, str]:
  """The training size `prepare` uses when none is given, and why.

  For `folder` (users' own images): the median shorter side of the images, rounded down to a
  multiple of 32 (the encoder's stride) and capped at 256, so small tiles are not upsampled at a
  quadratic cost; at least 32. The public datasets use the paper's 256. Only image headers are
  read; unreadable images are left to the preparation to report as problems.
  """
  if dataset != "folder":
    return PAPER_SIZE, f"the paper's training size for {dataset}"
  listing = layouts.read_layout("folder", source)
  sides = []
  for case in listing.cases:
    try:
      with Image.open(pathlib.Path(source) / case.image) as image:
        sides.append(min(image.size))
    except images.DECODE_ERRORS:
      continue
  if not sides:
    return PAPER_SIZE, "no readable image to measure; the paper's training size"
  median = int(np.median(sides))
  size = min(PAPER_SIZE, max(SIZE_MULTIPLE, median // SIZE_MULTIPLE * SIZE_MULTIPLE))
  return size, (
    f"the median shorter side of the {len(sides)} images is {median} px, rounded down to a "
    f"multiple of {SIZE_MULTIPLE} and capped at {PAPER_SIZE} (give --size to choose another)"
  )


def prepare(
  dataset: str,
  source: os.PathLike,
  out: os.PathLike,
  *,
  size: int = 256,
  strict: bool = True,
  overwrite: bool = False,
  split_seed: int = 0,
  workers: int | None = None,
  progress: bool = True,
) -> dict:
  """Prepares `dataset` from the download at `source` into `out`; returns `dataset.json`'s record.

  Raises layouts.LayoutError if `source` does not hold the layout, PreparationError on integrity
  problems in strict mode (or no case at all), FileExistsError / OutputRefusedError as
  `check_output` says. On any failure, SIGTERM or SIGINT included, `out` is left as it was and
  the staging folder beside it is removed.
  """
  if dataset not in LAYOUT_OF:
    raise ValueError(f"unknown dataset {dataset!r}; expected one of {list(DATASETS)}")
  if size < 8:
    raise ValueError(f"size {size}: expected a training size of at least 8 pixels")
  check_output(source, out, overwrite=overwrite)
  if not paths.is_local(out):  # a bucket: prepared here, then uploaded with dataset.json last
    with tempfile.TemporaryDirectory(prefix="sgdnet_jax-prepare-") as local:
      prepared = pathlib.Path(local) / "prepared"
      info = prepare(
        dataset,
        source,
        prepared,
        size=size,
        strict=strict,
        split_seed=split_seed,
        workers=workers,
        progress=progress,
      )
      remote.upload(prepared, out)
    return info
  source, out = pathlib.Path(source).resolve(), pathlib.Path(out).resolve()
  out.parent.mkdir(parents=True, exist_ok=True)
  remove_stale_staging(out)
  with staging.Staging(out.parent / f".{out.name}.tmp-{os.getpid()}") as stage:
    info = _prepare_into(
      dataset,
      source,
      stage.path,
      size,
      strict,
      split_seed,
      workers or os.cpu_count() or 1,
      progress,
    )
    with stage.deferred():  # never half-swapped: a signal here acts once `out` is complete
      if out.exists():
        retired = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(retired)
        stage.path.rename(out)
        shutil.rmtree(retired)
      else:
        stage.path.rename(out)
  return info


def remove_stale_staging(out: pathlib.Path) -> None:
  """Removes `.<out>.tmp-<pid>` and `.<out>.old-<pid>` beside `out` whose process is gone: what a
  SIGKILLed `prepare` into `out` leaves (this module's names only, never a live run's)."""
  pattern = re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)-(\d+)")
  for path in sorted(out.parent.iterdir()) if out.parent.is_dir() else ():
    match = pattern.fullmatch(path.name)
    if match and int(match[2]) != os.getpid() and not _alive(int(match[2])):
      shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
      print(f"removed {path}, left by a prepare (pid {match[2]}) that was killed", file=sys.stderr)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


def first_foreign_file(folder: pathlib.Path) -> str | None:
  """The first path (relative, sorted walk) in a prepared `folder` that `prepare` did not write,
  or None: `--overwrite` may replace the folder only when there is none."""

  def first_file(path: pathlib.Path) -> pathlib.Path:  # what the user put there, named exactly
    inside = sorted(path.iterdir()) if path.is_dir() and not path.is_symlink() else []
    return first_file(inside[0]) if inside else path

  def ours(relative: tuple[str, ...], path: pathlib.Path) -> bool:
    if path.is_symlink():
      return False
    top = relative[0]
    if len(relative) == 1:
      return (
        path.is_file()
        if top in ("dataset.json", "cases.json")
        else top in ("splits", "tfds") and path.is_dir()
      )
    if top == "splits":
      return len(relative) == 2 and path.is_file() and path.suffix == ".json"
    return top == "tfds" and relative[1] == PreparedSegmentation.name  # TFDS's own tree below

  def walk(directory: pathlib.Path) -> str | None:
    for path in sorted(directory.iterdir()):
      relative = path.relative_to(folder).parts
      if not ours(relative, path):
        return first_file(path).relative_to(folder).as_posix()
      found = walk(path) if relative in (("splits",), ("tfds",)) else None
      if found:
        return found
    return None

  return walk(folder)


def is_prepared(folder: pathlib.Path) -> bool:
  """Whether `folder` holds what `prepare` writes (PREPARED_MARKERS)."""
  return all(
    (folder / name).is_dir() if name.endswith("/") else (folder / name).is_file()
    for name in PREPARED_MARKERS
  )


def check_output(source: os.PathLike, out: os.PathLike, *, overwrite: bool) -> None:
  """Refuses an `out` that preparing `source` into could destroy or mix with other data.

  `out` may not be the source, lie inside it or contain it (symlinks resolved), whatever
  `overwrite` says; an existing `out` is replaced only with `overwrite` and only if it is a
  prepared dataset. Raises FileExistsError or OutputRefusedError; touches nothing.
  """
  source = pathlib.Path(source).resolve()
  out = pathlib.Path(out).resolve() if paths.is_local(out) else paths.as_path(out)
  relation = (
    "is the source"
    if out == source
    else "contains the source"
    if out in source.parents
    else "lies inside the source"
    if source in out.parents
    else ""
  )
  if relation:
    raise OutputRefusedError(
      f"--out {out} {relation} {source}; nothing was written or removed; choose an --out "
      "outside the source, e.g. a sibling folder"
    )
  if not out.exists():
    return
  if not overwrite:
    raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
  if not is_prepared(out):
    missing = [name for name in PREPARED_MARKERS if not (out / name.rstrip("/")).exists()]
    raise OutputRefusedError(
      f"--out {out} exists and is not a prepared dataset (no {', '.join(missing)}); "
      "--overwrite replaces only a prepared dataset, so nothing was removed; choose another "
      "--out, or remove this folder yourself if it is really not needed"
    )
  foreign = first_foreign_file(out)
  if foreign:
    raise OutputRefusedError(
      f"--out {out} holds {foreign}, which is not part of a prepared dataset; --overwrite "
      "would delete it, so nothing was removed; move it out of --out (or choose another --out)"
    )


def _prepare_into(
  dataset: str,
  source: pathlib.Path,
  folder: pathlib.Path,
  size: int,
  strict: bool,
  split_seed: int,
  workers: int,
  progress: bool,
) -> dict:
  listing = layouts.read_layout(LAYOUT_OF[dataset], source)
  if not listing.cases:
    folders = " and ".join(str(source / name) for name in listing.folders.values())
    raise PreparationError(
      f"prepare {dataset}: no image/mask pairs in {folders or source}; expected the images and "
      f"their masks there (docs/data.md); {len(listing.ignored)} other file(s) were ignored"
      + "".join(f"; {p.message()}" for p in listing.problems[:5])
    )
  tfds.display_progress_bar(False)
  builder = PreparedSegmentation(
    listing=listing,
    config=dataset,
    data_dir=folder / "tfds",
    image_size=size,
    workers=workers,
    progress=progress,
    file_format="array_record",
  )
  builder.download_and_prepare(
    download_dir=folder / "downloads",
    download_config=tfds.download.DownloadConfig(manual_dir=source),
  )
  shutil.rmtree(folder / "downloads", ignore_errors=True)
  if builder.problems and strict:
    raise PreparationError(
      f"prepare {dataset}: {len(builder.problems)} problem(s) in {source} (paths relative to "
      "it); fix them, or pass --no-strict to skip these cases:\n" + _problem_lines(builder.problems)
    )
  cases = [
    {
      "case_id": r.case.case_id,
      "subset": subset,
      "index": index,
      "image": r.case.image,
      "mask": r.case.mask,
      "height": r.height,
      "width": r.width,
      "group": r.case.group,
    }
    for subset in SUBSET_ORDER
    for index, r in enumerate(builder.results.get(subset, []))
  ]
  _check_written(builder, cases)
  counts = _counts(builder, dataset)
  warnings = builder.listing.warnings + _count_warnings(counts, dataset)
  protocols = splits.build_protocols(dataset, cases, split_seed)
  splits.write_protocols(folder / "splits", protocols)
  info = {
    "dataset": dataset,
    "source": str(source),
    "image_size": size,
    "strict": strict,
    "split_seed": split_seed,
    "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "records": pathlib.Path(builder.data_dir).relative_to(folder).as_posix(),
    "folders": builder.listing.folders,
    "counts": counts,
    "warnings": warnings,
    "problems": [p.to_json() for p in builder.problems],
    "skipped": sorted({p.case_id for p in builder.problems}),
    "ignored_files": builder.listing.ignored,
    "notes": dict(sorted(builder.notes.items())),
    "protocols": sorted(protocols),
    "default_protocol": splits.DEFAULT_PROTOCOL[dataset],
  }
  manifest = source / synthetic.MANIFEST
  if dataset == "synthetic" and manifest.is_file():  # tells ensure_demo_dataset it is current
    info["synthetic"] = json.loads(manifest.read_text())
  (folder / "cases.json").write_text(json.dumps(cases, indent=0) + "\n")
  (folder / "dataset.json").write_text(json.dumps(info, indent=1) + "\n")
  for warning in warnings:
    print(f"WARNING: {warning}", file=sys.stderr)
  return info


def _check_written(builder: PreparedSegmentation, cases: list[dict]) -> None:
  """Reads the records back: every case is readable and sits at the index cases.json gives it."""
  for subset in builder.results:
    source = tfds.builder_from_directory(builder.data_dir).as_data_source(subset)
    written = [source[i]["case_id"].decode() for i in range(len(source))]
    expected = [c["case_id"] for c in cases if c["subset"] == subset]
    if written != expected:
      raise PreparationError(
        f"the {subset} records are not in generation order; "
        "the ArrayRecord writer did not keep disable_shuffling"
      )
