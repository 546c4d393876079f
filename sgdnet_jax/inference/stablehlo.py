"""The StableHLO export (`export`): a trained model as one portable file and a model card.

  python -m sgdnet_jax.main export --config configs/<exp>.py[:args] --workdir W --out DIR \
      [--platforms cpu,cuda,tpu] [--tta none|flip]

`DIR/model.jax_export` is the serialized `jax.export.Exported` program: `uint8` RGB images
`[N, H, W, 3]` (any N; H, W the training size) -> foreground probabilities `[N, H, W, 1]`
float32. ImageNet normalisation, the network with its weights as constants, the foreground
probability of the finest output `o1` and, with `tta='flip'`, the mirror test-time augmentation
are all inside. `DIR/model.json` is the model card, `DIR/serving.py` a copy of
`sgdnet_jax/inference/serving.py`, which runs the model with jax, numpy and pillow only, and
`DIR/requirements-serving.txt` a copy of this package's: what serving.py needs, pinned.

W and DIR may be local folders or `gs://` URLs (`sgdnet_jax.core.paths`); each file in DIR is
written atomically. The convolution implementation is chosen from the target platforms, never
from the machine that traces: the CPU-only matrix-product path (`layers.conv2d_cpu`) only when
every target is a CPU.
"""

import json
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sgdnet_jax import models
from sgdnet_jax.core import compilation_cache, errors, paths
from sgdnet_jax.data import augment
from sgdnet_jax.inference import ensemble
from sgdnet_jax.workdir import guard, image_size, layout, variables_io

MODEL_FILE = "model.jax_export"
CARD_FILE = "model.json"
SERVING_FILE = "serving.py"
REQUIREMENTS_FILE = "requirements-serving.txt"
# What serving.py needs, pinned as requirements.txt is: package data, so `pip install .` has it.
SERVING_REQUIREMENTS = pathlib.Path(__file__).with_name(REQUIREMENTS_FILE)
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
# What `export` targets unless told: every platform jax.export lowers for from a CPU-only machine
# that serving commonly meets (tests/test_inference_export.py exports it here).
DEFAULT_PLATFORMS = ("cpu", "cuda", "tpu")


def conv_impl_for(configured: str, platforms: Sequence[str]) -> str:
  """The convolution implementation of an export for `platforms`.

  'auto' becomes 'cpu_matmul' when every target is a CPU and 'lax' otherwise; an explicit
  'cpu_matmul' for a non-CPU target is refused rather than carried to a GPU or TPU.
  """
  cpu_only = set(platforms) == {"cpu"}
  if configured == "auto":
    return "cpu_matmul" if cpu_only else "lax"
  if configured == "cpu_matmul" and not cpu_only:
    raise errors.ConfigError(
      f"model.conv_impl='cpu_matmul' is the CPU-only path but the export targets "
      f"{','.join(platforms)}; set --config.model.conv_impl=auto (or lax), or export for cpu only"
    )
  return configured


def check_platforms(platforms: Sequence[str]) -> tuple[str, ...]:
  """The platforms as a tuple, or a ConfigError naming the unknown ones."""
  unknown = [p for p in platforms if p not in PLATFORMS]
  if unknown or not platforms:
    raise errors.ConfigError(
      f"export platforms {','.join(platforms) or '(none)'}: expected a comma-separated subset "
      f"of {','.join(PLATFORMS)}"
    )
  return tuple(dict.fromkeys(platforms))


def probability_function(
  module: models.SGDNet, variables: dict[str, Any], tta: str = "none"
) -> Callable[[jax.Array], jax.Array]:
  """uint8 `[N, H, W, 3]` -> float32 foreground probabilities `[N, H, W, 1]`.

  ImageNet normalisation, then `ensemble.probability_maps` of the one variable set (constants of
  the program) with `tta`: the probability that `evaluate` and `predict` compute.
  """
  ensemble.check_tta(tta)
  mean, std = jnp.asarray(augment.IMAGENET_MEAN), jnp.asarray(augment.IMAGENET_STD)

  def probability(images: jax.Array) -> jax.Array:
    normalised = (images.astype(jnp.float32) - mean) / std
    maps = ensemble.probability_maps(module, [variables], normalised, tta)
    return maps["probability"][..., None]

  return probability


def serving_requirements() -> list[str]:
  """The requirement lines of SERVING_REQUIREMENTS, without comments."""
  lines = (line.split("#")[0].strip() for line in SERVING_REQUIREMENTS.read_text().splitlines())
  return [line for line in lines if line]


def export_model(
  config: ml_collections.ConfigDict,
  workdir: str | os.PathLike,
  out_dir: str | os.PathLike,
  platforms: Sequence[str] = DEFAULT_PLATFORMS,
  tta: str = "none",
  variables: dict[str, Any] | None = None,
) -> paths.Path:
  """Writes MODEL_FILE, CARD_FILE, SERVING_FILE and REQUIREMENTS_FILE into `out_dir`.

  Returns the folder.
  """
  compilation_cache.enable(config.compilation_cache_dir)
  platforms = check_platforms(platforms)
  requirements = serving_requirements()
  guard.check_model_fits(config, [workdir])
  size = image_size.resolve(config, [workdir])
  model_config = ml_collections.ConfigDict(config.model.to_dict())
  model_config.conv_impl = conv_impl_for(model_config.get("conv_impl", "auto"), platforms)
  module = models.build(model_config)
  variables = variables if variables is not None else variables_io.load_variables(workdir)
  spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(f"n, {size}, {size}, 3"), jnp.uint8)
  function = probability_function(module, variables, tta)
  exported = jax.export.export(jax.jit(function), platforms=platforms)(spec)

  card = model_card(config, workdir, variables, exported, model_config.conv_impl, tta, requirements)
  out = paths.as_path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths.write_bytes_atomic(out / MODEL_FILE, bytes(exported.serialize()))
  paths.write_text_atomic(out / CARD_FILE, json.dumps(card, indent=2, default=str))
  serving_script = pathlib.Path(__file__).with_name(SERVING_FILE)  # files of this package
  paths.write_bytes_atomic(out / SERVING_FILE, serving_script.read_bytes())
  paths.write_bytes_atomic(out / REQUIREMENTS_FILE, SERVING_REQUIREMENTS.read_bytes())
  return out


def model_card(
  config: ml_collections.ConfigDict,
  workdir: str | os.PathLike,
  variables: dict[str, Any],
  exported: jax.export.Exported,
  conv_impl: str,
  tta: str,
  requirements: Sequence[str],
) -> dict[str, Any]:
  """What the exported program is, what it expects and returns, and how it was trained."""
  size = image_size.resolve(config, [workdir])
  return {
    "file": MODEL_FILE,
    "format": "jax.export serialization (StableHLO); load with jax.export.deserialize",
    "variant": config.model.variant,
    "num_classes": config.model.num_classes,
    "parameter_count": int(sum(np.size(p) for p in jax.tree_util.tree_leaves(variables["params"]))),
    "input": {
      "dtype": "uint8",
      "shape": ["N", size, size, 3],
      "meaning": "RGB images, 0..255, resized to the model's size with bilinear resampling",
      "normalisation": {
        "inside_the_model": True,
        "mean": [float(v) for v in augment.IMAGENET_MEAN],
        "std": [float(v) for v in augment.IMAGENET_STD],
      },
    },
    "output": {
      "dtype": "float32",
      "shape": ["N", size, size, 1],
      "meaning": "foreground probability (mask: probability > 0.5)",
    },
    "tta": tta,
    "platforms": list(exported.platforms),
    "conv_impl": conv_impl,
    "jax_version": jax.__version__,
    "calling_convention_version": exported.calling_convention_version,
    "data_protocol": {
      "image_size": size,
      "resize": "bilinear (PIL), images converted to 8-bit RGB",
      "decoding": "8-bit RGB: grayscale expanded, alpha dropped, more than 8 bits per sample "
      "stretched linearly from the image's own range to 0..255 (serving.py decode_rgb, as predict)",
      "dataset_dir": config.data.dir,
      "protocol": config.data.protocol,
      "fold": config.data.fold,
      "splits": {
        "train": config.data.train_split,
        "val": config.data.val_split,
        "test": config.data.test_split,
      },
    },
    "serving": {
      "script": SERVING_FILE,
      "requirements_file": REQUIREMENTS_FILE,
      "requirements": list(requirements),
      "usage": f"pip install -r {REQUIREMENTS_FILE}; python {SERVING_FILE} --model <this folder> "
      "--images FOLDER --out MASKS",
    },
    "evaluation": evaluation_results(workdir),
    "workdir": str(paths.as_path(workdir)),
    "training_config": config.to_dict(),
  }


def evaluation_results(workdir: str | os.PathLike) -> dict[str, Any]:
  """The `W/eval/<name>.json` results of `evaluate` by name; empty when there are none."""
  evaluations = layout.eval_dir(workdir)
  if not evaluations.is_dir():
    return {}
  results = {}
  for path in sorted(evaluations.glob("*.json"), key=lambda p: p.name):
    try:
      results[path.stem] = json.loads(path.read_text())
    except json.JSONDecodeError as error:
      raise errors.UserError(
        f"{path}: not valid JSON ({error}); re-run evaluate or remove the file"
      ) from None
  return results
