"""Layout readers on tiny replicas of each download, including the traps of real ones."""

import pathlib

import numpy as np
import pytest
from PIL import Image

from sgdnet_jax.data import layouts
from tests import replicas


@pytest.mark.parametrize("nested", [False, True])
def test_isic2018_pairs_lowercase_suffix_and_ignores_licence_files(tmp_path, nested):
  replicas.write_isic2018(tmp_path, num_train=4, num_val=2, nested=nested)
  listing = layouts.read_layout("isic2018", tmp_path)
  prefix = "download/" if nested else ""
  assert [c.case_id for c in listing.cases if c.subset == "train"] == replicas.isic_ids(4)
  assert [c.subset for c in listing.cases].count("validation") == 2
  first = listing.cases[0]
  assert first.image == f"{prefix}ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg"
  assert first.mask == f"{prefix}ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png"
  assert sorted(listing.ignored) == [
    f"{prefix}ISIC2018_Task1-2_Training_Input/ATTRIBUTION.txt",
    f"{prefix}ISIC2018_Task1-2_Training_Input/LICENSE.txt",
  ]
  assert not listing.problems


def test_isic2016_pairs_capital_suffix(tmp_path):
  replicas.write_isic2016(tmp_path, num_train=3, num_test=2)
  listing = layouts.read_layout("isic2016", tmp_path)
  assert [(c.subset, c.mask.rsplit("/", 1)[1]) for c in listing.cases] == [
    ("train", "ISIC_0000000_Segmentation.png"),
    ("train", "ISIC_0000001_Segmentation.png"),
    ("train", "ISIC_0000002_Segmentation.png"),
    ("test", "ISIC_0000100_Segmentation.png"),
    ("test", "ISIC_0000101_Segmentation.png"),
  ]
  assert listing.ignored == [
    "ISBI2016_ISIC_Part1_Training_Data/ISBI2016_ISIC_Part1_Training_Data.csv"
  ]


def test_folder_unzipped_into_same_named_folder_is_found(tmp_path):
  replicas.write_isic2016(tmp_path / "inner", num_train=2, num_test=0)
  # ISBI2016_ISIC_Part1_Training_Data/ISBI2016_ISIC_Part1_Training_Data/*.jpg
  for name in ("ISBI2016_ISIC_Part1_Training_Data", "ISBI2016_ISIC_Part1_Training_GroundTruth"):
    (tmp_path / name).mkdir()
    (tmp_path / "inner" / name).rename(tmp_path / name / name)
  listing = layouts.read_layout("isic2016", tmp_path)
  assert len(listing.cases) == 2
  assert listing.cases[0].image.startswith(
    "ISBI2016_ISIC_Part1_Training_Data/ISBI2016_ISIC_Part1_Training_Data/"
  )


def test_two_candidate_folders_are_an_error_naming_both(tmp_path):
  replicas.write_isic2018(tmp_path / "a", num_train=1, num_val=0)
  replicas.write_isic2018(tmp_path / "b", num_train=1, num_val=0)
  with pytest.raises(
    layouts.LayoutError,
    match=r"several folders .*a/ISIC2018_Task1-2_Training"
    r"_Input, b/ISIC2018_Task1-2_Training_Input",
  ):
    layouts.read_layout("isic2018", tmp_path)


def test_missing_required_folder_names_it(tmp_path):
  (tmp_path / "something_else").mkdir()
  with pytest.raises(layouts.LayoutError, match="ISIC2018_Task1-2_Training_Input.*something_else/"):
    layouts.read_layout("isic2018", tmp_path)


def test_unpaired_files_are_problems_naming_the_files(tmp_path):
  replicas.write_isic2018(tmp_path, num_train=3, num_val=0)
  (tmp_path / "ISIC2018_Task1_Training_GroundTruth/ISIC_0000001_segmentation.png").unlink()
  (tmp_path / "ISIC2018_Task1-2_Training_Input/ISIC_0000002.jpg").unlink()
  listing = layouts.read_layout("isic2018", tmp_path)
  messages = sorted(p.message() for p in listing.problems)
  assert messages == [
    "image without mask: ISIC2018_Task1-2_Training_Input/ISIC_0000001.jpg: no mask found "
    "(expected ISIC2018_Task1_Training_GroundTruth/ISIC_0000001_segmentation.png)",
    "mask without image: ISIC2018_Task1_Training_GroundTruth/ISIC_0000002_segmentation.png: "
    "no image found (expected ISIC2018_Task1-2_Training_Input/ISIC_0000002.jpg (or .png, "
    ".bmp, .tif))",
  ]
  assert [c.case_id for c in listing.cases] == ["ISIC_0000000"]


def test_duplicate_images_of_one_case_are_a_problem(tmp_path):
  replicas.write_folder(tmp_path, num_cases=2, mask_suffix="")
  Image.new("RGB", (8, 8)).save(tmp_path / "images/case_00.png")
  listing = layouts.read_layout("folder", tmp_path)
  assert [p.kind for p in listing.problems] == ["duplicate"]
  assert listing.problems[0].files == (
    "images/case_00.jpg",
    "images/case_00.png",
    "masks/case_00.png",
  )


@pytest.mark.parametrize("suffix", ["", "_mask", "_Segmentation", "_lesion_mask"])
def test_folder_layout_finds_any_mask_suffix(tmp_path, suffix):
  replicas.write_folder(tmp_path, num_cases=3, mask_suffix=suffix)
  listing = layouts.read_layout("folder", tmp_path)
  assert [(c.case_id, c.mask) for c in listing.cases] == [
    (f"case_{i:02d}", f"masks/case_{i:02d}{suffix}.png") for i in range(3)
  ]


def test_folder_layout_prefers_the_longest_matching_image_name(tmp_path):
  for folder in ("images", "masks"):
    (tmp_path / folder).mkdir()
  for stem in ("a", "a_b"):
    Image.new("RGB", (8, 8)).save(tmp_path / f"images/{stem}.png")
  Image.new("L", (8, 8)).save(tmp_path / "masks/a_b_mask.png")
  Image.new("L", (8, 8)).save(tmp_path / "masks/a_mask.png")
  listing = layouts.read_layout("folder", tmp_path)
  assert {c.case_id: c.mask for c in listing.cases} == {
    "a": "masks/a_mask.png",
    "a_b": "masks/a_b_mask.png",
  }


@pytest.mark.parametrize("nested", [False, True])
def test_ph2_folder_pattern_with_spaces(tmp_path, nested):
  replicas.write_ph2(tmp_path, ids=(2, 3, 437), nested=nested)
  listing = layouts.read_layout("ph2", tmp_path)
  prefix = "download/" if nested else ""
  assert [c.case_id for c in listing.cases] == ["IMD002", "IMD003", "IMD437"]
  assert listing.cases[0].image == (
    f"{prefix}PH2Dataset/PH2 Dataset images/IMD002/IMD002_Dermoscopic_Image/IMD002.bmp"
  )
  assert listing.cases[0].mask == (
    f"{prefix}PH2Dataset/PH2 Dataset images/IMD002/IMD002_lesion/IMD002_lesion.bmp"
  )
  assert not listing.problems


def test_ph2_case_without_lesion_mask_is_a_problem(tmp_path):
  replicas.write_ph2(tmp_path, ids=(2, 3))
  lesion = tmp_path / "PH2Dataset/PH2 Dataset images/IMD003/IMD003_lesion/IMD003_lesion.bmp"
  lesion.unlink()
  listing = layouts.read_layout("ph2", tmp_path)
  assert [(p.kind, p.case_id) for p in listing.problems] == [("missing_mask", "IMD003")]
  assert "IMD003_lesion/IMD003_lesion.bmp" in listing.problems[0].detail


@pytest.mark.parametrize("nested", [False, True])
def test_conic_arrays_and_groups(tmp_path, nested):
  replicas.write_conic(tmp_path, num_patches=12, size=32, num_sources=4, nested=nested)
  listing = layouts.read_layout("conic", tmp_path)
  assert len(listing.cases) == 12
  assert [c.array_index for c in listing.cases] == list(range(12))
  assert [c.group for c in listing.cases[:5]] == [
    "source_0",
    "source_1",
    "source_2",
    "source_3",
    "source_0",
  ]
  assert not listing.warnings


def test_conic_shape_errors_name_the_file(tmp_path):
  replicas.write_conic(tmp_path, num_patches=4, size=16)
  np.save(tmp_path / "labels.npy", np.zeros((4, 16, 16), np.uint16))
  with pytest.raises(
    layouts.LayoutError,
    match=r"labels.npy: shape \(4, 16, 16\) uint16; "
    r"expected \(4, 16, 16, 2\)",
  ):
    layouts.read_layout("conic", tmp_path)


def test_conic_patch_info_rows_must_match(tmp_path):
  replicas.write_conic(tmp_path, num_patches=4, size=16)
  (tmp_path / "patch_info.csv").write_text("patch_info\na-0\n")
  with pytest.raises(layouts.LayoutError, match="patch_info.csv: 1 rows; expected one per patch"):
    layouts.read_layout("conic", tmp_path)


def test_conic_missing_counts_is_a_warning(tmp_path):
  replicas.write_conic(tmp_path, num_patches=4, size=16)
  (tmp_path / "counts.csv").unlink()
  assert layouts.read_layout("conic", tmp_path).warnings == [
    "counts.csv is missing (not needed to train)"
  ]


def test_unknown_dataset_and_missing_source(tmp_path):
  with pytest.raises(ValueError, match="unknown dataset 'isic2019'"):
    layouts.read_layout("isic2019", tmp_path)
  with pytest.raises(layouts.LayoutError, match="not a folder"):
    layouts.read_layout("ph2", pathlib.Path(tmp_path) / "nope")
