"""Every command answers a user's mistake with one line `error: ...` and exit code 2.

No traceback: the mistake is the user's (a config, a path, a permission), not a bug. The
commands run in this process through `sgdnet_jax.main.main`; each fails before any compile.
The last tests run the command line in a subprocess: its logs are quiet unless `--verbose`.
"""

import errno
import json
import os
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from sgdnet_jax import main, models, porting
from sgdnet_jax.core import config_utils, errors
from sgdnet_jax.models import sgdc
from sgdnet_jax.workdir import guard, layout, variables_io
from tests import train_helpers

CONFIG = "configs/test.py"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def error_line(capsys, argv) -> str:
  """Runs `argv`; asserts exit 2 and exactly one stderr line `error: ...`; returns that line."""
  assert main.main(argv) == 2
  err = capsys.readouterr().err
  assert "Traceback" not in err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  return lines[0]


def test_train_in_a_read_only_workdir(capsys, tmp_path, monkeypatch, reference_training):
  def read_only(real, target=0):  # target: the index of the argument that names the new file
    def call(*args, **kwargs):
      if str(args[target]).endswith(layout.LOCK_FILE):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(args[0]))
      return real(*args, **kwargs)

    return call

  monkeypatch.setattr(os, "open", read_only(os.open))  # the lock: linked, or created (O_EXCL)
  monkeypatch.setattr(os, "link", read_only(os.link, target=1))
  argv = ["train", "--config", CONFIG, "--workdir", str(tmp_path / "w")]
  line = error_line(capsys, argv + train_helpers.overrides(reference_training.data_dir))
  assert f"cannot write in workdir {tmp_path / 'w'} (Read-only file system)" in line


def test_train_with_a_workdir_below_a_file(capsys, tmp_path, reference_training):
  (tmp_path / "file").write_text("")
  argv = ["train", "--config", CONFIG, "--workdir", str(tmp_path / "file/w")]
  line = error_line(capsys, argv + train_helpers.overrides(reference_training.data_dir))
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


# --- A workdir's model against --config ----------------------------------------------------------


def recorded_workdir(path, spec: str = CONFIG):
  """A folder whose config.json records `spec`: enough, since the model check reads only that."""
  path.mkdir(parents=True)
  config_utils.save_config(config_utils.load_config(spec), path / "config.json")
  return path


def image_args(tmp_path) -> list:
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
  return ["--images", str(tmp_path / "x.png")]


@pytest.mark.parametrize("command", ["predict", "evaluate", "export", "ablate"])
def test_a_config_of_another_model_than_the_workdir_is_refused(capsys, tmp_path, command):
  baseline = recorded_workdir(tmp_path / "baseline", f"{CONFIG}:variant=baseline")
  argv = [command, "--config", CONFIG, "--workdir", str(baseline)]
  argv += {"predict": image_args(tmp_path), "export": ["--out", str(tmp_path / "out")]}.get(
    command, []
  )
  line = error_line(capsys, argv)
  assert f"workdir {baseline} holds a different model" in line
  assert "model.edge_branch: 'none' -> 'sge'" in line and "model.variant" in line
  assert not (tmp_path / "out").exists() and not (baseline / "predictions").exists()


def test_debug_shows_the_traceback_of_a_model_mismatch(tmp_path):
  baseline = recorded_workdir(tmp_path / "baseline", f"{CONFIG}:variant=baseline")
  argv = ["predict", "--debug", "--config", CONFIG, "--workdir", str(baseline)]
  with pytest.raises(errors.UserError, match="holds a different model"):
    main.main([*argv, *image_args(tmp_path)])


def test_non_structural_model_fields_and_data_fields_may_differ(tmp_path):
  recorded = recorded_workdir(tmp_path / "w")
  config = config_utils.load_config(CONFIG)
  config.model.conv_impl = "lax"
  config.model.knockouts = ("guidance=zero",)
  config.data.image_size = 32
  guard.check_model_fits(config, [recorded, tmp_path / "no_config_json"])
  config.model.decoder_channels = 8
  with pytest.raises(errors.UserError, match=r"model.decoder_channels: 16 -> 8"):
    guard.check_model_fits(config, [recorded])


# --- Image and window sizes against the model ----------------------------------------------------


def test_train_at_a_size_the_patch_sizes_do_not_divide(capsys, tmp_path):
  full_patches = "--config.model.trans_patch_sizes=(32, 16, 8, 4)"  # the full model's, at 64 px
  argv = ["train", "--config", CONFIG, full_patches, "--workdir", str(tmp_path / "w")]
  line = error_line(capsys, argv)
  assert "data.image_size=64" in line and "multiples of 128" in line and line.endswith("use 128")
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("command", ["evaluate", "export", "predict"])
def test_inference_at_a_size_the_encoder_stride_does_not_divide(capsys, tmp_path, command):
  recorded = recorded_workdir(tmp_path / "w")
  argv = [command, "--config", CONFIG, "--config.data.image_size=48", "--workdir", str(recorded)]
  argv += {"predict": image_args(tmp_path), "export": ["--out", str(tmp_path / "out")]}.get(
    command, []
  )
  line = error_line(capsys, argv)
  assert "data.image_size=48" in line and line.endswith("use 32 or 64")


def test_predict_with_a_tile_the_model_does_not_take(capsys, tmp_path):
  recorded = recorded_workdir(tmp_path / "w")
  argv = ["predict", "--config", CONFIG, "--workdir", str(recorded), "--tile", "50"]
  line = error_line(capsys, [*argv, *image_args(tmp_path)])
  assert line.startswith("error: --tile 50:") and line.endswith("use 32 or 64")


def test_one_size_rule_for_every_model():
  tiny, full = (
    config_utils.load_config(CONFIG).model,
    config_utils.load_config("configs/default.py").model,
  )
  assert models.size_multiple(tiny) == 32 and models.size_multiple(full) == 128
  models.check_input_size(full, 256, "x")
  with pytest.raises(errors.ConfigError, match="not 200; use 128 or 256"):
    models.check_input_size(full, 200, "x")


# --- PyTorch layouts ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def narrow_variables(tmp_path_factory):
  """The variables of configs/test.py's SGD-Net (zeros; shapes are all the checks read)."""
  model = models.build(config_utils.load_config(CONFIG).model)
  abstract = jax.eval_shape(
    lambda x: model.init(jax.random.PRNGKey(0), x, train=False),
    jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32),
  )
  directory = tmp_path_factory.mktemp("narrow") / "variables"
  variables_io.save_variables(
    directory, jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract)
  )
  return directory


def test_export_torch_of_a_narrowed_model_is_one_line(capsys, tmp_path, narrow_variables):
  out = tmp_path / "out.pth"
  argv = ["export-torch", "--workdir", str(narrow_variables), "--layout", "sgdnet"]
  line = error_line(capsys, [*argv, "--out", str(out)])
  assert f"--workdir {narrow_variables}: variables do not have the 'sgdnet' layout" in line
  assert "681 differences (681 mis-shaped, 0 missing, 0 unexpected)" in line
  assert line.count("mis-shaped params") == 3  # three examples, not all of them
  assert "the model is narrower than the upstream layout: model.backbone_base_planes" in line
  assert not out.exists()


def test_convert_of_a_checkpoint_of_another_network_is_one_line(capsys, tmp_path):
  checkpoint = tmp_path / "other.npz"
  np.savez(checkpoint, **{"classifier.weight": np.zeros((2, 4), np.float32)})
  argv = ["convert", "--torch", str(checkpoint), "--layout", "cto", "--out", str(tmp_path / "o")]
  line = error_line(capsys, [*argv, "--config", f"{CONFIG}:variant=cto"])
  assert f"{checkpoint} does not fit layout 'cto'" in line and "1 unexpected" in line
  assert "e.g. unexpected classifier.weight; missing " in line and "Likely cause:" in line
  assert not (tmp_path / "o").exists()


def test_a_full_width_checkpoint_for_a_narrowed_model_names_the_width_fields():
  def sgdc_variables(channels: int):
    shapes = [jax.ShapeDtypeStruct((1, 8, 8, c), jnp.float32) for c in (channels, 16)]
    init = lambda x, g: sgdc.SGDC().init(jax.random.PRNGKey(0), x, g, train=False)
    return jax.eval_shape(init, *shapes)

  full = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), sgdc_variables(256))
  state, _ = porting.export_torch(full, "sgdc")
  with pytest.raises(porting.PortingError) as error:
    porting.load_torch(state, "sgdc", sgdc_variables(64))
  summary = error.value.summary
  assert "\n" not in summary and summary.count(": checkpoint (") == 3
  assert "Likely cause: the model is narrower than the checkpoint: model.backbone_base_planes" in (
    summary
  )


# --- The entry point -----------------------------------------------------------------------------


def test_an_unknown_command_is_one_line(capsys):
  line = error_line(capsys, ["foo"])
  assert line.startswith("error: unknown command 'foo'; commands: ablate, config,")


def test_help_describes_every_command(capsys):
  assert main.main(["--help"]) == 0
  out = capsys.readouterr().out
  for command, description in main.COMMANDS.items():
    assert f"  {command} " in out and description in out
  assert "--verbose" in out and "--debug" in out


def run_logged(*args: str) -> str:
  """stderr of the command line in a subprocess, then TensorFlow imported (as train does)."""
  code = "import sys; from sgdnet_jax import main; main.main(sys.argv[1:]); import tensorflow"
  env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
  result = subprocess.run(
    [sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stderr


def test_library_logs_are_quiet_unless_verbose(tmp_path, narrow_variables):
  argv = ["export-torch", "--workdir", str(narrow_variables), "--layout", "sgdnet"]
  argv += ["--out", str(tmp_path / "out.pth")]  # reads the variables with Orbax, then fails
  quiet = run_logged(*argv).splitlines()
  assert len(quiet) == 1 and quiet[0].startswith("error: "), quiet
  verbose = run_logged(*argv, "--verbose")
  assert "INFO" in verbose and "orbax" in verbose.lower()
  if platform.machine() in ("x86_64", "AMD64"):  # where TensorFlow's oneDNN kernels are on
    assert "oneDNN custom operations are on" in verbose


def test_predict_never_writes_over_a_users_files(capsys, tmp_path):
  recorded = recorded_workdir(tmp_path / "w")
  photos, results = tmp_path / "photos", tmp_path / "results"
  photos.mkdir(), results.mkdir()
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photos / "x.png")
  Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(photos / "overview.png")  # the user's
  (results / "notes.txt").write_text("mine\n")
  before = {p: p.read_bytes() for p in (photos / "overview.png", results / "notes.txt")}
  argv = ["predict", "--config", CONFIG, "--workdir", str(recorded), "--images", str(photos)]
  line = error_line(capsys, [*argv, "--out", str(photos)])
  assert f"--images {photos / 'overview.png'} lies inside --out {photos}" in line
  line = error_line(capsys, [*argv, "--out", str(results)])
  assert f"--out {results} holds notes.txt, which predict did not write" in line
  assert {p: p.read_bytes() for p in before} == before
  assert sorted(p.name for p in photos.iterdir()) == ["overview.png", "x.png"]
  assert [p.name for p in results.iterdir()] == ["notes.txt"]


def test_evaluate_on_an_empty_split(capsys, tmp_path, narrow_variables):
  data = tmp_path / "data"  # what evaluate reads before the records: no val case in fold 0
  (data / "splits").mkdir(parents=True)
  info = {"dataset": "folder", "image_size": 64, "default_protocol": "p"}
  (data / "dataset.json").write_text(json.dumps(info))
  (data / "cases.json").write_text("[]")
  folds = [{"train": ["a"], "val": [], "test": ["b"]}]
  (data / "splits/p.json").write_text(json.dumps({"name": "p", "folds": folds}))
  argv = ["evaluate", "--config", CONFIG, "--workdir", str(narrow_variables)]
  line = error_line(capsys, [*argv, "--split", "val", f"--config.data.dir={data}"])
  assert "--split val: split 'val' of" in line and "holds no case" in line
  assert not (narrow_variables / "eval").exists()


def test_a_reader_that_leaves_early_ends_the_command_quietly():
  """`main --help | head -1`: the closed pipe is the shell's SIGPIPE status, not a traceback."""
  process = subprocess.Popen(
    [sys.executable, "-m", "sgdnet_jax.main", "--help"],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
  )
  process.stdout.close()  # before the command prints: its first write meets a closed pipe
  _, err = process.communicate(timeout=120)
  assert err.decode() == "" and process.returncode == 141


@pytest.mark.parametrize(
  "body, message",
  [
    ("  config = test.get_config(arg\n  return config\n", "line 6: SyntaxError"),
    ("  return test.get_confg(arg)\n", "line 6: AttributeError: module 'configs.test' has no"),
    ("  from configs import nosuch\n  return nosuch\n", "line 6: ImportError: cannot import"),
    (
      "  config = test.get_config(arg)\n  config.optimizer.lrr = 1.0\n  return config\n",
      "sets config.optimizer.lrr, which configs/default.py does not define; did you mean "
      "config.optimizer.lr?",
    ),
    (
      "  config = test.get_config(arg)\n  config.global_bach_size = 8\n  return config\n",
      "did you mean config.global_batch_size?",
    ),
  ],
)
def test_a_config_file_with_a_mistake_is_one_line_naming_it(capsys, tmp_path, body, message):
  config_file = tmp_path / "mine.py"
  config_file.write_text("from configs import test\n\n\ndef get_config(arg=None):\n" + "\n" + body)
  line = error_line(capsys, ["config", "--config", str(config_file)])
  assert str(config_file) in line and message in line, line


SHIPPED_CONFIGS = sorted(
  name
  for name in os.listdir(os.path.join(ROOT, "configs"))
  if name.endswith(".py") and name not in ("__init__.py", "common.py")
)


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_every_shipped_config_sets_only_known_fields(name):
  arg = ":data=somewhere" if name == "folder.py" else ""
  config_utils.load_config(os.path.join(ROOT, "configs", name) + arg)
