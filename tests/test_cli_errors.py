"""Every command answers a user's mistake with one line `error: ...` and exit code 2.

No traceback: the mistake is the user's (a config, a path, a permission), not a bug. The
commands run in this process through `sgdnet_jax.main.main`; each fails before any compile.
"""

import errno
import os

import numpy as np
import pytest
from PIL import Image

from sgdnet_jax import main
from sgdnet_jax.train import workdir

CONFIG = "configs/test.py"


def error_line(capsys, argv) -> str:
  """Runs `argv`; asserts exit 2 and exactly one stderr line `error: ...`; returns that line."""
  assert main.main(argv) == 2
  err = capsys.readouterr().err
  assert "Traceback" not in err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  return lines[0]


def test_train_in_a_read_only_workdir(capsys, tmp_path, monkeypatch):
  real_open = os.open

  def read_only_open(path, flags, *args):
    if str(path).endswith(workdir.LOCK_FILE):
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
    return real_open(path, flags, *args)

  monkeypatch.setattr(os, "open", read_only_open)
  line = error_line(capsys, ["train", "--config", CONFIG, "--workdir", str(tmp_path / "w")])
  assert f"cannot write in workdir {tmp_path / 'w'} (Read-only file system)" in line


def test_train_with_a_workdir_below_a_file(capsys, tmp_path):
  (tmp_path / "file").write_text("")
  line = error_line(capsys, ["train", "--config", CONFIG, "--workdir", str(tmp_path / "file/w")])
  assert "cannot write in workdir" in line


def test_train_without_a_dataset(capsys, tmp_path):
  line = error_line(capsys, ["train", "--config", CONFIG, "--workdir", str(tmp_path)])
  assert "config.data.dir is empty" in line


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_evaluate_and_predict_on_a_folder_without_checkpoints(capsys, tmp_path, command):
  workdir = tmp_path / "workdir"
  workdir.mkdir()
  images = []
  if command == "predict":  # a readable image, so that the missing model is what stops it
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    images = ["--images", str(tmp_path / "x.png")]
  line = error_line(capsys, [command, "--config", CONFIG, "--workdir", str(workdir), *images])
  assert f"{workdir} holds no model variables" in line


def test_export_torch_on_a_missing_workdir(capsys, tmp_path):
  argv = ["export-torch", "--workdir", str(tmp_path / "nosuch"), "--layout", "cto"]
  line = error_line(capsys, [*argv, "--out", str(tmp_path / "out.pth")])
  assert f"{tmp_path / 'nosuch'} does not exist" in line


def test_prepare_from_a_missing_source(capsys, tmp_path):
  argv = ["prepare", "--dataset", "folder", "--source", str(tmp_path / "nosuch")]
  line = error_line(capsys, [*argv, "--out", str(tmp_path / "out")])
  assert str(tmp_path / "nosuch") in line


def test_convert_a_missing_checkpoint(capsys, tmp_path):
  argv = ["convert", "--torch", str(tmp_path / "nosuch.pth"), "--layout", "cto"]
  argv += ["--config", f"{CONFIG}:variant=cto", "--out", str(tmp_path / "out")]
  assert "nosuch.pth" in error_line(capsys, argv)


def test_summary_with_a_missing_config_file(capsys):
  line = error_line(capsys, ["summary", "--config", "configs/nosuch.py"])
  assert "configs/nosuch.py" in line and "does not exist" in line


def test_config_with_an_unknown_key(capsys):
  line = error_line(capsys, ["config", "--config", CONFIG, "--config.model.nosuch=1"])
  assert "no field 'model.nosuch'" in line


def test_config_with_a_value_of_the_wrong_type(capsys):
  line = error_line(capsys, ["config", "--config", CONFIG, "--config.model.backbone_depth=abc"])
  assert "--config.model.backbone_depth='abc': expected int" in line


def test_demo_with_an_unknown_config_argument(capsys):
  line = error_line(capsys, ["demo", "--config", "configs/demo.py:nosuch=1"])
  assert "unknown config argument 'nosuch'" in line


def test_report_on_a_missing_root(capsys, tmp_path):
  line = error_line(capsys, ["report", "--root", str(tmp_path / "nosuch")])
  assert str(tmp_path / "nosuch") in line


def test_debug_shows_the_traceback_of_a_user_error(capsys):
  with pytest.raises(Exception, match="no field 'model.nosuch'"):
    main.main(["config", "--debug", "--config", CONFIG, "--config.model.nosuch=1"])
