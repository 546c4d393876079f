"""`prepare` on tiny replicas: records, info, integrity errors, strictness, atomicity, CLI."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
from PIL import Image

from sgdnet_jax import main as cli
from sgdnet_jax.data import dataset as dataset_lib
from sgdnet_jax.data import images as images_lib
from sgdnet_jax.data import prepare, staging
from tests import replicas

SIZE = 32
ROOT = pathlib.Path(__file__).resolve().parents[1]


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
  info = _prepare(dataset, source, tmp_path / "out")
  assert {s: c["prepared"] for s, c in info["counts"].items() if c["prepared"]} == counts
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
  assert info["default_protocol"] in info["protocols"]
  assert _leftovers(tmp_path) == []


def test_isic2018_description_lists_counts_warnings_and_ignored_files(tmp_path):
  source = replicas.write_isic2018(tmp_path / "source")
  info = _prepare("isic2018", source, tmp_path / "out")
  on_disk = json.loads((tmp_path / "out/dataset.json").read_text())
  assert on_disk == info
  assert info["counts"]["train"] == {"found": 4, "prepared": 4, "expected": 2594}
  assert info["counts"]["test"] == {"found": 0, "prepared": 0, "expected": 1000}
  assert any(
    "train: found 4 image/mask pairs, the official release has 2594" in w for w in info["warnings"]
  )
  assert sorted(info["ignored_files"]) == [
    "ISIC2018_Task1-2_Training_Input/ATTRIBUTION.txt",
    "ISIC2018_Task1-2_Training_Input/LICENSE.txt",
  ]
  assert info["problems"] == [] and info["skipped"] == []
  assert (tmp_path / "out/splits/medi_seg_5fold.json").is_file()


def test_conic_keeps_instances_and_classes(tmp_path):
  source = replicas.write_conic(tmp_path / "source", num_patches=12, size=SIZE)
  info = _prepare("conic", source, tmp_path / "out")
  assert info["counts"]["full"]["prepared"] == 12
  assert info["notes"]["mask is empty (no foreground)"] == ["00000", "00004", "00008"]
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


def test_no_strict_skips_and_lists_the_cases(tmp_path):
  source = replicas.write_isic2018(tmp_path / "source", num_train=4, num_val=0)
  _corrupt(source, "non-binary mask")
  (source / "ISIC2018_Task1_Training_GroundTruth/ISIC_0000003_segmentation.png").unlink()
  info = _prepare("isic2018", source, tmp_path / "out", strict=False)
  assert info["skipped"] == ["ISIC_0000001", "ISIC_0000003"]
  assert sorted(p["kind"] for p in info["problems"]) == ["missing_mask", "non_binary_mask"]
  assert info["counts"]["train"]["prepared"] == 2
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
  before = (tmp_path / "out/dataset.json").read_text()
  with pytest.raises(FileExistsError, match="--overwrite"):
    _prepare("folder", source, tmp_path / "out")
  (source / "images/case_01.jpg").write_bytes(b"junk")
  with pytest.raises(prepare.PreparationError):
    _prepare("folder", source, tmp_path / "out", overwrite=True)
  assert (tmp_path / "out/dataset.json").read_text() == before
  assert _leftovers(tmp_path) == []


def test_grayscale_and_rgba_images_are_converted_with_a_note(tmp_path):
  source = replicas.write_folder(tmp_path / "source", num_cases=3)
  Image.open(source / "images/case_00.jpg").convert("L").save(source / "images/case_00.jpg")
  rgba = Image.open(source / "images/case_01.jpg").convert("RGBA")
  (source / "images/case_01.jpg").unlink()
  rgba.save(source / "images/case_01.png")
  info = _prepare("folder", source, tmp_path / "out")
  assert info["notes"] == {
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
  assert json.loads((tmp_path / "out/dataset.json").read_text())["skipped"] == ["IMD003"]
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


def _tree(root: pathlib.Path) -> list:
  """Every path under root with its size (files) or -1 (folders): a listing to compare."""
  return sorted(
    (p.relative_to(root).as_posix(), p.stat().st_size if p.is_file() else -1)
    for p in root.rglob("*")
  )


def _cli_prepare(source, out, *extra) -> list:
  return [
    "prepare",
    "--dataset",
    "folder",
    "--source",
    str(source),
    "--out",
    str(out),
    "--size",
    str(SIZE),
    "--workers",
    "1",
    *extra,
  ]


def _one_line_error(capsys) -> str:
  err = capsys.readouterr().err
  assert "Traceback" not in err
  lines = [line for line in err.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1, err
  return lines[0]


@pytest.mark.parametrize(
  "out_of",
  ["the source", "a parent of the source", "a link to the source", "unrelated", "inside"],
)
def test_overwrite_refuses_what_is_not_a_prepared_dataset_and_touches_nothing(
  tmp_path, capsys, out_of
):
  source = replicas.write_folder(tmp_path / "data/raw", num_cases=2)
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes/thesis.txt").write_text("years of work\n")
  (tmp_path / "link").symlink_to(source)
  out = {
    "the source": source,
    "a parent of the source": tmp_path / "data",
    "a link to the source": tmp_path / "link",
    "unrelated": tmp_path / "notes",
    "inside": source / "prepared",
  }[out_of]
  before = _tree(tmp_path)
  assert cli.main(_cli_prepare(source, out, "--overwrite")) == 2
  message = _one_line_error(capsys)
  assert str(out.resolve()) in message and "nothing was" in message
  assert _tree(tmp_path) == before


def test_output_inside_the_source_is_refused_without_overwrite(tmp_path, capsys):
  source = replicas.write_folder(tmp_path / "raw", num_cases=2)
  before = _tree(tmp_path)
  assert cli.main(_cli_prepare(source, source / "prepared")) == 2
  assert "inside the source" in _one_line_error(capsys)
  assert _tree(tmp_path) == before


def test_overwrite_replaces_a_prepared_dataset(tmp_path, capsys):
  source = replicas.write_folder(tmp_path / "raw", num_cases=2)
  assert cli.main(_cli_prepare(source, tmp_path / "out")) == 0
  assert cli.main(_cli_prepare(source, tmp_path / "out", "--overwrite", "--size", "64")) == 0
  assert json.loads((tmp_path / "out/dataset.json").read_text())["image_size"] == 64
  assert _leftovers(tmp_path) == []


def _write_many_cases(source: pathlib.Path, count: int) -> None:
  """`count` links to one 512x512 PNG pair: slow enough to prepare, instant to write."""
  (source / "images").mkdir(parents=True)
  (source / "masks").mkdir()
  image = np.linspace(0, 255, 512 * 512 * 3).reshape(512, 512, 3).astype(np.uint8)
  yy, xx = np.mgrid[:512, :512]
  Image.fromarray(image).save(source / "one.png")
  Image.fromarray(((yy - 256) ** 2 + (xx - 256) ** 2 < 100**2).astype(np.uint8) * 255).save(
    source / "one_mask.png"
  )
  for index in range(count):
    os.link(source / "one.png", source / f"images/case_{index:05d}.png")
    os.link(source / "one_mask.png", source / f"masks/case_{index:05d}.png")


@pytest.mark.parametrize("stage", ["prepare", "synthetic generator"])
def test_sigterm_removes_the_staging_folder(tmp_path, stage):
  if stage == "prepare":
    _write_many_cases(tmp_path / "source", 4000)
    dataset, staging_name, extra = "folder", ".out.tmp-", []
  else:
    dataset, staging_name, extra = "synthetic", ".source.tmp-", ["--num-cases", "5000"]
  args = [sys.executable, "-m", "sgdnet_jax.main"]
  args += _cli_prepare(tmp_path / "source", tmp_path / "out", *extra)
  args[args.index("folder")] = dataset
  process = subprocess.Popen(
    args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )
  deadline = time.monotonic() + 120
  while not any(staging_name in p.name for p in tmp_path.iterdir()):
    assert process.poll() is None, process.communicate()
    assert time.monotonic() < deadline, "no staging folder appeared"
    time.sleep(0.01)
  process.send_signal(signal.SIGTERM)
  _, err = process.communicate(timeout=60)
  assert process.returncode == -signal.SIGTERM, err
  assert "Traceback" not in err and "interrupted by SIGTERM" in err
  assert _leftovers(tmp_path) == [] and not (tmp_path / "out").exists()


def test_a_16_bit_image_keeps_its_contrast(tmp_path):
  source = replicas.write_folder(tmp_path / "source", num_cases=3)
  shape = lambda case: np.asarray(Image.open(source / f"masks/{case}_mask.png")).shape
  ramp = lambda shape: np.linspace(1000, 3000, shape[0] * shape[1]).reshape(shape)
  gray = ramp(shape("case_00")).astype(np.uint16)
  (source / "images/case_00.jpg").unlink()
  Image.fromarray(gray).save(source / "images/case_00.png")  # PIL mode I;16
  colour = np.stack([ramp(shape("case_01")) / d for d in (1, 2, 4)], axis=-1).astype(np.uint16)
  (source / "images/case_01.jpg").unlink()
  tifffile.imwrite(source / "images/case_01.tif", colour, photometric="rgb")
  mask = (np.asarray(Image.open(source / "masks/case_02_mask.png")) > 0).astype(np.uint16) * 1000
  Image.fromarray(mask).save(source / "masks/case_02_mask.png")  # 16-bit values 0 and 1000
  info = _prepare("folder", source, tmp_path / "out")
  data = dataset_lib.PreparedDataset(tmp_path / "out")
  image = data.record(data.case("case_00"))["image"]
  assert image.min() <= 2 and image.max() >= 253, (image.min(), image.max())
  np.testing.assert_array_equal(image[..., 0], image[..., 2])
  expected = np.round((gray.astype(np.float64) - 1000) * 255 / 2000).astype(np.uint8)
  np.testing.assert_array_equal(
    image, images_lib.resize_image(Image.fromarray(expected).convert("RGB"), SIZE)
  )
  colour_image = data.record(data.case("case_01"))["image"]  # channels stretched together
  assert colour_image.max() >= 250 and colour_image.min() <= 5
  red, green, blue = colour_image.reshape(-1, 3).mean(axis=0)
  assert red > green > blue
  assert sorted(info["notes"]) == [
    "16-bit colour image scaled from its own range (of its high bytes) to 0..255",
    "high-bit-depth image (PIL mode I;16) scaled from its own range to 0..255",
  ]
  foreground = np.asarray(Image.open(source / "masks/case_02_mask.png")) > 0
  np.testing.assert_array_equal(data.native_mask("case_02"), foreground)


def test_a_16_bit_colour_mask_is_refused_by_name(tmp_path):
  source = replicas.write_folder(tmp_path / "source", num_cases=2)
  mask = np.asarray(Image.open(source / "masks/case_00_mask.png")).astype(np.uint16)
  (source / "masks/case_00_mask.png").unlink()
  tifffile.imwrite(source / "masks/case_00_mask.tif", np.stack([mask] * 3, -1), photometric="rgb")
  with pytest.raises(prepare.PreparationError, match="case_00_mask.tif: 16-bit colour mask"):
    _prepare("folder", source, tmp_path / "out")


@pytest.mark.parametrize("layout", ["empty images/ and masks/", "empty source"])
def test_a_dataset_without_cases_is_a_one_line_error(tmp_path, capsys, layout):
  source = tmp_path / "source"
  source.mkdir()
  if layout == "empty images/ and masks/":
    (source / "images").mkdir()
    (source / "masks").mkdir()
    expected = f"no image/mask pairs in {source}/images and {source}/masks"
  else:
    expected = f"{source}: no folder named 'images' or 'masks'"
  assert cli.main(_cli_prepare(source, tmp_path / "out")) == 2
  assert expected in _one_line_error(capsys)
  assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_a_signal_during_a_deferred_step_acts_after_it(tmp_path):
  received = []
  previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
  try:
    with (
      pytest.raises(staging.Interrupted, match="result was already in place"),
      staging.Staging(tmp_path / ".out.tmp-1") as stage,
      stage.deferred(),
    ):
      os.kill(os.getpid(), signal.SIGTERM)
      stage.path.rename(tmp_path / "out")  # still runs: the swap is never cut in half
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert received == [signal.SIGTERM]  # delivered once more, to the previous handler
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("size, nearest", [(40, "use --size 32 or 64"), (7, "use --size 32")])
def test_a_size_the_models_do_not_take_is_refused(tmp_path, capsys, size, nearest):
  source = replicas.write_folder(tmp_path / "raw", num_cases=2)
  before = _tree(tmp_path)
  assert cli.main(_cli_prepare(source, tmp_path / "out", "--size", str(size))) == 2
  message = _one_line_error(capsys)
  assert message.startswith(f"error: --size {size}: ") and message.endswith(nearest)
  assert _tree(tmp_path) == before


def test_overwrite_refuses_a_prepared_dataset_holding_a_users_file(tmp_path, capsys):
  source = replicas.write_folder(tmp_path / "raw", num_cases=2)
  out = tmp_path / "out"
  assert cli.main(_cli_prepare(source, out)) == 0
  (out / "runs/f0").mkdir(parents=True)
  (out / "runs/f0/notes.txt").write_text("a week of notes\n")
  (out / "splits/README").write_text("mine too\n")
  before = _tree(tmp_path)
  assert cli.main(_cli_prepare(source, out, "--overwrite")) == 2
  message = _one_line_error(capsys)
  assert f"--out {out} holds runs/f0/notes.txt, which is not part of a prepared" in message
  assert _tree(tmp_path) == before
  shutil.rmtree(out / "runs")
  assert cli.main(_cli_prepare(source, out, "--overwrite")) == 2
  assert "holds splits/README" in _one_line_error(capsys)


def test_staging_left_by_a_killed_prepare_is_removed_by_the_next(tmp_path, capsys):
  source = replicas.write_folder(tmp_path / "raw", num_cases=2)
  gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                        capture_output=True, text=True).stdout.strip()  # fmt: skip
  stale = [tmp_path / f".out.tmp-{gone}", tmp_path / f".out.old-{gone}"]
  kept = [tmp_path / f".out.tmp-{os.getppid()}", tmp_path / f".other.tmp-{gone}"]
  for folder in stale + kept:
    (folder / "tfds").mkdir(parents=True)
  assert cli.main(_cli_prepare(source, tmp_path / "out")) == 0
  assert [p.exists() for p in stale + kept] == [False, False, True, True]
  assert f"removed {stale[0]}, left by a prepare (pid {gone}) that was killed" in (
    capsys.readouterr().err
  )
