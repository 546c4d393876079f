"""Export: a portable model that a fresh process with only jax, numpy and pillow runs.

One export for cpu,cuda,tpu (the `lax` convolutions) is loaded by a subprocess through the copy
of `serving.py` in the model folder, while this process computes `module.apply`; a CPU-only
export with flip TTA provides the CPU convolution path to contrast with. serving.py's image
decoder is compared with `predict`'s (`sgdnet_jax.data.images`) on every kind of image.
.ci/serving_check.sh runs serving.py in a venv built from requirements-serving.txt alone.
"""

import ast
import importlib.metadata
import io
import json
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tifffile
from PIL import Image

from sgdnet_jax import main, models
from sgdnet_jax.core import config_utils, errors
from sgdnet_jax.data import augment, layouts
from sgdnet_jax.data import images as images_lib
from sgdnet_jax.inference import serving, stablehlo
from sgdnet_jax.workdir import variables_io

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "test.py")
SIZE = 64  # configs/test.py's image size.
# Probabilities in [0, 1] after ~60 float32 layers whose convolutions lower differently.
PROBABILITY_TOLERANCE = 1e-5
SERVING_MODULES = {"jax", "numpy", "PIL"}
# Distributions serving.py needs beyond those it imports: jax's backend, and the reader of the
# serialized program (jax.export.deserialize imports flatbuffers, which jax does not install).
SERVING_EXTRA_DISTRIBUTIONS = {"jaxlib", "flatbuffers"}
# The subprocess: loads the model folder's serving.py by path with an isolated interpreter
# (-I: no PYTHONPATH, no current folder on sys.path), so sgdnet_jax cannot even be imported.
SERVE_SCRIPT = textwrap.dedent(
  """
  import importlib.util, pathlib, sys
  import numpy as np
  model_dir, work = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
  spec = importlib.util.spec_from_file_location("serving", model_dir / "serving.py")
  serving = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(serving)
  model = serving.ExportedModel(model_dir)
  images = np.load(work / "images.npy")
  np.save(work / "batch1.npy", model.probabilities(images[:1]))
  np.save(work / "batch3.npy", model.probabilities(images))
  serving.ExportedModel = lambda directory: model  # main() reuses the compiled program.
  argv = ["--model", str(model_dir), "--images", str(work / "folder"), "--out", str(work / "masks")]
  print("SERVING_STATUS", serving.main(argv + ["--batch-size", "3"]))
  loaded = sorted(n for n in sys.modules if n == "sgdnet_jax" or n.startswith("sgdnet_jax."))
  print("SGDNET_MODULES", loaded)
  """
)


def _random_variables(module: models.SGDNet, seed: int = 0) -> dict:
  """Variables of the right shapes with PyTorch-default-like scales, from numpy.

  The exported function must only reproduce `module.apply`; jit-compiling `init` would cost
  more than the rest of this file. BN statistics are not the identity, so dropping them shows.
  """
  shapes = jax.eval_shape(
    lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, SIZE, SIZE, 3)), train=False)
  )
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == "kernel":
      bound = 1 / np.sqrt(np.prod(leaf.shape[:-1]))
      return rng.uniform(-bound, bound, leaf.shape).astype(np.float32)
    if name in ("bias", "mean"):
      return rng.normal(0.0, 0.1, leaf.shape).astype(np.float32)
    return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny workdir: variables, the config that built them and an evaluation result."""
  config = config_utils.load_config(CONFIG)
  module = models.build(config.model)
  variables = _random_variables(module)
  workdir = tmp_path_factory.mktemp("workdir")
  variables_io.save_variables(str(workdir), variables, config.to_dict())
  (workdir / "eval").mkdir()
  (workdir / "eval" / "test.json").write_text(json.dumps({"split": "test", "dice": 0.75}))
  return config, module, variables, workdir


@pytest.fixture(scope="module")
def portable(trained, tmp_path_factory):
  """`export` with its default platforms (cpu,cuda,tpu) through the command line."""
  _, _, _, workdir = trained
  out = tmp_path_factory.mktemp("portable")
  argv = ["export", "--config", CONFIG, "--workdir", str(workdir), "--out", str(out)]
  assert main.main(argv) == 0
  return out


@pytest.fixture(scope="module")
def cpu_flip(trained, tmp_path_factory):
  """A CPU-only export (the CPU convolution path) with flip TTA."""
  config, _, variables, workdir = trained
  out = tmp_path_factory.mktemp("cpu_flip")
  return stablehlo.export_model(config, str(workdir), str(out), ["cpu"], "flip", variables)


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(1).integers(0, 256, (3, SIZE, SIZE, 3), np.uint8)


@pytest.fixture(scope="module")
def served(portable, images, tmp_path_factory):
  """The serving subprocess, started (not awaited) so that it compiles while this one works."""
  work = tmp_path_factory.mktemp("serve")
  np.save(work / "images.npy", images)
  (work / "folder").mkdir()
  Image.fromarray(images[0]).save(work / "folder" / "square.png")
  Image.fromarray(images[1]).resize((80, 48)).save(work / "folder" / "wide.png")
  Image.fromarray(images[2][..., 0]).save(work / "folder" / "gray.png")
  # 16-bit samples whose own range stretches back to images[1]'s red channel exactly.
  Image.fromarray(1000 + 8 * images[1][..., 0].astype(np.uint16)).save(work / "folder" / "deep.png")
  (work / "folder" / "corrupt.png").write_bytes(_truncated_png(images[0]))
  process = subprocess.Popen(
    [sys.executable, "-I", "-c", SERVE_SCRIPT, str(portable), str(work)],
    cwd=work,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  yield process, work
  process.kill()


@pytest.fixture(scope="module")
def reference(trained):
  """`module.apply` foreground probabilities [N, H, W, 1] of uint8 images, batch of 3."""
  _, module, variables, _ = trained
  forward = jax.jit(
    lambda x: models.foreground_probability(module.apply(variables, x, train=False)["o1"])[
      ..., None
    ]
  )
  return lambda images: np.asarray(forward(augment.normalize(images)))


def test_model_card_describes_the_export(portable, trained):
  config, _, variables, workdir = trained
  card = json.loads((portable / stablehlo.CARD_FILE).read_text())
  assert card["platforms"] == ["cpu", "cuda", "tpu"]
  assert card["conv_impl"] == "lax"
  assert card["variant"] == config.model.variant
  assert card["parameter_count"] == sum(
    p.size for p in jax.tree_util.tree_leaves(variables["params"])
  )
  assert card["input"]["shape"] == ["N", SIZE, SIZE, 3] and card["input"]["dtype"] == "uint8"
  assert card["output"]["shape"] == ["N", SIZE, SIZE, 1] and card["output"]["dtype"] == "float32"
  assert card["evaluation"] == {"test": {"split": "test", "dice": 0.75}}
  assert card["training_config"]["data"]["image_size"] == SIZE
  assert card["jax_version"] == jax.__version__
  assert (portable / stablehlo.SERVING_FILE).read_bytes() == (
    ROOT / "sgdnet_jax" / "inference" / "serving.py"
  ).read_bytes()
  # The folder says what serving.py needs: the card's list and the requirements file beside it.
  requirements = stablehlo.SERVING_REQUIREMENTS.read_text()
  assert (portable / stablehlo.REQUIREMENTS_FILE).read_text() == requirements
  assert card["serving"]["requirements_file"] == stablehlo.REQUIREMENTS_FILE
  assert card["serving"]["requirements"] == stablehlo.serving_requirements()
  assert all(line in requirements.splitlines() for line in card["serving"]["requirements"])
  assert any(line.startswith("flatbuffers==") for line in card["serving"]["requirements"])


@pytest.mark.usefixtures("served")  # Started first: the subprocess compiles meanwhile.
def test_flip_tta_is_the_mean_of_flipped_back_predictions(cpu_flip, reference, images):
  exported = jax.export.deserialize(bytearray((cpu_flip / stablehlo.MODEL_FILE).read_bytes()))
  got = np.asarray(exported.call(images[:1]))
  views = [images[0], images[0, :, ::-1], images[0, ::-1], images[0, ::-1, ::-1]]
  predicted = np.concatenate([reference(np.stack(views[:3])), reference(np.stack([views[3]] * 3))])
  flipped_back = [predicted[0], predicted[1, :, ::-1], predicted[2, ::-1], predicted[3, ::-1, ::-1]]
  np.testing.assert_allclose(
    got[0], np.mean(flipped_back, axis=0), atol=PROBABILITY_TOLERANCE, rtol=0
  )


def test_cuda_export_traced_on_cpu_has_no_cpu_convolution_path(portable, cpu_flip):
  cpu_text = _stablehlo_text(cpu_flip)
  portable_text = _stablehlo_text(portable)
  # Locations name the Python function that emitted each op: conv2d_cpu only on the CPU path.
  assert "conv2d_cpu" in cpu_text and "conv2d_cpu" not in portable_text
  assert portable_text.count("stablehlo.convolution") > cpu_text.count("stablehlo.convolution")
  assert json.loads((cpu_flip / stablehlo.CARD_FILE).read_text())["conv_impl"] == "cpu_matmul"


def test_fresh_process_with_jax_numpy_pillow_reproduces_apply(served, reference, images):
  expected = reference(images)  # Computed while the subprocess compiles.
  # The red channels as grayscale RGB, what gray.png and deep.png decode to.
  expected_gray = reference(np.repeat(images[..., :1], 3, axis=-1))
  process, work = served
  stdout, stderr = process.communicate(timeout=600)
  assert process.returncode == 0, stderr
  assert "SGDNET_MODULES []" in stdout
  # The corrupt image is skipped and named, the others are written, and main() says 1.
  assert "SERVING_STATUS 1" in stdout, stderr
  assert "serving on cpu (exported for cpu, cuda, tpu)" in stdout
  assert "skipped 1 unreadable images:" in stderr and "corrupt.png: " in stderr
  assert np.ptp(expected) > 100 * PROBABILITY_TOLERANCE  # Outputs vary: the comparison can fail.
  for name, count in (("batch1.npy", 1), ("batch3.npy", 3)):
    got = np.load(work / name)
    assert got.dtype == np.float32 and got.shape == (count, SIZE, SIZE, 1)
    np.testing.assert_allclose(got, expected[:count], atol=PROBABILITY_TOLERANCE, rtol=0)
  masks = {p.stem: np.asarray(Image.open(p)) for p in (work / "masks").iterdir()}
  assert {k: m.shape for k, m in masks.items()} == {
    "square": (SIZE, SIZE),
    "wide": (48, 80),
    "gray": (SIZE, SIZE),
    "deep": (SIZE, SIZE),
  }
  assert set(np.unique(np.concatenate([m.ravel() for m in masks.values()]))) <= {0, 255}
  for name, probability in (
    ("square", expected[0]),
    ("gray", expected_gray[2]),
    ("deep", expected_gray[1]),
  ):
    decided = np.abs(probability[..., 0] - 0.5) > PROBABILITY_TOLERANCE
    np.testing.assert_array_equal(
      masks[name][decided], np.where(probability[..., 0] > 0.5, 255, 0)[decided], err_msg=name
    )


def _stablehlo_text(model_dir: pathlib.Path) -> str:
  serialized = (model_dir / stablehlo.MODEL_FILE).read_bytes()
  return jax.export.deserialize(bytearray(serialized)).mlir_module()


def _serving_imports() -> set[str]:
  """The top-level modules sgdnet_jax/inference/serving.py imports."""
  tree = ast.parse((ROOT / "sgdnet_jax" / "inference" / "serving.py").read_text())
  imported = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      imported |= {alias.name.split(".")[0] for alias in node.names}
    elif isinstance(node, ast.ImportFrom):
      assert node.level == 0, "serving.py must not import relatively"
      imported.add(node.module.split(".")[0])
  return imported


def test_serving_imports_only_the_standard_library_jax_numpy_and_pillow():
  assert _serving_imports() - set(sys.stdlib_module_names) <= SERVING_MODULES


def _pins(path: pathlib.Path) -> dict[str, str]:
  """{distribution name: pinned version} of a requirements file's `name==version` lines."""
  lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
  return {
    name.strip().lower(): version.strip()
    for name, version in (line.split("==") for line in lines if "==" in line)
  }


def test_serving_requirements_are_what_serving_needs_pinned_as_requirements_txt():
  serving_pins = _pins(stablehlo.SERVING_REQUIREMENTS)
  assert len(serving_pins) == len(stablehlo.serving_requirements())  # Every line is pinned.
  distributions = importlib.metadata.packages_distributions()
  imported = _serving_imports() - set(sys.stdlib_module_names)
  needed = {distributions[module][0].lower() for module in imported}
  assert set(serving_pins) == needed | SERVING_EXTRA_DISTRIBUTIONS
  runtime_pins = _pins(ROOT / "requirements.txt")
  shared = set(serving_pins) & set(runtime_pins)
  assert shared == needed | {"jaxlib"}  # flatbuffers comes with requirements.txt's TensorFlow.
  assert {name: serving_pins[name] for name in shared} == {n: runtime_pins[n] for n in shared}


def _truncated_png(pixels: np.ndarray) -> bytes:
  """The first half of a PNG file: PIL opens it, then fails to decode it."""
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="PNG")
  return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def _images_of_every_kind(folder: pathlib.Path) -> dict[str, pathlib.Path]:
  """One file per decoding path of `images.load_rgb`, with pixels that fill their range."""
  rng = np.random.default_rng(7)
  rgb = rng.integers(0, 256, (40, 56, 3), np.uint8)
  ramp = np.linspace(1000, 3000, 40 * 56).reshape(40, 56)
  writers = {
    "rgb.png": lambda p: Image.fromarray(rgb).save(p),
    "rgb.jpg": lambda p: Image.fromarray(rgb).save(p, quality=90),
    "gray.png": lambda p: Image.fromarray(rgb[..., 0]).save(p),
    "rgba.png": lambda p: Image.fromarray(np.dstack([rgb, rgb[..., 1]])).save(p),
    "gray_alpha.png": lambda p: Image.fromarray(rgb[..., :2].copy(), "LA").save(p),
    "palette.png": lambda p: Image.fromarray(rgb).quantize(16).save(p, transparency=0),
    "gray16.png": lambda p: Image.fromarray(ramp.astype(np.uint16)).save(p),  # PIL mode I;16
    "rgb48.tif": lambda p: tifffile.imwrite(
      p, np.stack([ramp, ramp / 2, ramp / 4], -1).astype(np.uint16), photometric="rgb"
    ),
    "int32.tif": lambda p: Image.fromarray((ramp * 1000).astype(np.int32)).save(p),  # mode I
    "float.tif": lambda p: Image.fromarray((ramp / 3000).astype(np.float32)).save(p),  # mode F
  }
  paths = {}
  for name, write in writers.items():
    paths[name] = folder / name
    write(paths[name])
  return paths


def test_serving_decodes_images_exactly_as_predict_does(tmp_path):
  for name, path in _images_of_every_kind(tmp_path).items():
    expected, original, _ = images_lib.load_rgb(path)
    decoded = serving.decode_rgb(path)
    assert decoded.mode == "RGB", name
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(expected), err_msg=name)
    resized, served_original = serving.load_image(path, (SIZE, SIZE))
    assert served_original == original == (40, 56), name
    np.testing.assert_array_equal(resized, images_lib.resize_image(expected, SIZE), err_msg=name)
    if name in ("gray16.png", "rgb48.tif", "int32.tif", "float.tif"):
      # What a plain PIL conversion would give (saturated or the high bytes) is not the same.
      with Image.open(path) as image:
        assert not np.array_equal(np.asarray(image.convert("RGB")), resized), name


def test_serving_names_an_unreadable_image_as_predict_does(tmp_path):
  corrupt = tmp_path / "corrupt.png"
  corrupt.write_bytes(_truncated_png(np.zeros((32, 32, 3), np.uint8)))
  for decode in (serving.decode_rgb, images_lib.load_rgb):
    with pytest.raises(serving.DECODE_ERRORS):
      decode(corrupt)
  assert serving.DECODE_ERRORS == images_lib.DECODE_ERRORS
  assert serving.HIGH_BIT_DEPTH_MODES == images_lib.HIGH_BIT_DEPTH_MODES
  assert serving.IMAGE_SUFFIXES == layouts.IMAGE_EXTENSIONS  # serving.py imports no sgdnet_jax


def test_serving_runs_on_the_backend_the_model_was_exported_for_else_the_cpu():
  assert serving.backend_platform() == "cpu"  # this machine
  assert serving.choose_platform("cuda", ("cpu", "cuda", "tpu")) == "cuda"
  assert serving.choose_platform("tpu", ("cpu", "cuda", "tpu")) == "tpu"
  assert serving.choose_platform("cuda", ("cpu",)) == "cpu"  # a CPU-only export on a GPU host
  with pytest.raises(serving.ServingError, match="exported for tpu but JAX here runs on cuda"):
    serving.choose_platform("cuda", ("tpu",))


def test_conv_impl_follows_the_export_platforms():
  assert stablehlo.conv_impl_for("auto", ["cpu"]) == "cpu_matmul"
  assert stablehlo.conv_impl_for("auto", ["cpu", "cuda"]) == "lax"
  assert stablehlo.conv_impl_for("lax", ["cpu"]) == "lax"
  with pytest.raises(errors.ConfigError, match="conv_impl"):
    stablehlo.conv_impl_for("cpu_matmul", ["tpu"])
  with pytest.raises(errors.ConfigError, match="gpu"):
    stablehlo.check_platforms(["cpu", "gpu"])


def test_export_command_reports_an_unknown_platform_in_one_line(capsys, tmp_path):
  argv = ["export", "--config", CONFIG, "--workdir", str(tmp_path), "--out", str(tmp_path)]
  assert main.main(argv + ["--platforms", "cpu,gpu"]) == 2
  error = capsys.readouterr().err
  assert error.startswith("error: export platforms cpu,gpu") and error.count("\n") == 1
