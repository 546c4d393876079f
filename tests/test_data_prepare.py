"""`prepare` on tiny replicas: records, report, integrity errors, strictness, atomicity, CLI."""

import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from sgdnet_jax import main as cli
from sgdnet_jax.data import dataset as dataset_lib
from sgdnet_jax.data import prepare
from tests import replicas

SIZE = 32


def _prepare(dataset, source, out, **kwargs):
  return prepare.prepare(dataset, source, out, size=SIZE, progress=False, workers=2, **kwargs)


def _leftovers(parent: pathlib.Path):
  return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


@pytest.mark.parametrize(
  "dataset,write,counts",
  [
    ("isic2016", replicas.write_isic2016, {"train": 3, "test": 2}),
    ("isic2018", replicas.write_isic2018, {"train": 4, "validation": 2}),
    ("ph2", replicas.write_ph2, {"full": 3}),
    ("folder", replicas.write_folder, {"full": 10}),
  ],
)
def test_file_layouts_prepare_records_and_native_masks(tmp_path, dataset, write, counts):
  source = write(tmp_path / "source", nested=True)
  report = _prepare(dataset, source, tmp_path / "out")
  assert {s: c["prepared"] for s, c in report["counts"].items() if c["prepared"]} == counts
  data = dataset_lib.PreparedDataset(tmp_path / "out")
  assert len(data.cases) == sum(counts.values())
  for case in data.cases:
    record = data.record(case)
    assert record["case_id"].decode() == case.case_id
    assert record["image"].shape == (SIZE, SIZE, 3) and record["image"].dtype == np.uint8
    assert set(np.unique(record["mask"])) <= {0, 1}
    original = np.asarray(Image.open(source / case.mask)) > 0  # PH2: mode '1' BMP -> bool
    assert (case.height, case.width) == original.shape == Image.open(source / case.image).size[::-1]
    np.testing.assert_array_equal(data.native_mask(case.case_id), original)
    resized = np.asarray(
      Image.fromarray(original.astype(np.uint8)).resize((SIZE, SIZE), Image.NEAREST)
    )
    np.testing.assert_array_equal(record["mask"], resized)
  assert report["default_protocol"] in report["protocols"]
  assert _leftovers(tmp_path) == []


def test_isic2018_report_lists_counts_warnings_and_ignored_files(tmp_path):
  source = replicas.write_isic2018(tmp_path / "source")
  report = _prepare("isic2018", source, tmp_path / "out")
  on_disk = json.loads((tmp_path / "out/report.json").read_text())
  assert on_disk == report
  assert report["counts"]["train"] == {"found": 4, "prepared": 4, "expected": 2594}
  assert report["counts"]["test"] == {"found": 0, "prepared": 0, "expected": 1000}
  assert any(
    "train: found 4 image/mask pairs, the official release has 2594" in w
    for w in report["warnings"]
  )
  assert sorted(report["ignored_files"]) == [
    "ISIC2018_Task1-2_Training_Input/ATTRIBUTION.txt",
    "ISIC2018_Task1-2_Training_Input/LICENSE.txt",
  ]
  assert report["problems"] == [] and report["skipped"] == []
  assert (tmp_path / "out/splits/medi_seg_5fold.json").is_file()


def test_conic_keeps_instances_and_classes(tmp_path):
  source = replicas.write_conic(tmp_path / "source", num_patches=12, size=SIZE)
  report = _prepare("conic", source, tmp_path / "out")
  assert report["counts"]["full"]["prepared"] == 12
  assert report["notes"]["mask is empty (no foreground)"] == ["00000", "00004", "00008"]
  labels = np.load(source / "labels.npy")
  images = np.load(source / "images.npy")
  data = dataset_lib.PreparedDataset(tmp_path / "out")
  for case in data.cases:
    record = data.record(case)
    np.testing.assert_array_equal(record["image"], images[case.index])
    np.testing.assert_array_equal(record["instances"], labels[case.index, ..., 0])
    np.testing.assert_array_equal(record["classes"], labels[case.index, ..., 1])
    np.testing.assert_array_equal(record["mask"], labels[case.index, ..., 0] > 0)
  assert data.cases[5].group == "source_1"


def test_prepare_resizes_to_the_requested_size(tmp_path):
  source = replicas.write_conic(tmp_path / "source", num_patches=4, size=32)
  prepare.prepare("conic", source, tmp_path / "out", size=16, progress=False)
  data = dataset_lib.PreparedDataset(tmp_path / "out")
  record = data.record(data.cases[1])
  assert record["image"].shape == (16, 16, 3) and record["instances"].shape == (16, 16)
  assert data.native_mask(data.cases[1].case_id).shape == (32, 32)


def _corrupt(source: pathlib.Path, kind: str) -> str:
  """Introduces one integrity error of `kind` into an ISIC 2018 replica; returns the file."""
  images_dir = source / "ISIC2018_Task1-2_Training_Input"
  masks_dir = source / "ISIC2018_Task1_Training_GroundTruth"
  if kind == "truncated image":
    path = images_dir / "ISIC_0000001.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a download cut off half way
  elif kind == "unreadable image":
    path = images_dir / "ISIC_0000001.jpg"
    path.write_bytes(b"not a jpeg at all")
  elif kind == "unreadable mask":
    path = masks_dir / "ISIC_0000001_segmentation.png"
    path.write_bytes(path.read_bytes()[:60])
  elif kind == "missing mask":
    (masks_dir / "ISIC_0000001_segmentation.png").unlink()
    path = images_dir / "ISIC_0000001.jpg"
  elif kind == "missing image":
    (images_dir / "ISIC_0000001.jpg").unlink()
    path = masks_dir / "ISIC_0000001_segmentation.png"
  elif kind == "size mismatch":
    path = masks_dir / "ISIC_0000001_segmentation.png"
    Image.open(path).resize((7, 5)).save(path)
  elif kind == "non-binary mask":
    path = masks_dir / "ISIC_0000001_segmentation.png"
    width, height = Image.open(path).size
    Image.fromarray(np.arange(height * width, dtype=np.uint8).reshape(height, width)).save(path)
  return path.relative_to(source).as_posix()


INTEGRITY_ERRORS = {
  "truncated image": "unreadable image: {file}: image file is truncated",
  "unreadable image": "unreadable image: {file}: cannot identify image file",
  "unreadable mask": "unreadable mask: {file}: ",
  "missing mask": "image without mask: {file}: no mask found (expected "
  "ISIC2018_Task1_Training_GroundTruth/ISIC_0000001_segmentation.png)",
  "missing image": "mask without image: {file}: no image found (expected "
  "ISIC2018_Task1-2_Training_Input/ISIC_0000001.jpg",
  "size mismatch": "image/mask size mismatch: ISIC2018_Task1-2_Training_Input/ISIC_0000001.jpg,"
  " {file}: image is 45x33 but mask is 7x5 (width x height); expected the "
  "same size",
  "non-binary mask": "mask is not binary-like: {file}: 256 distinct values (0, 1, 2, 3, 4, 5, "
  "6, 7, ...); expected 0 for background and one foreground value",
}


@pytest.mark.parametrize("kind", sorted(INTEGRITY_ERRORS))
def test_strict_mode_fails_naming_the_file_and_writes_nothing(tmp_path, kind):
  source = replicas.write_isic2018(tmp_path / "source", num_train=3, num_val=0)
  file = _corrupt(source, kind)
  with pytest.raises(prepare.PreparationError) as error:
    _prepare("isic2018", source, tmp_path / "out")
  assert INTEGRITY_ERRORS[kind].format(file=file) in str(error.value)
  assert "--no-strict" in str(error.value)
  assert not (tmp_path / "out").exists()
  assert _leftovers(tmp_path) == []


def test_strict_mode_lists_every_problem_at_once(tmp_path):
  source = replicas.write_isic2018(tmp_path / "source", num_train=4, num_val=0)
  (source / "ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg").write_bytes(b"junk")
  (source / "ISIC2018_Task1_Training_GroundTruth/ISIC_0000003_segmentation.png").unlink()
  with pytest.raises(prepare.PreparationError, match="2 problem") as error:
    _prepare("isic2018", source, tmp_path / "out")
  assert "ISIC_0000000.jpg" in str(error.value) and "ISIC_0000003.jpg" in str(error.value)


def test_no_strict_skips_and_reports_the_cases(tmp_path):
  source = replicas.write_isic2018(tmp_path / "source", num_train=4, num_val=0)
  _corrupt(source, "non-binary mask")
  (source / "ISIC2018_Task1_Training_GroundTruth/ISIC_0000003_segmentation.png").unlink()
  report = _prepare("isic2018", source, tmp_path / "out", strict=False)
  assert report["skipped"] == ["ISIC_0000001", "ISIC_0000003"]
  assert sorted(p["kind"] for p in report["problems"]) == ["missing_mask", "non_binary_mask"]
  assert report["counts"]["train"]["prepared"] == 2
  data = dataset_lib.PreparedDataset(tmp_path / "out")
  assert [c.case_id for c in data.cases] == ["ISIC_0000000", "ISIC_0000002"]
  fold = data.protocol("medi_seg_5fold")["folds"][0]
  assert sorted(fold["train"] + fold["val"] + fold["test"]) == ["ISIC_0000000", "ISIC_0000002"]


def test_no_strict_with_nothing_usable_fails(tmp_path):
  source = replicas.write_folder(tmp_path / "source", num_cases=1)
  (source / "images/case_00.jpg").write_bytes(b"junk")
  with pytest.raises(prepare.PreparationError, match="no usable case in the full subset"):
    _prepare("folder", source, tmp_path / "out", strict=False)
  assert _leftovers(tmp_path) == [] and not (tmp_path / "out").exists()


def test_failed_overwrite_keeps_the_previous_preparation(tmp_path):
  source = replicas.write_folder(tmp_path / "source", num_cases=3)
  _prepare("folder", source, tmp_path / "out")
  before = (tmp_path / "out/report.json").read_text()
  with pytest.raises(FileExistsError, match="--overwrite"):
    _prepare("folder", source, tmp_path / "out")
  (source / "images/case_01.jpg").write_bytes(b"junk")
  with pytest.raises(prepare.PreparationError):
    _prepare("folder", source, tmp_path / "out", overwrite=True)
  assert (tmp_path / "out/report.json").read_text() == before
  assert _leftovers(tmp_path) == []


def test_grayscale_and_rgba_images_are_converted_with_a_note(tmp_path):
  source = replicas.write_folder(tmp_path / "source", num_cases=3)
  Image.open(source / "images/case_00.jpg").convert("L").save(source / "images/case_00.jpg")
  rgba = Image.open(source / "images/case_01.jpg").convert("RGBA")
  (source / "images/case_01.jpg").unlink()
  rgba.save(source / "images/case_01.png")
  report = _prepare("folder", source, tmp_path / "out")
  assert report["notes"] == {
    "alpha channel dropped": ["case_01"],
    "grayscale expanded to RGB": ["case_00"],
  }
  data = dataset_lib.PreparedDataset(tmp_path / "out")
  gray = data.record(data.case("case_00"))["image"]
  np.testing.assert_array_equal(gray[..., 0], gray[..., 2])


def test_cli_exit_codes_and_messages(tmp_path, capsys):
  source = replicas.write_ph2(tmp_path / "source", ids=(2, 3))
  args = [
    "prepare",
    "--dataset",
    "ph2",
    "--source",
    str(source),
    "--out",
    str(tmp_path / "out"),
    "--size",
    str(SIZE),
    "--workers",
    "1",
  ]
  assert cli.main(args) == 0
  assert "prepared ph2 into" in capsys.readouterr().out
  (source / "PH2Dataset/PH2 Dataset images/IMD003/IMD003_lesion/IMD003_lesion.bmp").unlink()
  assert cli.main(args + ["--overwrite"]) == 2
  err = capsys.readouterr().err
  assert (
    "image without mask: PH2Dataset/PH2 Dataset images/IMD003/IMD003_Dermoscopic_Image/"
    "IMD003.bmp" in err
  )
  assert cli.main(args + ["--overwrite", "--no-strict"]) == 0
  assert json.loads((tmp_path / "out/report.json").read_text())["skipped"] == ["IMD003"]
  assert (
    cli.main(
      [
        "prepare",
        "--dataset",
        "ph2",
        "--source",
        str(tmp_path / "nowhere"),
        "--out",
        str(tmp_path / "x"),
      ]
    )
    == 2
  )
  assert "not a folder" in capsys.readouterr().err


def test_a_case_in_two_subsets_is_a_duplicate(tmp_path):
  source = replicas.write_isic2018(tmp_path / "source", num_train=2, num_val=1)
  for folder, suffix in (("Input", ".jpg"), ("GroundTruth", "_segmentation.png")):
    task = "Task1-2" if folder == "Input" else "Task1"
    (source / f"ISIC2018_{task}_Validation_{folder}/ISIC_0001000{suffix}").rename(
      source / f"ISIC2018_{task}_Validation_{folder}/ISIC_0000000{suffix}"
    )
  with pytest.raises(
    prepare.PreparationError,
    match="duplicate case: ISIC2018_Task1-2_Validation_Input/ISIC_0000000.jpg: "
    "case id also in another subset",
  ):
    _prepare("isic2018", source, tmp_path / "out")
