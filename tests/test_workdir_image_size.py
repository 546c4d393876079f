"""One source of truth for the training size: `prepare` picks it, `data.image_size=0` reads it,
and every command takes its size from `workdir.image_size.resolve`."""

import contextlib
import io

import numpy as np
import pytest
from PIL import Image

from configs import default
from sgdnet_jax import main as cli
from sgdnet_jax.core import config_utils, errors
from sgdnet_jax.data import pipeline, prepare
from sgdnet_jax.workdir import image_size

TINY = "configs/test.py"  # sides in multiples of 32


def _folder(root, sizes):
  """`images/` + `masks/` of the given (width, height) sizes (a square lesion in each)."""
  for name in ("images", "masks"):
    (root / name).mkdir(parents=True)
  for index, (width, height) in enumerate(sizes):
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4 : height // 2, width // 4 : width // 2] = 255
    image = np.stack([mask // 2 + index] * 3, -1)
    Image.fromarray(image).save(root / "images" / f"case_{index}.png")
    Image.fromarray(mask).save(root / "masks" / f"case_{index}.png")
  return root


@pytest.mark.parametrize(
  "sizes, expected",
  [
    ([(140, 100), (130, 130), (70, 200), (100, 150), (300, 99)], 96),  # median shorter side 100
    ([(600, 500)] * 3, 256),  # capped at the paper's size
    ([(20, 24)] * 3, 32),  # at least one encoder stride
  ],
)
def test_folder_default_size_is_the_median_rounded_down_to_32_and_capped(tmp_path, sizes, expected):
  size, reason = prepare.default_size("folder", _folder(tmp_path, sizes))
  assert size == expected and "median shorter side" in reason
  assert prepare.default_size("isic2018", tmp_path) == (
    256,
    "the paper's training size for isic2018",
  )


@pytest.fixture(scope="module")
def prepared_at_default(tmp_path_factory):
  """5 images with a median shorter side of 100, prepared by the CLI without --size."""
  root = tmp_path_factory.mktemp("size")
  source = _folder(root / "source", [(140, 100), (130, 130), (70, 200), (100, 150), (300, 99)])
  args = ["prepare", "--dataset", "folder", "--source", str(source), "--out", str(root / "out")]
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    exit_code = cli.main(args + ["--workers", "1"])
  return root / "out", exit_code, printed.getvalue()


def test_prepare_without_size_prints_its_choice_and_writes_it(prepared_at_default):
  out, exit_code, printed = prepared_at_default
  assert exit_code == 0
  assert "--size 96: the median shorter side of the 5 images is 100 px" in printed
  config = default.get_config().data
  config.dir, config.image_size = str(out), 0
  assert pipeline.image_size(config) == 96


def test_image_size_0_trains_at_the_prepared_size_and_a_different_one_is_an_error(
  prepared_at_default,
):
  out, _, _ = prepared_at_default
  config = default.get_config().data
  config.dir, config.image_size, config.read_threads = str(out), 0, 1
  batch = next(pipeline.make_train_iterator(config, 2, seed=0, process_index=0, process_count=1))
  assert batch["image"].shape == (2, 96, 96, 3)
  config.image_size = 96
  assert pipeline.image_size(config) == 96 and pipeline.split_size(config, "train") == 3
  config.image_size = 128
  with pytest.raises(errors.ConfigError, match="prepared at 96x96 but data.image_size is 128"):
    pipeline.split_size(config, "train")
  config.dir, config.image_size = "", 0
  with pytest.raises(errors.ConfigError, match="data.image_size is 0 .* data.dir is empty"):
    pipeline.image_size(config)


def _recording(path, size: int):
  """A workdir whose config.json records `data.image_size=size` (what `train` writes)."""
  config = config_utils.load_config(TINY)
  config.data.image_size = size
  path.mkdir(parents=True)
  config_utils.save_config(config, path / "config.json")
  return path


def test_the_size_is_the_configs_else_the_workdirs_record_else_the_prepared_data(
  prepared_at_default, tmp_path
):
  out, _, _ = prepared_at_default
  config = config_utils.load_config(TINY)
  config.data.dir, config.data.image_size = str(out), 0
  recorded = _recording(tmp_path / "recorded", 64)
  unrecorded = tmp_path / "unrecorded"  # e.g. a `convert` output without config.json
  assert image_size.resolve(config) == 96
  assert image_size.resolve(config, [unrecorded]) == 96
  assert image_size.resolve(config, [unrecorded, recorded]) == 64
  config.data.dir = ""  # the record needs no prepared data (predict, export)
  assert image_size.resolve(config, [recorded]) == 64
  config.data.image_size = 32
  assert image_size.resolve(config, [recorded]) == 32
  config.data.image_size = 0
  with pytest.raises(errors.ConfigError, match="data.image_size is 0 .* data.dir is empty"):
    image_size.resolve(config, [unrecorded])


@pytest.mark.parametrize("where", ["config", "record"])
def test_a_size_the_model_does_not_take_is_one_config_error(tmp_path, where):
  config = config_utils.load_config(TINY)
  config.data.image_size = 48 if where == "config" else 0
  workdir = _recording(tmp_path / "w", 48 if where == "record" else 64)
  with pytest.raises(errors.ConfigError, match=r"^data.image_size=48: .* use 32 or 64$"):
    image_size.resolve(config, [workdir])


def test_ablate_and_demo_refuse_a_size_before_loading_or_generating(capsys, tmp_path):
  workdir = _recording(tmp_path / "w", 64)
  argv = ["ablate", "--config", TINY, "--config.data.image_size=48", "--workdir", str(workdir)]
  assert cli.main(argv) == 2
  assert "data.image_size=48" in capsys.readouterr().err
  data = tmp_path / "demo" / "prepared"
  argv = ["demo", "--config.data.image_size=48", f"--config.data.dir={data}"]
  assert cli.main([*argv, "--workdir", str(tmp_path / "runs")]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: data.image_size=48") and err.count("\n") == 1
  assert not (tmp_path / "demo").exists() and not (tmp_path / "runs").exists()
