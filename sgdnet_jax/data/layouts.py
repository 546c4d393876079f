"""Readers for the dataset layouts exactly as users download them (docs/data.md).

Each reader takes the folder the user unpacked the download into and returns a `Listing`: the
image/mask pairs it found (`Case`), the problems it could see from file names alone (unpaired or
duplicate files) and the files it ignored (licences, CSVs). Reading pixels, and the checks that
need them, happen in `prepare`.

Every folder is also found one level deeper than the layout says (`root/X/<folder>` or
`root/<folder>/<folder>`, what unzipping into a folder often gives), and folder names match
case-insensitively. Two candidates for one folder is an error naming both.
"""

import csv
import dataclasses
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from sgdnet_jax.core import errors

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

# Subset names: the partitions as released ("full" where a release has one; tfds reserves "all").
# Protocol splits (train/val/test) are built from them.
TRAIN, VALIDATION, TEST, FULL = "train", "validation", "test", "full"

# Case counts of the official releases, per subset (docs/data.md). A difference is a warning.
EXPECTED_COUNTS: dict[str, dict[str, int]] = {
  "isic2016": {TRAIN: 900, TEST: 379},
  "isic2018": {TRAIN: 2594, VALIDATION: 100, TEST: 1000},
  "ph2": {FULL: 200},
  "conic": {FULL: 4981},
  "folder": {},
}

# Problem kinds and how they read in messages.
PROBLEM_KINDS = {
  "missing_mask": "image without mask",
  "missing_image": "mask without image",
  "duplicate": "duplicate case",
  "unreadable_image": "unreadable image",
  "unreadable_mask": "unreadable mask",
  "size_mismatch": "image/mask size mismatch",
  "non_binary_mask": "mask is not binary-like",
}


class LayoutError(errors.UserError, ValueError):
  """The source folder does not hold the layout of the requested dataset."""


@dataclasses.dataclass(frozen=True)
class Case:
  """One image/mask pair as found on disk. Paths are relative to the source root (POSIX)."""

  case_id: str
  subset: str
  image: str
  mask: str
  array_index: int = -1  # CoNIC: row in images.npy / labels.npy; -1 for file layouts.
  group: str = ""  # CoNIC: source image of the patch (splits keep a group together).


@dataclasses.dataclass(frozen=True)
class Problem:
  """An integrity problem that excludes a case (strict mode: fails the preparation)."""

  kind: str  # A key of PROBLEM_KINDS.
  case_id: str
  files: tuple[str, ...]
  detail: str  # What was found and what was expected.

  def message(self) -> str:
    return f"{PROBLEM_KINDS[self.kind]}: {', '.join(self.files)}: {self.detail}"

  def to_json(self) -> dict:
    return {
      "kind": self.kind,
      "case_id": self.case_id,
      "files": list(self.files),
      "detail": self.detail,
    }


@dataclasses.dataclass
class Listing:
  """What a layout reader found under `root`."""

  dataset: str
  root: pathlib.Path
  cases: list[Case]
  folders: dict[str, str]  # role (e.g. 'train images') -> folder found, relative to root
  problems: list[Problem] = dataclasses.field(default_factory=list)
  ignored: list[str] = dataclasses.field(default_factory=list)  # files that are not images
  warnings: list[str] = dataclasses.field(default_factory=list)


def _relative(path: pathlib.Path, root: pathlib.Path) -> str:
  return path.relative_to(root).as_posix() or "."


def _is_hidden(name: str) -> bool:
  return name.startswith(".") or name == "__MACOSX"


def find_dir(root: pathlib.Path, name: str, max_depth: int = 2) -> pathlib.Path | None:
  """The folder called `name` (any case) at most `max_depth` levels below `root`, or None.

  `root` itself counts. A match that contains another match (`X/X`, an unzip into a folder of
  the same name) gives way to the inner one. Several unrelated matches are ambiguous: an error.
  """
  wanted = name.casefold()
  found: list[pathlib.Path] = []
  level = [root]
  for depth in range(max_depth + 1):
    next_level = []
    for folder in level:
      if folder.name.casefold() == wanted:
        found.append(folder)
      if depth < max_depth:
        with os.scandir(folder) as entries:
          next_level.extend(
            pathlib.Path(e.path) for e in entries if e.is_dir() and not _is_hidden(e.name)
          )
    level = next_level
  innermost = [f for f in found if not any(o != f and f in o.parents for o in found)]
  if len(innermost) > 1:
    listed = ", ".join(sorted(_relative(f, root) for f in innermost))
    raise LayoutError(f"{root}: found several folders named {name!r} ({listed}); keep one")
  return innermost[0] if innermost else None


def _list_images(
  folder: pathlib.Path, root: pathlib.Path, ignored: list[str]
) -> list[pathlib.Path]:
  """Image files directly in `folder`, sorted by name; other files are added to `ignored`."""
  images = []
  for entry in sorted(folder.iterdir()):
    if entry.is_dir() or _is_hidden(entry.name):
      continue
    if entry.suffix.lower() in IMAGE_EXTENSIONS:
      images.append(entry)
    else:
      ignored.append(_relative(entry, root))
  return images


def _mask_key(stem: str, suffix: str | None, image_keys: dict[str, pathlib.Path]) -> str:
  """The image key (casefolded stem) a mask belongs to, or '' if none.

  With a `suffix` the mask stem must be the image stem plus that suffix (any case). Without
  one, the mask stem is the image stem itself or the longest image stem followed by `_...`.
  """
  key = stem.casefold()
  if suffix is not None:
    return key[: -len(suffix)] if key.endswith(suffix.casefold()) else ""
  while True:
    if key in image_keys:
      return key
    if "_" not in key:
      return ""
    key = key.rsplit("_", 1)[0]


def pair_files(
  images: Sequence[pathlib.Path],
  masks: Sequence[pathlib.Path],
  *,
  subset: str,
  root: pathlib.Path,
  suffix: str | None,
  expected_image: str,
  expected_mask: str,
) -> tuple[list[Case], list[Problem]]:
  """Pairs image and mask files by name.

  `expected_image` / `expected_mask` say in messages what was looked for: templates in which
  `{id}` (the image stem, or the mask stem less the suffix) replaced.
  """
  problems: list[Problem] = []
  by_key: dict[str, list[pathlib.Path]] = {}
  for image in images:
    by_key.setdefault(image.stem.casefold(), []).append(image)
  image_keys = {key: files[0] for key, files in by_key.items()}
  masks_by_key: dict[str, list[pathlib.Path]] = {}
  for mask in masks:
    key = _mask_key(mask.stem, suffix, image_keys)
    if key in image_keys:
      masks_by_key.setdefault(key, []).append(mask)
    else:
      case_id = mask.stem[: -len(suffix)] if key and suffix else mask.stem
      wanted = expected_image.replace("{id}", case_id)
      problems.append(
        Problem(
          "missing_image", case_id, (_relative(mask, root),), f"no image found (expected {wanted})"
        )
      )
  cases = []
  for key, files in sorted(by_key.items()):
    case_id = files[0].stem
    mask_files = masks_by_key.get(key, [])
    if len(files) > 1 or len(mask_files) > 1:
      listed = tuple(_relative(f, root) for f in files + mask_files)
      problems.append(
        Problem(
          "duplicate", case_id, listed, "several images or masks for one case; expected one of each"
        )
      )
    elif not mask_files:
      wanted = expected_mask.replace("{id}", case_id)
      problems.append(
        Problem(
          "missing_mask",
          case_id,
          (_relative(files[0], root),),
          f"no mask found (expected {wanted})",
        )
      )
    else:
      cases.append(Case(case_id, subset, _relative(files[0], root), _relative(mask_files[0], root)))
  return cases, problems


def _read_image_mask_folders(
  dataset: str,
  root: pathlib.Path,
  subsets: Sequence[tuple[str, str, str, bool]],
  suffix: str | None,
  expected_mask: str,
) -> Listing:
  """Reads layouts of the form `<image folder>/` + `<mask folder>/`, one pair per subset.

  `subsets` holds (subset, image folder name, mask folder name, required).
  """
  listing = Listing(dataset, root, [], {})
  for subset, image_name, mask_name, required in subsets:
    image_dir, mask_dir = find_dir(root, image_name), find_dir(root, mask_name)
    if image_dir is None or mask_dir is None:
      missing = [n for n, d in ((image_name, image_dir), (mask_name, mask_dir)) if d is None]
      if required:
        raise LayoutError(
          f"{root}: no folder named {' or '.join(map(repr, missing))} "
          f"(looked up to 2 levels deep); expected the {dataset} layout of "
          f"docs/data.md. Top-level entries: {_top_entries(root)}"
        )
      if image_dir is not None or mask_dir is not None:
        listing.warnings.append(
          f"{subset}: found {image_name if image_dir else mask_name!r} "
          f"but not {missing[0]!r}; the {subset} subset is left out"
        )
      continue
    listing.folders[f"{subset} images"] = _relative(image_dir, root)
    listing.folders[f"{subset} masks"] = _relative(mask_dir, root)
    images = _list_images(image_dir, root, listing.ignored)
    masks = _list_images(mask_dir, root, listing.ignored)
    cases, problems = pair_files(
      images,
      masks,
      subset=subset,
      root=root,
      suffix=suffix,
      expected_image=_relative(image_dir, root) + "/{id}.jpg (or .png, .bmp, .tif)",
      expected_mask=f"{_relative(mask_dir, root)}/{expected_mask}",
    )
    listing.cases += cases
    listing.problems += problems
  return listing


def _top_entries(root: pathlib.Path) -> str:
  names = sorted(
    p.name + ("/" if p.is_dir() else "") for p in root.iterdir() if not _is_hidden(p.name)
  )
  return ", ".join(names[:12]) + (", ..." if len(names) > 12 else "") if names else "(empty)"


def read_isic2016(root: pathlib.Path) -> Listing:
  """ISBI 2016 Part 1: `..._Training_Data/ISIC_<id>.jpg` + `ISIC_<id>_Segmentation.png`."""
  return _read_image_mask_folders(
    "isic2016",
    root,
    [
      (
        TRAIN,
        "ISBI2016_ISIC_Part1_Training_Data",
        "ISBI2016_ISIC_Part1_Training_GroundTruth",
        True,
      ),
      (TEST, "ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth", False),
    ],
    suffix="_segmentation",
    expected_mask="{id}_Segmentation.png",
  )


def read_isic2018(root: pathlib.Path) -> Listing:
  """ISIC 2018 Task 1: `ISIC2018_Task1-2_<Subset>_Input/` + `..._Task1_<Subset>_GroundTruth/`."""
  return _read_image_mask_folders(
    "isic2018",
    root,
    [
      (TRAIN, "ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth", True),
      (
        VALIDATION,
        "ISIC2018_Task1-2_Validation_Input",
        "ISIC2018_Task1_Validation_GroundTruth",
        False,
      ),
      (TEST, "ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth", False),
    ],
    suffix="_segmentation",
    expected_mask="{id}_segmentation.png",
  )


def read_folder(root: pathlib.Path) -> Listing:
  """Users' own data: `images/<name>.<ext>` + `masks/<name>[_suffix].<ext>`."""
  return _read_image_mask_folders(
    "folder",
    root,
    [(FULL, "images", "masks", True)],
    suffix=None,
    expected_mask="{id}.png or {id}_<suffix>.png",
  )


def _single_image(
  folder: pathlib.Path | None, stem: str, root: pathlib.Path, ignored: list[str]
) -> tuple[pathlib.Path | None, list[pathlib.Path]]:
  """The image in a PH2 per-case folder: the one named `stem`, else the only one there."""
  if folder is None:
    return None, []
  images = _list_images(folder, root, ignored)
  named = [p for p in images if p.stem.casefold() == stem.casefold()]
  if len(named) == 1:
    return named[0], []
  return (images[0], []) if len(images) == 1 else (None, images)


def read_ph2(root: pathlib.Path) -> Listing:
  """PH2: `PH2 Dataset images/IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp` + `IMDxxx_lesion/`."""
  images_dir = find_dir(root, "PH2 Dataset images", max_depth=3)
  if images_dir is None:
    raise LayoutError(
      f"{root}: no folder named 'PH2 Dataset images' (looked up to 3 levels "
      f"deep); expected PH2Dataset/PH2 Dataset images/IMDxxx/... "
      f"Top-level entries: {_top_entries(root)}"
    )
  listing = Listing("ph2", root, [], {"cases": _relative(images_dir, root)})
  for case_dir in sorted(images_dir.iterdir()):
    if _is_hidden(case_dir.name):
      continue
    if not case_dir.is_dir():
      listing.ignored.append(_relative(case_dir, root))
      continue
    case_id = case_dir.name
    subdirs = {d.name.casefold(): d for d in case_dir.iterdir() if d.is_dir()}
    image, extra_images = _single_image(
      subdirs.get(f"{case_id}_dermoscopic_image".casefold()), case_id, root, listing.ignored
    )
    mask, extra_masks = _single_image(
      subdirs.get(f"{case_id}_lesion".casefold()), f"{case_id}_lesion", root, listing.ignored
    )
    folder = _relative(case_dir, root)
    if extra_images or extra_masks:
      listing.problems.append(
        Problem(
          "duplicate",
          case_id,
          tuple(_relative(p, root) for p in extra_images + extra_masks),
          "several candidate images or masks; expected one of each",
        )
      )
    elif image is None and mask is None:
      listing.ignored.append(folder + "/")
    elif mask is None:
      listing.problems.append(
        Problem(
          "missing_mask",
          case_id,
          (_relative(image, root),),
          f"no mask found (expected {folder}/{case_id}_lesion/{case_id}_lesion.bmp)",
        )
      )
    elif image is None:
      listing.problems.append(
        Problem(
          "missing_image",
          case_id,
          (_relative(mask, root),),
          f"no image found (expected {folder}/{case_id}_Dermoscopic_Image/{case_id}.bmp)",
        )
      )
    else:
      listing.cases.append(Case(case_id, FULL, _relative(image, root), _relative(mask, root)))
  return listing


def _find_file(root: pathlib.Path, name: str) -> pathlib.Path | None:
  """`root/name` or `root/X/name` (one level nested); several candidates is an error."""
  candidates = [root / name] + [
    d / name for d in sorted(root.iterdir()) if d.is_dir() and not _is_hidden(d.name)
  ]
  found = [c for c in candidates if c.is_file()]
  if len(found) > 1:
    listed = ", ".join(_relative(f, root) for f in found)
    raise LayoutError(f"{root}: found several files named {name!r} ({listed}); keep one")
  return found[0] if found else None


def read_csv_column(path: pathlib.Path, column: str) -> list[str]:
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    if column not in (reader.fieldnames or []):
      raise LayoutError(f"{path}: no column {column!r} (columns: {reader.fieldnames})")
    return [row[column] for row in reader]


def read_conic(root: pathlib.Path) -> Listing:
  """CoNIC: `images.npy` (N,H,W,3) uint8, `labels.npy` (N,H,W,2) int, `patch_info.csv`."""
  images_path = _find_file(root, "images.npy")
  if images_path is None:
    raise LayoutError(
      f"{root}: no images.npy (looked in the folder and one level deeper); "
      f"expected the CoNIC release. Top-level entries: {_top_entries(root)}"
    )
  folder = images_path.parent
  labels_path, info_path = folder / "labels.npy", folder / "patch_info.csv"
  for path in (labels_path, info_path):
    if not path.is_file():
      raise LayoutError(
        f"{folder}: {path.name} is missing; CoNIC needs images.npy, "
        "labels.npy and patch_info.csv side by side"
      )
  images = np.load(images_path, mmap_mode="r")
  labels = np.load(labels_path, mmap_mode="r")
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise LayoutError(
      f"{images_path}: shape {images.shape} {images.dtype}; expected (N, H, W, 3) uint8"
    )
  if (
    labels.ndim != 4
    or labels.shape[-1] != 2
    or labels.shape[:3] != images.shape[:3]
    or labels.dtype.kind not in "iu"
  ):
    raise LayoutError(
      f"{labels_path}: shape {labels.shape} {labels.dtype}; expected "
      f"{images.shape[:3] + (2,)} of an integer type (instance map, class map)"
    )
  patch_info = read_csv_column(info_path, "patch_info")
  if len(patch_info) != len(images):
    raise LayoutError(
      f"{info_path}: {len(patch_info)} rows; expected one per patch "
      f"({len(images)}, the length of images.npy)"
    )
  listing = Listing("conic", root, [], {"arrays": _relative(folder, root)})
  counts_path = folder / "counts.csv"
  if not counts_path.is_file():
    listing.warnings.append(f"{_relative(counts_path, root)} is missing (not needed to train)")
  else:
    with open(counts_path, newline="") as f:
      rows = sum(1 for _ in csv.DictReader(f))
    if rows != len(images):
      listing.warnings.append(
        f"{_relative(counts_path, root)}: {rows} rows; expected {len(images)} (one per patch)"
      )
  image_rel, label_rel = _relative(images_path, root), _relative(labels_path, root)
  for index, info in enumerate(patch_info):
    listing.cases.append(
      Case(
        f"{index:05d}", FULL, image_rel, label_rel, array_index=index, group=info.rsplit("-", 1)[0]
      )
    )
  return listing


READERS = {
  "isic2016": read_isic2016,
  "isic2018": read_isic2018,
  "ph2": read_ph2,
  "conic": read_conic,
  "folder": read_folder,
}


def read_layout(dataset: str, root: os.PathLike) -> Listing:
  """Lists the cases of `dataset` under `root` (a key of READERS)."""
  if dataset not in READERS:
    raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(READERS)}")
  root = pathlib.Path(root)
  if not root.is_dir():
    raise LayoutError(f"{root}: not a folder (expected the unpacked {dataset} download)")
  return READERS[dataset](root)
