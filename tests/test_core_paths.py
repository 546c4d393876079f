"""Workdirs anywhere Orbax can write: a `gs://` workdir end to end, and no local path tricks.

The `gs://` bucket is a local folder behind the three clients a run uses, each at its public
seam: etils.epath (through fsspec, the backend `sgdnet_jax` pins, with the `gs` protocol
registered to a folder where a real run has gcsfs), TensorStore
(Orbax's GCS kvstore spec, pointed at a `file` kvstore on that folder) and TensorFlow's summary
writer (TensorBoard events). Like a real bucket, the fake refuses appends. Everything else —
the loop, the checkpoint managers, the writers, evaluation — runs unchanged on the URL; a plain
`open()` or `os.makedirs` on it would leave a `gs:` folder in the working directory instead.
"""

import ast
import json
import pathlib

import pytest
from fsspec.implementations import dirfs, local

from sgdnet_jax.core import config_utils, paths
from sgdnet_jax.data import prepare, remote
from sgdnet_jax.inference import evaluate
from sgdnet_jax.study import plots, report
from sgdnet_jax.train import loop
from sgdnet_jax.workdir import layout, variables_io
from tests import train_helpers

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "sgdnet_jax"
BUCKET_URL = "gs://bucket/sweep/baseline/fold0"


def _bucket_filesystem(root: pathlib.Path):
  """An fsspec `gs` file system that keeps objects under `root` and, like GCS, cannot append."""

  class BucketFolder(dirfs.DirFileSystem):
    protocol = ("gs", "gcs")
    cachable = False

    def __init__(self, *args, **kwargs):
      del args, kwargs  # gcsfs options (finalize_on_close=...) mean nothing here
      super().__init__(path=str(root), fs=local.LocalFileSystem())

    def open(self, path, mode="rb", *args, **kwargs):
      if "a" in mode:
        raise OSError(f"{path}: an object store cannot append")
      return super().open(path, mode, *args, **kwargs)

  return BucketFolder


@pytest.fixture
def fake_gcs(tmp_path, monkeypatch):
  """`gs://<bucket>/<key>` served from `tmp_path/bucket-root/<bucket>/<key>`; the cwd is empty."""
  import tensorflow as tf
  from etils.epath import backend, gpath
  from fsspec.registry import _registry
  from orbax.checkpoint._src.path import gcs_utils

  root = tmp_path / "bucket-root"
  root.mkdir()
  local_of = lambda url: str(root / str(url).removeprefix("gs://"))

  # epath keeps one fsspec file system per protocol (and its backend choice): both cached.
  caches = (gpath._is_tf_installed, backend.fsspec_backend._get_filesystem)
  for cache in caches:
    cache.cache_clear()
  for protocol in ("gs", "gcs"):  # what fsspec.register_implementation does, undone afterwards
    monkeypatch.setitem(_registry, protocol, _bucket_filesystem(root))
  monkeypatch.setattr(
    gcs_utils, "get_kvstore_for_gcs", lambda url: {"driver": "file", "path": local_of(url)}
  )
  monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda url: False)
  create_file_writer = tf.summary.create_file_writer
  monkeypatch.setattr(
    tf.summary, "create_file_writer", lambda logdir, **kw: create_file_writer(local_of(logdir))
  )
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  yield root
  for cache in caches:  # filled again from the restored environment and registry
    cache.cache_clear()


def test_as_path_keeps_urls_and_makes_local_paths_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert str(paths.as_path("gs://b/run")) == "gs://b/run"
  assert str(paths.as_path("gs://b/run") / "checkpoints") == "gs://b/run/checkpoints"
  assert not paths.is_local(paths.as_path("gs://b/run"))
  assert str(paths.as_path("runs/x")) == str(tmp_path / "runs" / "x")
  assert str(paths.as_path(f"file://{tmp_path}/a%20b")) == str(tmp_path / "a b")
  assert paths.is_local("runs/x") and paths.is_local(tmp_path)
  with pytest.raises(paths.errors.UserError, match="unsupported URL scheme"):
    paths.as_path("memory://run")


def test_as_paths_takes_one_path_of_any_type_or_a_sequence(tmp_path):
  one = [paths.as_path(tmp_path / "w")]
  assert paths.as_paths(str(tmp_path / "w")) == one
  assert paths.as_paths(tmp_path / "w") == one
  assert paths.as_paths(paths.as_path(tmp_path / "w")) == one  # a path is not a sequence of parts
  assert paths.as_paths([str(tmp_path / "a"), tmp_path / "b"]) == [
    paths.as_path(tmp_path / "a"),
    paths.as_path(tmp_path / "b"),
  ]
  assert paths.as_paths(("gs://b/run",)) == [paths.as_path("gs://b/run")]


def test_gs_urls_go_through_the_fsspec_backend_the_tests_fake_also_with_tensorflow_installed():
  import tensorflow  # noqa: F401  (installed: epath alone would pick TensorFlow's gfile)
  from etils.epath import backend

  assert paths.as_path("gs://b/run")._backend is backend.fsspec_backend
  assert paths.URL_SCHEMES == ("gs://",)  # the schemes docs/workdirs.md claims; none untested


def test_write_text_atomic_replaces_whole_files_and_leaves_no_temporary(tmp_path):
  target = tmp_path / "out.json"
  paths.write_text_atomic(target, "old")
  paths.write_text_atomic(str(target), "new")
  assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


# Modules that handle workdir-derived paths: none may reach them through os.path or open().
WORKDIR_MODULES = (
  "train/loop.py",
  "workdir/checkpointing.py",
  "workdir/guard.py",
  "workdir/variables_io.py",
  "workdir/layout.py",
  "train/writers.py",
  "inference/evaluate.py",
  "inference/predict.py",
  "inference/stablehlo.py",
  "demo.py",
  "study/report.py",
  "study/ablate.py",
  "study/plots.py",
  "cli/predict.py",
)
LOCAL_ONLY_CALLS = {
  ("os", "makedirs"),
  ("os", "replace"),
  ("os", "rename"),
  ("os", "walk"),
  ("os", "listdir"),
  ("os.path", "abspath"),
  ("os.path", "join"),
  ("os.path", "exists"),
  ("os.path", "isdir"),
  ("os.path", "isfile"),
  ("os.path", "relpath"),
  ("os.path", "dirname"),
}


def _local_only_calls(source: str) -> list[str]:
  found = []
  for node in ast.walk(ast.parse(source)):
    if not isinstance(node, ast.Call):
      continue
    function = node.func
    if isinstance(function, ast.Name) and function.id == "open":
      found.append(f"open() at line {node.lineno}")
    elif isinstance(function, ast.Attribute):
      owner = ast.unparse(function.value)
      if (owner, function.attr) in LOCAL_ONLY_CALLS:
        found.append(f"{owner}.{function.attr}() at line {node.lineno}")
  return found


def test_the_finder_sees_local_only_calls():
  source = "import os\nos.makedirs(w)\nopen(os.path.join(w, 'x'))\nos.path.abspath(w)\n"
  assert len(_local_only_calls(source)) == 4


@pytest.mark.parametrize("module", WORKDIR_MODULES)
def test_workdir_modules_never_use_local_only_path_calls(module):
  assert _local_only_calls((PACKAGE / module).read_text()) == []


def test_save_config_writes_through_the_path_type():
  text = (PACKAGE / "core" / "config_utils.py").read_text()
  save_config = text[text.index("def save_config") :]
  assert "paths.write_text_atomic" in save_config and _local_only_calls(save_config) == []


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return train_helpers.tiny_dataset(tmp_path_factory.mktemp("data"))


def _config(data_dir: str, total_steps: int):
  return config_utils.load_config(
    str(train_helpers.REPO / train_helpers.TRAIN_CONFIG),  # the test runs in an empty cwd
    train_helpers.overrides(
      data_dir,
      total_steps=total_steps,
      checkpoint_every_steps=1,
      keep_checkpoints=1,
      tensorboard=True,
    ),
  )


def test_a_gs_workdir_trains_resumes_evaluates_and_reports_without_local_folders(
  fake_gcs, data_dir, tmp_path, monkeypatch, capsys
):
  # The dataset is prepared into the bucket too, and staged once into this host's cache.
  cache = tmp_path / "data-cache"
  monkeypatch.setenv(remote.CACHE_ENV, str(cache))
  source = pathlib.Path(data_dir).parent / "source"
  bucket_data = "gs://bucket/data/tiny"
  prepare.prepare("synthetic", source, bucket_data, size=train_helpers.IMAGE_SIZE, progress=False)
  assert (fake_gcs / "bucket" / "data" / "tiny" / "dataset.json").is_file()
  with pytest.raises(FileExistsError, match="pass --overwrite"):
    prepare.check_output(source, bucket_data, overwrite=False)

  first = loop.train_and_evaluate(_config(bucket_data, 1), BUCKET_URL)
  assert first["step"] == 1 and first["best_step"] == 1
  second = loop.train_and_evaluate(_config(bucket_data, 2), BUCKET_URL)  # resumes at step 1
  assert second["step"] == 2
  evaluation = evaluate.evaluate(_config(bucket_data, 2), BUCKET_URL, "test")
  assert capsys.readouterr().err.count(f"data: staged {bucket_data} into ") == 1  # then reused
  [staged] = [p for p in cache.iterdir() if not p.name.startswith(".")]
  assert staged.name.startswith("tiny-") and (staged / remote.MANIFEST).is_file()

  assert list(pathlib.Path.cwd().iterdir()) == []  # no ./gs:/bucket/... and nothing else
  workdir = paths.as_path(BUCKET_URL)
  # Read back through the path type, as another machine would.
  assert json.loads((workdir / "config.json").read_text())["total_steps"] == 2
  records = [json.loads(line) for line in layout.metrics_file(workdir).read_text().splitlines()]
  # Both runs' lines: the resumed run re-uploaded the first run's lines with its own.
  assert [r["step"] for r in records if "loss" in r] == [1, 2]
  # Step 1 was deleted in the bucket when step 2 was saved (keep_checkpoints=1).
  assert [p.name for p in (workdir / "checkpoints").iterdir()] == ["2"]
  assert [p.name for p in (workdir / "best").iterdir()] == [str(second["best_step"])]
  assert any(p.name.startswith("events.out.tfevents") for p in workdir.iterdir())
  variables = variables_io.load_variables(BUCKET_URL)
  assert set(variables) == {"params", "batch_stats"}
  saved = json.loads((workdir / "eval" / "test.json").read_text())
  assert saved["dice"] == pytest.approx(evaluation["dice"])
  assert (workdir / "eval" / "test_cases.csv").read_text().startswith("case_id,")

  runs = report.load_runs("gs://bucket/sweep", "test", ("dice",))
  assert [(r.variant, r.fold, r.path) for r in runs] == [("baseline", 0, BUCKET_URL)]
  result = report.compare(runs, "baseline", 0)
  written = report.write_tables("gs://bucket/sweep", result)
  written += plots.write_plots("gs://bucket/sweep", runs, result)
  assert "gs://bucket/sweep/report.md" in written and "gs://bucket/sweep/curves.png" in written
  for name in ("report.md", "report_dice.png", "curves.png"):
    assert (fake_gcs / "bucket" / "sweep" / name).is_file(), name
  assert list(pathlib.Path.cwd().iterdir()) == []


def test_a_pretrained_file_in_a_bucket_is_fetched_into_the_cache_once(fake_gcs, tmp_path):
  from sgdnet_jax.porting import pretrained

  (fake_gcs / "bucket" / "weights").mkdir(parents=True)
  (fake_gcs / "bucket" / "weights" / "encoder.npz").write_bytes(b"weights")
  url = "gs://bucket/weights/encoder.npz"
  assert pretrained.resolve(url) == url
  cache = tmp_path / "cache"
  cached = pretrained.fetch(url, cache=str(cache), progress=False)
  assert pathlib.Path(cached).read_bytes() == b"weights" and pathlib.Path(cached).parent == cache
  (fake_gcs / "bucket" / "weights" / "encoder.npz").unlink()  # the cached copy is used
  assert pretrained.fetch(url, cache=str(cache), progress=False) == cached


def test_a_local_sweep_keeps_its_root_in_the_bucket_and_skips_finished_runs(fake_gcs, data_dir):
  from sgdnet_jax.study import sweep, sweeps

  spec = f"{train_helpers.REPO}/configs/test.py:sweep=tiny"  # the test runs in an empty cwd
  overrides = train_helpers.overrides(data_dir, total_steps=1)
  runs = [run for run in sweeps.load_sweep(spec, overrides) if run.config.data.fold == 0]
  root = "gs://bucket/study"
  for run in runs:  # finished in another machine's session: config, last checkpoint, evaluation
    workdir = paths.as_path(sweeps.run_workdir(root, run))
    assert str(workdir) == f"{root}/{run.name}"
    # In a bucket Orbax marks a finished step with a commit file.
    (layout.latest_dir(workdir) / "1").mkdir(parents=True)
    (layout.latest_dir(workdir) / "1" / "commit_success.txt").write_text("")
    layout.eval_dir(workdir).mkdir()
    layout.eval_cases(layout.eval_dir(workdir), "test").write_text("case_id\n")
    layout.eval_json(layout.eval_dir(workdir), "test").write_text("{}")
    config_utils.save_config(run.config, layout.config_file(workdir))
  record = sweep.run_local(runs, root)
  assert [entry["status"] for entry in record["runs"]] == ["skipped", "skipped"]
  assert json.loads((fake_gcs / "bucket" / "study" / "sweep.json").read_text()) == record
  assert list(pathlib.Path.cwd().iterdir()) == []
  with pytest.raises(paths.errors.UserError, match="must be a folder the cluster's nodes share"):
    sweep.write_slurm(runs, root)


def test_export_reads_a_bucket_workdir_and_writes_its_files_to_a_bucket(fake_gcs):
  import jax
  import numpy as np

  from sgdnet_jax import models
  from sgdnet_jax.inference import stablehlo

  config = config_utils.load_config(  # the tiny baseline at depth 14, 32 px: traced twice
    str(train_helpers.REPO / train_helpers.TRAIN_CONFIG), train_helpers.overrides("")
  )
  size = config.data.image_size
  shapes = jax.eval_shape(
    lambda: models.build(config.model).init(
      jax.random.PRNGKey(0), np.zeros((1, size, size, 3), np.float32), train=False
    )
  )
  variables = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  workdir = "gs://bucket/convert"
  variables_io.save_variables(workdir, variables, config.to_dict())
  evaluations = layout.eval_dir(workdir)
  evaluations.mkdir()
  layout.eval_json(evaluations, "test").write_text(json.dumps({"dice": 0.5}))
  layout.eval_cases(evaluations, "test").write_text("case_id,dice\n")  # not a result

  out = stablehlo.export_model(config, workdir, "gs://bucket/export", ["cpu"])
  assert str(out) == "gs://bucket/export"
  exported = fake_gcs / "bucket" / "export"
  assert sorted(p.name for p in exported.iterdir()) == sorted(
    [stablehlo.MODEL_FILE, stablehlo.CARD_FILE, stablehlo.SERVING_FILE, stablehlo.REQUIREMENTS_FILE]
  )
  card = json.loads((exported / stablehlo.CARD_FILE).read_text())
  assert card["workdir"] == workdir and card["evaluation"] == {"test": {"dice": 0.5}}
  program = jax.export.deserialize(bytearray((exported / stablehlo.MODEL_FILE).read_bytes()))
  assert program.out_avals[0].shape[1:] == (size, size, 1)
  assert list(pathlib.Path.cwd().iterdir()) == []  # no ./gs:/bucket/... folder
