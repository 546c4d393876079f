"""Weight porting: naming rule, every layout's key table both ways, file formats, clear errors, CLI.

Numerical parity with the PyTorch reference is in test_porting_parity.py; here state dicts come
from the upstream key tables (random values, exact Sobel constants), so no network runs.
"""

import ast
import functools
import os
import pickle
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from configs import common
from sgdnet_jax import main as main_lib
from sgdnet_jax import models, porting
from sgdnet_jax.cli import convert as convert_cli
from sgdnet_jax.cli import export_torch as export_cli
from sgdnet_jax.models import layers, res2net, sgdc, sge
from sgdnet_jax.workdir import variables_io
from tests import reference_tables
from third_party.torch_reference import sge as torch_sge

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUT_TABLES = {
  "res2net50_v1b": "keys_res2net50_v1b.tsv",
  "timm_res2net50d": "keys_res2net50_v1b.tsv",  # identical keys, shapes and order (SPEC §5)
  "sge": "keys_sge.tsv",
  "sgdc": "keys_sgdc.tsv",
  "cto": "keys_cto.tsv",
  "sgdnet": "keys_sgdnet_candidate_x1x2x3.tsv",
}


def table_state_dict(table: str, seed: int = 0):
  """A state dict with the table's keys, shapes and dtypes: random values, exact frozen Sobels.

  A new dict each call (tests edit it); the arrays are shared and must not be written to.
  """
  return dict(_table_state_dict(table, seed))


@functools.cache
def _table_state_dict(table: str, seed: int):
  rng = np.random.default_rng(seed)
  state = {}
  for key, shape, dtype, kind, requires_grad, _ in reference_tables.read_table(table):
    shape = ast.literal_eval(shape)
    if dtype == "int64":
      state[key] = np.asarray(rng.integers(0, 1000), np.int64).reshape(shape)
    elif kind == "parameter" and requires_grad == "False":  # the frozen Sobel kernels
      kernel = layers.SOBEL_X if ".sobel_x" in f".{key}" else layers.SOBEL_Y
      state[key] = np.ascontiguousarray(np.broadcast_to(kernel, shape), np.float32)
    else:
      state[key] = rng.standard_normal(shape, np.float32)
  return state


def _abstract(module, *shapes):
  args = [jax.ShapeDtypeStruct(shape, jnp.float32) for shape in shapes]
  return jax.eval_shape(lambda *a: module.init(jax.random.PRNGKey(0), *a, train=False), *args)


def _network(variant: str, num_classes: int = 2, **overrides):
  config = common.model_config(variant, num_classes)
  config.trans_patch_sizes = (8, 4, 2, 1)
  for name, value in overrides.items():
    config[name] = value
  return _abstract(models.build(config), (1, 64, 64, 3))


@functools.cache
def template(layout: str):
  """Abstract Flax variables of each layout's module at full width."""
  if layout in ("res2net50_v1b", "timm_res2net50d"):
    return _abstract(res2net.Res2Net(depth=50), (1, 64, 64, 3))
  if layout == "sge":
    return _abstract(sge.StructureGuidanceExtractor(), (1, 2, 2, 2048), (1, 16, 16, 256))
  if layout == "sgdc":
    return _abstract(sgdc.SGDC(), (1, 8, 8, 256), (1, 8, 8, 16))
  return _network(layout)


def _materialise(tree, seed: int = 0):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda leaf: rng.standard_normal(leaf.shape, np.float32), tree)


# --- Naming rule ------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "key, path",
  [
    ("layer1.0.convs.1.weight", ("layer1_0", "convs_1", "weight")),
    (
      "multi_trans.t.attention.output_linear.0.weight",
      ("multi_trans", "t", "attention", "output_linear_0", "weight"),
    ),
    ("head.conv_p1.1.running_mean", ("head", "conv_p1_1", "running_mean")),
    ("sobel_x1.1.weight", ("sobel_x1_1", "weight")),
    ("dm1.predict3.2.weight", ("dm1", "predict3_2", "weight")),
    ("sgdc.x1.ls1", ("sgdc", "x1", "ls1")),
    ("eam.block.0.block.1.bias", ("eam", "block_0", "block_1", "bias")),
  ],
)
def test_naming_rule_joins_indices_and_inverts(key, path):
  assert porting.torch_key_to_path(key) == path
  assert porting.path_to_torch_key(path) == key


def test_naming_rule_rejects_a_leading_index():
  with pytest.raises(ValueError, match="starts with an index"):
    porting.torch_key_to_path("0.weight")


def test_leaf_names_follow_the_rule():
  variables = porting.load_torch(table_state_dict("keys_cto.tsv"), "cto", template("cto"))
  params, stats = variables["params"], variables["batch_stats"]
  assert params["resnet"]["layer1_0"]["convs_1"]["kernel"].shape == (3, 3, 26, 26)
  assert params["head"]["conv_p1_1"]["scale"].shape == (576,)
  assert stats["head"]["conv_p1_1"]["mean"].shape == (576,)
  assert params["dm1"]["predict3_2"]["weight"].shape == (1,)
  assert params["sobel_x1_1"]["scale"].shape == (1,)
  assert params["head"]["pam"]["alpha"].shape == params["head"]["cam"]["beta"].shape == (1,)


# --- Every layout, both ways ------------------------------------------------------------------


@pytest.mark.parametrize("layout", sorted(LAYOUT_TABLES))
def test_layout_round_trips_its_upstream_key_table(layout):
  table = LAYOUT_TABLES[layout]
  rows = reference_tables.read_table(table)
  original = table_state_dict(table)
  variables = porting.load_torch(original, layout, template(layout))
  audit = variables.audit
  exported, export_audit = porting.export_torch(variables, layout)

  assert set(exported) == {row[0] for row in rows} and len(exported) == len(rows)
  for key, shape, dtype, *_ in rows:
    assert str(tuple(exported[key].shape)) == shape and str(exported[key].dtype) == dtype, key
  placeholders = set(export_audit.placeholders)
  for key, value in original.items():
    if key.endswith("num_batches_tracked"):
      assert exported[key] == 0
    elif key in placeholders:
      fill = 1.0 if key.endswith("running_var") else 0.0
      assert np.all(exported[key] == fill), key
    else:  # held by our model, or a frozen Sobel constant
      assert np.array_equal(exported[key], value), key
  assert export_audit.held == audit.loaded
  assert set(export_audit.sobel_constants) == set(audit.sobel_constants)
  assert set(export_audit.placeholders) == set(audit.ignored)
  assert audit.absent == ()
  accounted = audit.loaded + audit.counters + len(audit.sobel_constants) + len(audit.ignored)
  assert accounted == len(rows)


def test_layout_summaries_name_what_was_ignored():
  audit = porting.load_torch(
    table_state_dict("keys_res2net50_v1b.tsv"), "res2net50_v1b", template("res2net50_v1b")
  ).audit
  assert audit.ignored == ("fc.weight", "fc.bias")
  assert audit.loaded + audit.counters == 522 and audit.counters == 87  # 87 BatchNorms
  assert "ignored keys of modules upstream never calls: 2 (fc)" in audit.describe()
  audit = porting.load_torch(table_state_dict("keys_sge.tsv"), "sge", template("sge")).audit
  assert audit.sobel_constants == ("sobel_x.weight", "sobel_y.weight") and audit.ignored == ()


def test_partial_layout_fills_only_its_module_of_a_network():
  network = _materialise(_network("sgdnet", backbone_base_planes=64, decoder_channels=16))
  state = table_state_dict("keys_res2net50_v1b.tsv")
  variables = porting.load_torch(state, "res2net50_v1b", network)
  audit = variables.audit
  backbone = porting.load_torch(state, "res2net50_v1b", template("res2net50_v1b"))
  assert audit.kept == tuple(name for name in network["params"] if name != "resnet")
  assert "kept as in the template" in audit.describe()
  for collection in ("params", "batch_stats"):
    assert jax.tree.all(
      jax.tree.map(np.array_equal, variables[collection]["resnet"], backbone[collection])
    )
    for name in audit.kept:
      if name in network[collection]:
        assert jax.tree.all(
          jax.tree.map(np.array_equal, variables[collection][name], network[collection][name])
        )
  exported, _ = porting.export_torch(variables, "res2net50_v1b")  # the backbone alone
  assert set(exported) == set(state)
  with pytest.raises(porting.PortingError, match="not jax.eval_shape output"):
    porting.load_torch(state, "res2net50_v1b", _network("sgdnet"))


def test_naming_rule_alone_converts_any_module_strictly():
  state = table_state_dict("keys_sgdc.tsv")
  variables = porting.convert_state_dict(state, template("sgdc"))
  audit = variables.audit
  np.testing.assert_array_equal(
    variables["params"]["mlp_2"]["kernel"], state["mlp.2.weight"].transpose(2, 3, 1, 0)
  )
  assert audit.loaded == 16
  with pytest.raises(porting.PortingError, match="1 unexpected"):
    porting.convert_state_dict({**state, "extra.weight": np.zeros(3, np.float32)}, template("sgdc"))


# --- Clear errors -----------------------------------------------------------------------------


def test_checkpoint_of_another_architecture_names_its_first_keys():
  with pytest.raises(porting.PortingError) as error:
    porting.load_torch(table_state_dict("keys_cto.tsv"), "sgdnet", template("sgdnet"))
  message = str(error.value)
  first_line, second_line = message.splitlines()[:2]
  assert "does not fit layout 'sgdnet'" in first_line
  assert "It looks like a 'cto' checkpoint" in second_line
  assert "First keys that do not match: eam.reduce1.conv.weight" in second_line
  assert "first missing: eam.fuse.bn.bias" in second_line  # missing keys are listed sorted
  # Every key is listed: CTO's 52 EAM / Sobel keys, and the 95 SGE and SGDC leaves.
  assert "52 unexpected, 95 missing, 0 mis-shaped keys" in first_line
  assert "unexpected keys (not in the model) (52):" in message
  assert "sobel_y4.1.running_var (1,)" in message
  assert "sgdc.x3.mlp.2.weight (1024, 4096, 1, 1) -> params sgdc/x3/mlp_2/kernel" in message

  with pytest.raises(porting.PortingError, match="looks like a 'res2net50_v1b' checkpoint"):
    porting.load_torch(table_state_dict("keys_res2net50_v1b.tsv"), "cto", template("cto"))


def test_missing_unexpected_and_mis_shaped_keys_are_all_listed():
  state = table_state_dict("keys_cto.tsv")
  del state["head.pam.alpha"]
  state["head.pam.gamma"] = np.zeros(1, np.float32)
  with pytest.raises(porting.PortingError) as error:
    porting.load_torch(state, "cto", _network("cto", num_classes=1))
  message = str(error.value)
  # predictor1..3 (6 keys) and the never-called predictor4 / erb_db_* (42) follow num_classes.
  assert "1 unexpected, 1 missing, 48 mis-shaped keys" in message
  assert "head.pam.gamma (1,)" in message
  assert "head.pam.alpha (1,) -> params head/pam/alpha" in message
  assert "predictor1.weight: checkpoint (2, 64, 1, 1), model expects (1, 64, 1, 1)" in message
  assert "check model.num_classes" in message


def test_frozen_sobel_weights_must_be_the_sobel_constants():
  state = table_state_dict("keys_sge.tsv")
  state["sobel_y.weight"] = state["sobel_y.weight"].copy()  # the cached arrays stay intact
  state["sobel_y.weight"][3, 7, 0, 0] = 0.5
  with pytest.raises(porting.PortingError, match="sobel_y.weight: not the constant sobel-y kernel"):
    porting.load_torch(state, "sge", template("sge"))


def test_export_refuses_variables_of_another_structure():
  paper_form = _materialise(_abstract(sgdc.SGDC(form="paper"), (1, 8, 8, 256), (1, 8, 8, 16)))
  with pytest.raises(porting.PortingError, match="missing params ls1"):
    porting.export_torch(paper_form, "sgdc")
  with pytest.raises(ValueError, match="unknown layout 'resnet50'"):
    porting.export_torch(paper_form, "resnet50")


@pytest.fixture
def sgdc_state():
  return table_state_dict("keys_sgdc.tsv")


@pytest.mark.parametrize("name", ["a.pth", "b.pt", "c.safetensors", "d.npz", "e.pth"])
def test_formats_wrappers_and_prefixes_read_the_same(tmp_path, sgdc_state, name):
  path = str(tmp_path / name)
  if name == "e.pth":  # a training checkpoint: wrapped, DataParallel prefix, extra entries
    torch.save(
      {
        "epoch": 3,
        "state_dict": {f"module.{k}": torch.from_numpy(v) for k, v in sgdc_state.items()},
      },
      path,
    )
  else:
    porting.write_state_dict(sgdc_state, path)
  state = porting.read_state_dict(path)
  assert set(state) == set(sgdc_state)  # safetensors stores keys sorted
  assert all(
    np.array_equal(state[k], v) and state[k].dtype == v.dtype for k, v in sgdc_state.items()
  )
  audit = porting.load_torch(path, "sgdc", template("sgdc")).audit
  assert audit.source == path and audit.loaded == 16
  with pytest.raises(FileExistsError):
    porting.write_state_dict(sgdc_state, path)


@pytest.mark.parametrize(
  "name, match",
  [
    ("notes.pth", "not a PyTorch checkpoint"),
    ("notes.safetensors", "not a readable .safetensors file"),
    ("notes.npz", "not a .npz archive of plain arrays"),
    ("notes.h5", "unknown checkpoint extension '.h5'"),
  ],
)
def test_a_file_that_is_not_a_checkpoint_gives_a_clear_error(tmp_path, name, match):
  path = tmp_path / name
  path.write_text("hello, these are not weights\n")
  with pytest.raises(porting.CheckpointFileError, match=match) as error:
    porting.read_state_dict(str(path))
  assert str(path) in str(error.value)


def test_an_npz_with_pickled_objects_is_refused(tmp_path):
  path = str(tmp_path / "objects.npz")
  np.savez(path, weight=np.array([{"code": "here"}], dtype=object))
  with pytest.raises(porting.CheckpointFileError, match="Object arrays cannot be loaded"):
    porting.read_state_dict(path)


class _Payload:
  """Unpickling this creates a file: proof of code execution if it ever happens."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, "w"))


class _TrainerState:
  """A custom object in a torch.save'd checkpoint (unpickling it needs its class)."""


def test_a_pickle_that_needs_code_execution_is_refused_without_running_it(tmp_path):
  marker = tmp_path / "executed"
  raw = tmp_path / "raw.pth"
  raw.write_bytes(pickle.dumps({"weight": _Payload(str(marker))}, protocol=2))
  with pytest.raises(porting.CheckpointFileError, match="would execute code"):
    porting.read_state_dict(str(raw))
  assert not marker.exists()
  saved = tmp_path / "trainer.pth"
  torch.save({"state_dict": {"w": torch.zeros(2)}, "trainer": _TrainerState()}, str(saved))
  with pytest.raises(porting.CheckpointFileError, match="never unpickle code"):
    porting.read_state_dict(str(saved))


class _ShellCommand:
  """Unpickling this runs a (harmless) shell command through os.system."""

  def __reduce__(self):
    return (os.system, ("true",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dumps"])
def test_the_refusal_names_the_blocked_global_and_gives_no_unsafe_advice(tmp_path, writer):
  path = tmp_path / "evil.pth"
  if writer == "torch.save":
    torch.save({"weight": _ShellCommand()}, str(path))
  else:
    path.write_bytes(pickle.dumps({"weight": _ShellCommand()}, protocol=2))
  with pytest.raises(porting.CheckpointFileError) as error:
    porting.read_state_dict(str(path))
  message = str(error.value)
  assert f"{os.name}.system" in message and "not loaded" in message
  assert "weights_only" not in message and "\n" not in message


def test_a_mapping_without_tensors_is_not_a_state_dict(tmp_path):
  path = str(tmp_path / "meta.pth")
  torch.save({"epoch": 3, "lr": 0.1}, path)
  with pytest.raises(porting.CheckpointFileError, match="'epoch' \\(int\\)"):
    porting.read_state_dict(path)


def test_safetensors_porting_never_imports_torch(tmp_path, sgdc_state):
  path = str(tmp_path / "sgdc.safetensors")
  porting.write_state_dict(sgdc_state, path)
  script = (
    "import sys, jax, jax.numpy as jnp\n"
    "from sgdnet_jax import porting\n"
    "from sgdnet_jax.models import sgdc\n"
    "x, g = jnp.zeros((1, 8, 8, 256)), jnp.zeros((1, 8, 8, 16))\n"
    "t = jax.eval_shape(lambda: sgdc.SGDC().init(jax.random.PRNGKey(0), x, g, train=False))\n"
    f"v = porting.load_torch({path!r}, 'sgdc', t)\n"
    "porting.export_torch(v, 'sgdc')\n"
    "assert 'torch' not in sys.modules, 'torch was imported'\n"
  )
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  result = subprocess.run(
    [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stderr[-2000:]


# --- Command line -----------------------------------------------------------------------------


def test_convert_and_export_torch_commands_round_trip(tmp_path, monkeypatch):
  """A small official SGE (dims of configs/test.py) into the tiny network, and back out.

  The rest of the network comes from the model's init, replaced here by random values of the
  same structure: compiling the real `jax.jit(model.init)` takes 1-2 minutes on a CPU.
  """
  calls = []

  def initial_variables(module, image_size, seed, concrete):
    calls.append((image_size, seed, concrete))
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    abstract = jax.eval_shape(
      lambda x: module.init(jax.random.PRNGKey(seed), x, train=False), images
    )
    return _materialise(abstract, seed)

  monkeypatch.setattr(convert_cli, "_initial_variables", initial_variables)
  torch.manual_seed(0)
  reference = torch_sge.SGE(s4_in=512, s1_in=64, mid=32, guide_ch=8, bottleneck=32)
  checkpoint = str(tmp_path / "sge.pth")
  torch.save(reference.state_dict(), checkpoint)
  out = str(tmp_path / "converted")
  config = os.path.join(ROOT, "configs", "test.py")
  assert (
    convert_cli.main(
      ["--torch", checkpoint, "--layout", "sge", "--config", config, "--out", out, "--seed", "3"]
    )
    == 0
  )
  assert calls == [(64, 3, True)]

  loaded = variables_io.load_variables(out)
  assert variables_io.load_config_dict(out)["model"]["sge"]["mid_channels"] == 32
  model = models.build(common.tiny_model_config("sgdnet", 1))
  initial = initial_variables(model, 64, 3, True)
  assert jax.tree.structure(loaded) == jax.tree.structure(initial)  # train's init_from check
  np.testing.assert_array_equal(
    loaded["params"]["head"]["out_1"]["kernel"], initial["params"]["head"]["out_1"]["kernel"]
  )
  np.testing.assert_array_equal(
    loaded["params"]["sge"]["fuse"]["conv"]["kernel"],
    reference.fuse.conv.weight.detach().numpy().transpose(2, 3, 1, 0),
  )

  exported = str(tmp_path / "sge.safetensors")
  assert export_cli.main(["--workdir", out, "--layout", "sge", "--out", exported]) == 0
  from safetensors.torch import load_file  # pylint: disable=g-import-not-at-top

  state = load_file(exported)
  rebuilt = torch_sge.SGE(s4_in=512, s1_in=64, mid=32, guide_ch=8, bottleneck=32)
  rebuilt.load_state_dict(state, strict=True)
  for key, value in reference.state_dict().items():
    if not key.endswith("num_batches_tracked"):
      assert torch.equal(state[key], value), key


def test_convert_warns_of_non_finite_weights(tmp_path, monkeypatch, capsys):
  materialise = lambda module, image_size, seed, concrete: _materialise(
    jax.eval_shape(
      lambda x: module.init(jax.random.PRNGKey(seed), x, train=False),
      jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32),
    ),
    seed,
  )
  monkeypatch.setattr(convert_cli, "_initial_variables", materialise)
  reference = torch_sge.SGE(s4_in=512, s1_in=64, mid=32, guide_ch=8, bottleneck=32)
  state = reference.state_dict()
  state["fuse.conv.weight"][0, 0, 0, :2] = torch.tensor([float("nan"), float("inf")])
  checkpoint = str(tmp_path / "sge.pth")
  torch.save(state, checkpoint)
  config = os.path.join(ROOT, "configs", "test.py")
  argv = ["--torch", checkpoint, "--layout", "sge", "--config", config]
  assert convert_cli.main([*argv, "--out", str(tmp_path / "converted")]) == 0
  [warning] = [line for line in capsys.readouterr().err.splitlines() if "NaN" in line]
  assert f"1 tensor(s) converted from {checkpoint} hold NaN or Inf" in warning
  assert "params/sge/fuse/conv/kernel (2)" in warning


def test_convert_command_for_a_whole_network(tmp_path):
  """A full-width SGD-Net checkpoint (.safetensors, no torch) through convert and export-torch."""
  state = table_state_dict("keys_sgdnet_candidate_x1x2x3.tsv")
  checkpoint = str(tmp_path / "sgdnet.safetensors")
  porting.write_state_dict(state, checkpoint)
  out = str(tmp_path / "converted")
  spec = os.path.join(ROOT, "configs", "isic2018.py") + ":variant=sgdnet,num_classes=2"
  assert (
    convert_cli.main(["--torch", checkpoint, "--layout", "sgdnet", "--config", spec, "--out", out])
    == 0
  )
  exported = str(tmp_path / "sgdnet.pth")
  assert export_cli.main(["--workdir", out, "--layout", "sgdnet", "--out", exported]) == 0
  back = porting.read_state_dict(exported)
  assert set(back) == set(state)
  audit = porting.load_torch(back, "sgdnet", template("sgdnet")).audit
  for key, value in state.items():
    if key not in audit.ignored and not key.endswith("num_batches_tracked"):
      assert np.array_equal(back[key], value), key


def test_convert_command_checks_layout_against_the_config(tmp_path, capsys):
  config = os.path.join(ROOT, "configs", "test.py") + ":variant=sgdnet"
  with pytest.raises(SystemExit):
    convert_cli.main(
      ["--torch", "x.pth", "--layout", "cto", "--config", config, "--out", str(tmp_path / "o")]
    )
  assert "layout 'cto' fills the 'cto' network" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    convert_cli.main(
      ["--torch", "x.pth", "--layout", "sgdc", "--config", config, "--out", str(tmp_path / "o")]
    )
  capsys.readouterr()
  notes = tmp_path / "notes.pth"
  notes.write_text("not weights")
  assert (
    main_lib.main(
      [
        "convert",
        "--torch",
        str(notes),
        "--layout",
        "sgdnet",
        "--config",
        config,
        "--out",
        str(tmp_path / "o"),
      ]
    )
    == 2
  )
  assert f"error: {notes}: not a PyTorch checkpoint" in capsys.readouterr().err
  assert not (tmp_path / "o").exists()
