"""Tiny replicas of each distributed layout (DATA.md), with the traps of real downloads.

For tests, and to see what `prepare` expects without downloading anything. Images are small
synthetic dermoscopy scenes of varying, non-square sizes. Traps reproduced: licence and
attribution text files among ISIC 2018 images, a CSV beside the ISIC 2016 images, the capital
`_Segmentation` suffix (2016) against the lowercase one (2018), PH2's folder names with spaces,
BMP masks stored as 1-bit images and `_roi` folders, CoNIC's uint16 label arrays, and (with
`nested=True`) everything one folder deeper, as unzipping into a folder gives.
"""

import csv
import os
import pathlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from sgdnet_jax.data import synthetic


def _scene(index: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """(image, mask bool) of `size` (height, width), deterministic in `index`."""
  return synthetic.render_case(np.random.default_rng([7, index]), *size)


def _size(index: int) -> tuple[int, int]:
  return 30 + 3 * (index % 4), 40 + 5 * (index % 3)


def _root(root: os.PathLike, nested: bool) -> pathlib.Path:
  root = pathlib.Path(root)
  return root / "download" if nested else root


def _write_pairs(
  image_dir: pathlib.Path,
  mask_dir: pathlib.Path,
  ids: Sequence[str],
  mask_name: str,
  first_index: int,
) -> None:
  image_dir.mkdir(parents=True, exist_ok=True)
  mask_dir.mkdir(parents=True, exist_ok=True)
  for offset, case_id in enumerate(ids):
    image, mask = _scene(first_index + offset, _size(first_index + offset))
    Image.fromarray(image).save(image_dir / f"{case_id}.jpg", quality=90)
    Image.fromarray(mask.astype(np.uint8) * 255).save(mask_dir / mask_name.format(id=case_id))


def isic_ids(count: int, start: int = 0) -> list:
  return [f"ISIC_{i:07d}" for i in range(start, start + count)]


def write_isic2016(
  root: os.PathLike, num_train: int = 3, num_test: int = 2, nested: bool = False
) -> pathlib.Path:
  """ISBI 2016 Part 1 training and test folders; masks `ISIC_<id>_Segmentation.png`."""
  base = _root(root, nested)
  train_ids, test_ids = isic_ids(num_train), isic_ids(num_test, start=100)
  _write_pairs(
    base / "ISBI2016_ISIC_Part1_Training_Data",
    base / "ISBI2016_ISIC_Part1_Training_GroundTruth",
    train_ids,
    "{id}_Segmentation.png",
    0,
  )
  _write_pairs(
    base / "ISBI2016_ISIC_Part1_Test_Data",
    base / "ISBI2016_ISIC_Part1_Test_GroundTruth",
    test_ids,
    "{id}_Segmentation.png",
    100,
  )
  (base / "ISBI2016_ISIC_Part1_Training_Data" / "ISBI2016_ISIC_Part1_Training_Data.csv").write_text(
    "\n".join(train_ids) + "\n"
  )
  return pathlib.Path(root)


def write_isic2018(
  root: os.PathLike, num_train: int = 4, num_val: int = 2, num_test: int = 0, nested: bool = False
) -> pathlib.Path:
  """ISIC 2018 Task 1 folders with LICENSE.txt / ATTRIBUTION.txt among the training images."""
  base = _root(root, nested)
  subsets = [("Training", num_train, 0), ("Validation", num_val, 1000), ("Test", num_test, 2000)]
  for name, count, start in subsets:
    if count:
      _write_pairs(
        base / f"ISIC2018_Task1-2_{name}_Input",
        base / f"ISIC2018_Task1_{name}_GroundTruth",
        isic_ids(count, start),
        "{id}_segmentation.png",
        start,
      )
  for text in ("LICENSE.txt", "ATTRIBUTION.txt"):
    (base / "ISIC2018_Task1-2_Training_Input" / text).write_text("CC-BY-NC\n")
  return pathlib.Path(root)


def write_ph2(
  root: os.PathLike, ids: Sequence[int] = (2, 3, 4), nested: bool = False
) -> pathlib.Path:
  """`PH2Dataset/PH2 Dataset images/IMDxxx/...` with 1-bit BMP masks and one `_roi` folder."""
  base = _root(root, nested) / "PH2Dataset"
  images_dir = base / "PH2 Dataset images"
  for i, number in enumerate(ids):
    case_id = f"IMD{number:03d}"
    image, mask = _scene(200 + i, _size(i))
    (images_dir / case_id / f"{case_id}_Dermoscopic_Image").mkdir(parents=True)
    (images_dir / case_id / f"{case_id}_lesion").mkdir()
    Image.fromarray(image).save(
      images_dir / case_id / f"{case_id}_Dermoscopic_Image" / f"{case_id}.bmp"
    )
    Image.fromarray(mask).save(
      images_dir / case_id / f"{case_id}_lesion" / f"{case_id}_lesion.bmp"
    )  # bool array -> mode '1'
    if i == 0:
      roi = images_dir / case_id / f"{case_id}_roi"
      roi.mkdir()
      Image.fromarray(mask).save(roi / f"{case_id}_R1_Label4.bmp")
  header = "||   Name   || Histological Diagnosis || Clinical Diagnosis ||"
  rows = [f"||  IMD{n:03d}  ||                        ||         {n % 3}          ||" for n in ids]
  (base / "PH2_dataset.txt").write_text("\n".join([header] + rows) + "\n")
  return pathlib.Path(root)


def write_conic(
  root: os.PathLike,
  num_patches: int = 12,
  size: int = 32,
  num_sources: int = 4,
  nested: bool = False,
) -> pathlib.Path:
  """images.npy, labels.npy (uint16 instance and class maps), patch_info.csv, counts.csv."""
  base = _root(root, nested)
  base.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(3)
  images = rng.integers(0, 256, (num_patches, size, size, 3), dtype=np.uint8)
  labels = np.zeros((num_patches, size, size, 2), np.uint16)
  yy, xx = np.mgrid[0:size, 0:size]
  for p in range(num_patches):
    for instance in range(1, 1 + p % 4):  # patch 0 has no nucleus
      cy, cx = rng.integers(4, size - 4, 2)
      disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(4, 10)
      labels[p, ..., 0][disk] = instance
      labels[p, ..., 1][disk] = 1 + instance % 6
  np.save(base / "images.npy", images)
  np.save(base / "labels.npy", labels)
  with open(base / "patch_info.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["patch_info"])
    writer.writerows([[f"source_{p % num_sources}-{p // num_sources}"] for p in range(num_patches)])
  with open(base / "counts.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(
      ["neutrophil", "epithelial", "lymphocyte", "plasma", "eosinophil", "connective"]
    )
    writer.writerows([[0, p % 4, 0, 0, 0, 0] for p in range(num_patches)])
  return pathlib.Path(root)


def write_folder(
  root: os.PathLike, num_cases: int = 10, mask_suffix: str = "_mask", nested: bool = False
) -> pathlib.Path:
  """`images/case_XX.png` + `masks/case_XX<mask_suffix>.png`."""
  base = _root(root, nested)
  ids = [f"case_{i:02d}" for i in range(num_cases)]
  _write_pairs(base / "images", base / "masks", ids, "{id}" + mask_suffix + ".png", 300)
  return pathlib.Path(root)
