"""The pretrained encoder: torch-free .pth reading, download once into the cache, checks, errors.

Every download is served by an HTTP server on 127.0.0.1 that the tests start; the weights are a
freshly initialised tiny Res2Net v1b encoder (configs/test.py widths) exported to the upstream
layout and named with its hash prefix, as the upstream files are.
"""

import functools
import hashlib
import http.server
import os
import re
import shutil
import socket
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import common
from sgdnet_jax import porting
from sgdnet_jax.core import errors
from sgdnet_jax.models import res2net
from sgdnet_jax.porting import pretrained, torch_files
from tests import train_helpers

IMAGE_SIZE = 32


@functools.cache
def _encoder_shapes(depth: int = 50) -> dict:
  """The tiny encoder's (configs/test.py: Res2Net-50 v1b, base planes 16) variable shapes."""
  module = res2net.Res2Net(
    depth=depth, base_planes=common.tiny_model_config("baseline", 1).backbone_base_planes
  )
  images = jax.ShapeDtypeStruct((1, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32)
  return jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x, train=False), images)


def _variables(seed: int, depth: int = 50) -> dict:
  """A network's variables: the tiny encoder as `resnet` and one more module, random values."""
  rng = np.random.default_rng(seed)
  random = lambda leaf: rng.normal(size=leaf.shape).astype(np.float32)
  encoder = jax.tree_util.tree_map(random, _encoder_shapes(depth))
  return {
    "params": {"resnet": encoder["params"], "head": {"kernel": random(np.zeros((1, 1, 8, 2)))}},
    "batch_stats": {"resnet": encoder["batch_stats"], "head_bn": {"mean": random(np.zeros(8))}},
  }


def _encoder_state(variables: dict) -> dict[str, np.ndarray]:
  """The `resnet` of `variables` as an upstream Res2Net v1b state dict, written out here
  independently of `porting`: kernels OIHW, BN counters, and the ImageNet classifier `fc`."""
  state = {}
  for collection in ("params", "batch_stats"):
    for path, value in jax.tree_util.tree_flatten_with_path(variables[collection]["resnet"])[0]:
      *module, leaf = (entry.key for entry in path)
      key = ".".join(re.sub(r"_(\d+)$", r".\1", name) for name in module)
      if leaf == "kernel":
        state[f"{key}.weight"] = np.transpose(value, (3, 2, 0, 1))
      elif collection == "batch_stats":
        state[f"{key}.running_{leaf}"] = value
        state[f"{key}.num_batches_tracked"] = np.asarray(5, np.int64)
      else:
        state[f"{key}.{'weight' if leaf == 'scale' else leaf}"] = value
  channels = state["layer4.0.conv3.weight"].shape[0]
  state["fc.weight"] = np.ones((1000, channels), np.float32)
  state["fc.bias"] = np.zeros(1000, np.float32)
  return state


def _hash_named(path: str, stem: str) -> str:
  """Renames `path` to `<stem>-<first 8 hex of its SHA-256><ext>` (torch hub convention)."""
  with open(path, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  named = os.path.join(os.path.dirname(path), f"{stem}-{digest[:8]}{os.path.splitext(path)[1]}")
  os.replace(path, named)
  return named


def _assert_encoder_is(variables: dict, state: dict, initial: dict) -> None:
  """The encoder of `variables` holds `state`'s tensors exactly; everything else is `initial`."""
  for key, value in _encoder_state(variables).items():
    if not key.startswith("fc.") and not key.endswith("num_batches_tracked"):
      np.testing.assert_array_equal(value, state[key], err_msg=key)
  for collection in ("params", "batch_stats"):
    for name, subtree in initial[collection].items():
      if name != "resnet":
        jax.tree_util.tree_map(np.testing.assert_array_equal, variables[collection][name], subtree)


class _Server:
  """Serves a folder over HTTP on 127.0.0.1 and counts the GET requests."""

  def __init__(self, folder: str):
    server = self
    self.requests = 0

    class Handler(http.server.SimpleHTTPRequestHandler):
      def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=folder, **kwargs)

      def do_GET(self):
        server.requests += 1
        super().do_GET()

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
    self.thread.start()

  def url(self, path: str) -> str:
    return f"http://127.0.0.1:{self.httpd.server_address[1]}/{os.path.basename(path)}"

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  """(server, the served weights file, its state dict)."""
  folder = tmp_path_factory.mktemp("served")
  state = _encoder_state(_variables(seed=1))
  path = str(folder / "res2net_tiny.pth")
  porting.write_state_dict(state, path)
  server = _Server(str(folder))
  yield server, _hash_named(path, "res2net_tiny"), state
  server.close()


def _cache_files(cache) -> list[str]:
  return sorted(os.listdir(cache)) if os.path.isdir(cache) else []


def _closed_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_a_url_is_downloaded_once_into_the_cache_and_fills_only_the_encoder(tmp_path, served):
  server, path, state = served
  cache = tmp_path / "cache"
  url = server.url(path)
  initial = _variables(seed=0)
  before = server.requests
  variables, line = pretrained.initialize_encoder(url, initial, cache=str(cache), progress=False)
  assert server.requests == before + 1
  assert _cache_files(cache) == [os.path.basename(path)]
  _assert_encoder_is(variables, state, initial)
  loaded = sum(not k.startswith("fc.") and not k.endswith("num_batches_tracked") for k in state)
  assert f"loaded {loaded} of its {len(state)} tensors" in line
  assert "ignored 2 (fc.weight, fc.bias)" in line and url in line
  again, _ = pretrained.initialize_encoder(url, initial, cache=str(cache), progress=False)
  assert server.requests == before + 1  # the cache answered
  _assert_encoder_is(again, state, initial)


def test_a_local_file_and_a_timm_layout_file_fill_the_encoder(tmp_path, served):
  _, path, state = served
  initial = _variables(seed=0)
  variables, line = pretrained.initialize_encoder(path, initial)
  _assert_encoder_is(variables, state, initial)
  assert path in line
  # timm's res2net50d: the same keys, here as .safetensors without BatchNorm counters or fc,
  # in another order.
  timm = {
    key: state[key]
    for key in sorted(state)
    if not key.endswith("num_batches_tracked") and not key.startswith("fc.")
  }
  timm_path = str(tmp_path / "res2net50d.safetensors")
  porting.write_state_dict(timm, timm_path)
  variables, line = pretrained.initialize_encoder(timm_path, initial)
  _assert_encoder_is(variables, state, initial)
  assert "ignored none" in line


def test_none_keeps_the_initialisation_and_a_wrong_name_is_a_config_error(tmp_path):
  initial = _variables(seed=0)
  variables, line = pretrained.initialize_encoder("none", initial)
  assert variables["params"] is initial["params"] and "random initialisation" in line
  with pytest.raises(errors.ConfigError, match="neither 'none', a name"):
    pretrained.initialize_encoder(str(tmp_path / "missing.pth"), initial)
  # A named file of the wrong depth is refused before anything is downloaded.
  with pytest.raises(errors.ConfigError, match="res2net50_v1b_26w_4s"):
    pretrained.initialize_encoder("res2net101_v1b_26w_4s", initial, cache=str(tmp_path))
  assert _cache_files(tmp_path) == []


def test_no_network_names_the_url_the_cache_and_both_ways_out(tmp_path):
  cache = tmp_path / "cache"
  url = f"http://127.0.0.1:{_closed_port()}/res2net50_v1b_26w_4s-3cf99910.pth"
  with pytest.raises(errors.UserError) as error:
    pretrained.initialize_encoder(url, _variables(seed=0), cache=str(cache), progress=False)
  message = str(error.value)
  assert "\n" not in message and url in message
  assert str(cache / "res2net50_v1b_26w_4s-3cf99910.pth") in message
  assert "--config.model.pretrained=/path/to/file.pth" in message
  assert "--config.model.pretrained=none" in message
  assert _cache_files(cache) == []


def test_a_hash_mismatch_is_refused_and_not_cached(tmp_path, served):
  server, path, _ = served
  wrong = os.path.join(os.path.dirname(path), "res2net_tiny-00000000.pth")
  shutil.copyfile(path, wrong)
  cache = tmp_path / "cache"
  with pytest.raises(errors.UserError, match="SHA-256 is .*promises 00000000") as error:
    pretrained.initialize_encoder(
      server.url(wrong), _variables(seed=0), cache=str(cache), progress=False
    )
  assert server.url(wrong) in str(error.value)
  assert _cache_files(cache) == []


def test_a_file_of_another_architecture_is_refused_and_not_cached(tmp_path, served):
  server, path, state = served
  # A CTO-style checkpoint: the encoder under 'resnet.', plus another module.
  other = {f"resnet.{k}": v for k, v in state.items()}
  other["head.out.1.weight"] = np.zeros((4, 8, 1, 1), np.float32)
  other_path = os.path.join(os.path.dirname(path), "cto_tiny.pth")
  porting.write_state_dict(other, other_path)
  other_path = _hash_named(other_path, "cto_tiny")
  cache = tmp_path / "cache"
  url = server.url(other_path)
  with pytest.raises(errors.UserError, match="is not a Res2Net v1b encoder") as error:
    pretrained.initialize_encoder(url, _variables(seed=0), cache=str(cache), progress=False)
  assert url in str(error.value) and "\n" not in str(error.value)
  assert _cache_files(cache) == []
  with pytest.raises(errors.UserError, match=f"{other_path} is not a Res2Net v1b encoder"):
    pretrained.initialize_encoder(other_path, _variables(seed=0))


def test_only_the_main_process_downloads_and_the_others_read_after_the_barrier(tmp_path, served):
  server, path, _ = served
  cache, url = str(tmp_path / "cache"), server.url(path)
  before = server.requests
  # Another process (is_main False) whose barrier returns once process 0 has fetched the file.
  main_process = lambda: pretrained.fetch(url, cache=cache, is_main=True, progress=False)
  cached = pretrained.fetch(url, cache=cache, is_main=False, barrier=main_process)
  assert cached == os.path.join(cache, os.path.basename(path)) and server.requests == before + 1
  # When process 0 could not fetch it, the others say so instead of waiting for ever.
  with pytest.raises(errors.UserError, match="not found after process 0 fetched"):
    pretrained.fetch(url, cache=str(tmp_path / "other"), is_main=False, barrier=lambda: None)
  assert server.requests == before + 1


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_files_are_read_without_torch_exactly(tmp_path, zip_format):
  tensors = {
    "conv.weight": torch.randn(4, 3, 3, 3),
    "transposed": torch.arange(6.0).reshape(2, 3).t(),  # a non-contiguous view
    "slice": torch.randn(5, 6)[1:4, ::2],
    "half": torch.randn(3).half(),
    "bfloat16": torch.randn(3).to(torch.bfloat16),
    "bn.num_batches_tracked": torch.tensor(7),
  }
  path = str(tmp_path / "weights.pth")
  torch.save({"state_dict": tensors, "epoch": 3}, path, _use_new_zipfile_serialization=zip_format)
  loaded = torch_files.load(path)
  assert loaded["epoch"] == 3
  for key, tensor in tensors.items():
    expected = tensor.float() if tensor.dtype == torch.bfloat16 else tensor  # exact widening
    assert loaded["state_dict"][key].dtype == expected.numpy().dtype, key
    np.testing.assert_array_equal(loaded["state_dict"][key], expected.numpy(), err_msg=key)


def test_reading_a_pth_file_never_imports_torch(tmp_path, served):
  _, path, state = served
  script = (
    "import sys\n"
    "from sgdnet_jax.porting import state_dicts\n"
    f"state = state_dicts.read_state_dict({path!r})\n"
    f"assert len(state) == {len(state)}, len(state)\n"
    "assert 'torch' not in sys.modules, 'torch was imported'\n"
  )
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(train_helpers.REPO))
  result = subprocess.run(
    [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stderr[-2000:]


def test_train_starts_from_the_pretrained_encoder_and_resume_does_not_reload(
  tmp_path, served, monkeypatch
):
  """`train --config.model.pretrained=<URL>`: cached, and the encoder starts as the file says
  (learning rate 0, so the steps leave the params as they started). The first run is stopped
  after step 2 of 3; the resume trains step 3 with the same (reused) programs. The served
  encoder has the training tests' depth, 14 (train_helpers.overrides); the tests above read the
  depth-50 layout."""
  from sgdnet_jax import main
  from sgdnet_jax.train import preemption
  from sgdnet_jax.workdir import checkpointing, variables_io

  server, served_path, _ = served
  state = _encoder_state(_variables(seed=3, depth=14))
  path = os.path.join(os.path.dirname(served_path), "res2net_depth14.pth")
  porting.write_state_dict(state, path)
  path = _hash_named(path, "res2net_depth14")
  data = train_helpers.tiny_dataset(tmp_path / "data")
  cache = tmp_path / "cache"
  monkeypatch.setenv(pretrained.CACHE_ENV, str(cache))
  workdir = tmp_path / "run"
  common_args = ["train", "--config", "configs/test.py:variant=baseline", "--workdir", str(workdir)]
  # No validation (not checked).
  fields = {
    "model.pretrained": server.url(path),
    "optimizer.lr": 0.0,
    "eval_every_epochs": 0,
  }
  argv = common_args + train_helpers.overrides(data, total_steps=3, **fields)
  with train_helpers.sigterm_while_logging(1):
    assert main.main(argv) == preemption.RESUME_EXIT
  assert checkpointing.trained_steps(workdir) == [2]
  assert _cache_files(cache) == [os.path.basename(path)]
  trained = variables_io.load_variables(str(workdir))
  for key, value in _encoder_state(trained).items():
    if ".running_" not in key and not key.endswith("num_batches_tracked") and "fc." not in key:
      np.testing.assert_array_equal(value, state[key], err_msg=key)
  # Resume (one more step) with an empty cache: nothing is fetched, nothing is cached.
  shutil.rmtree(cache)
  requests = server.requests
  assert main.main(argv) == 0
  assert checkpointing.trained_steps(workdir)[-1] == 3
  assert server.requests == requests and _cache_files(cache) == []
