"""The embedded demo dataset: deterministic, dermoscopy-like, idempotent to generate and prepare."""

import numpy as np
import pytest
from PIL import Image

from sgdnet_jax import demo, main
from sgdnet_jax.data import dataset as dataset_lib
from sgdnet_jax.data import synthetic


def test_render_case_is_deterministic_and_plausible():
  image, mask = synthetic.render_case(np.random.default_rng([0, 1]), 48, 64)
  again, mask_again = synthetic.render_case(np.random.default_rng([0, 1]), 48, 64)
  np.testing.assert_array_equal(image, again)
  np.testing.assert_array_equal(mask, mask_again)
  assert image.shape == (48, 64, 3) and image.dtype == np.uint8 and mask.shape == (48, 64)
  fractions = [
    synthetic.render_case(np.random.default_rng([0, i]), 64, 64)[1].mean() for i in range(20)
  ]
  assert min(fractions) > 0.02 and max(fractions) < 0.8
  lesion, skin = image[mask].mean(), image[~mask].mean()
  assert lesion < skin  # pigmented lesion darker than the skin around it


def test_generate_folder_dataset_is_idempotent(tmp_path):
  root = synthetic.generate_folder_dataset(tmp_path / "demo", num_cases=4, image_size=32)
  names = sorted(p.name for p in (root / "images").iterdir())
  assert names == [f"synth_{i:04d}.jpg" for i in range(4)]
  mask = np.asarray(Image.open(root / "masks/synth_0002_segmentation.png"))
  assert set(np.unique(mask)) <= {0, 255}
  stamp = (root / "images/synth_0000.jpg").stat().st_mtime_ns
  synthetic.generate_folder_dataset(tmp_path / "demo", num_cases=4, image_size=32)
  assert (root / "images/synth_0000.jpg").stat().st_mtime_ns == stamp
  synthetic.generate_folder_dataset(tmp_path / "demo", num_cases=5, image_size=32)
  assert len(list((root / "images").iterdir())) == 5


def test_generate_refuses_a_folder_with_other_files(tmp_path):
  (tmp_path / "mine.txt").write_text("keep me")
  with pytest.raises(FileExistsError, match="holds other files"):
    synthetic.generate_folder_dataset(tmp_path, num_cases=2, image_size=16)


def test_ensure_demo_dataset_prepares_once(tmp_path):
  prepared_dir = demo.ensure_demo_dataset(tmp_path, num_cases=10, image_size=32)
  data = dataset_lib.PreparedDataset(prepared_dir)
  assert data.info["dataset"] == "synthetic" and data.image_size == 32
  assert [len(data.split("", 0, s)) for s in ("train", "val", "test")] == [7, 1, 2]
  stamp = (prepared_dir / "dataset.json").stat().st_mtime_ns
  assert demo.ensure_demo_dataset(tmp_path, num_cases=10, image_size=32) == prepared_dir
  assert (prepared_dir / "dataset.json").stat().st_mtime_ns == stamp
  smaller = demo.ensure_demo_dataset(tmp_path, num_cases=10, image_size=32, prepared_size=16)
  assert dataset_lib.PreparedDataset(smaller).image_size == 16


def test_prepare_synthetic_by_hand_makes_the_demo_data(tmp_path, capsys):
  """`prepare --dataset synthetic` at the demo's two sizes writes the data the demo then reuses."""
  source, prepared = tmp_path / "source", tmp_path / "prepared"
  argv = ["prepare", "--dataset", "synthetic", "--source", str(source), "--out", str(prepared)]
  argv += ["--num-cases", "10", "--generated-size", "64", "--size", "32"]
  assert main.main(argv) == 0
  assert "prepared synthetic" in capsys.readouterr().out
  with Image.open(source / "images/synth_0003.jpg") as image:
    assert image.size == (64, 64)
  assert dataset_lib.PreparedDataset(prepared).image_size == 32
  stamp = (prepared / "dataset.json").stat().st_mtime_ns
  # What the demo makes of a config with data.image_size=32: the same data, so nothing is redone.
  reused = demo.ensure_demo_dataset(tmp_path, num_cases=10, image_size=64, prepared_size=32)
  assert reused == prepared and (prepared / "dataset.json").stat().st_mtime_ns == stamp


def test_prepare_refuses_a_generated_size_without_synthetic_data(tmp_path, capsys):
  argv = ["prepare", "--source", str(tmp_path / "s"), "--out", str(tmp_path / "o")]
  with pytest.raises(SystemExit) as exit_info:
    main.main([*argv, "--dataset", "folder", "--generated-size", "64"])
  assert exit_info.value.code == 2
  assert "--generated-size goes with --dataset synthetic" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    main.main([*argv, "--dataset", "synthetic", "--generated-size", "0"])
  assert "give a positive number of pixels" in capsys.readouterr().err
  assert not (tmp_path / "s").exists() and not (tmp_path / "o").exists()
