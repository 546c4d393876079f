#!/usr/bin/env bash
# The exported model serves with exactly what its card says: a fresh venv holding only
# requirements-serving.txt runs the exported serving.py on a folder of an RGB, a grayscale, a
# 16-bit and a corrupt image, and its masks agree with `predict`'s probabilities on the same
# images; the corrupt image is skipped and named, the others are written, and both exit 1.
# Cheap: random weights of configs/test.py's tiny network at depth 14 (64 px), nothing trained;
# the compilations (predict, serving) take most of its 2-3 minutes, pip install the rest.
#   bash .ci/serving_check.sh          (make serving-check)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}  # the main venv
PYTHON=${PYTHON:-python3}  # makes the serving venv
start=$SECONDS
work=$(mktemp -d -t sgdnet_jax-serving-check.XXXXXX)
trap 'rm -rf "$work"' EXIT
export JAX_PLATFORMS=cpu
config=(--config configs/test.py --config.model.backbone_depth=14)

# (a) A tiny model with random weights, and the images.
"$PY" - "$work" <<'PYTHON'
import io
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from sgdnet_jax import models
from sgdnet_jax.core import config_utils
from sgdnet_jax.workdir import variables_io
from sgdnet_jax.data import synthetic

work = pathlib.Path(sys.argv[1])
config = config_utils.load_config("configs/test.py", ["--config.model.backbone_depth=14"])
size = config.data.image_size
module = models.build(config.model)
shapes = jax.eval_shape(
  lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), train=False)
)
rng = np.random.default_rng(0)

def fill(path, leaf):
  """Unit-gain kernels and identity normalisations: masks that depend on the image.

  (Faster than jit-compiling `init`, whose PyTorch scales give a near-constant output.)
  """
  name = path[-1].key
  if name == "kernel":
    return (rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)
  if name in ("bias", "mean"):
    return np.zeros(leaf.shape, np.float32)
  return np.ones(leaf.shape, np.float32)

variables = jax.tree_util.tree_map_with_path(fill, shapes)
variables_io.save_variables(work / "model", variables, config.to_dict())

images = work / "images"
images.mkdir()
rgb, _ = synthetic.render_case(rng, 80, 96)
Image.fromarray(rgb).save(images / "rgb.png")
gray, _ = synthetic.render_case(rng, 72, 72)
Image.fromarray(gray).convert("L").save(images / "gray.png")
deep, _ = synthetic.render_case(rng, 64, 64)
luminance = np.asarray(Image.fromarray(deep).convert("L"), np.float64)
Image.fromarray((1000 + 8 * luminance).astype(np.uint16)).save(images / "deep.png")  # I;16
buffer = io.BytesIO()
Image.fromarray(rgb).save(buffer, format="PNG")
(images / "corrupt.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
PYTHON

# (a) Export, and predict the folder with the main venv: the corrupt image makes it exit 1.
"$PY" -m sgdnet_jax.main export "${config[@]}" --workdir "$work/model" --out "$work/exported"
status=0
"$PY" -m sgdnet_jax.main predict "${config[@]}" --workdir "$work/model" \
  --images "$work/images" --out "$work/predicted" --save-probabilities 2>"$work/predict.err" ||
  status=$?
cat "$work/predict.err" >&2
[ "$status" -eq 1 ] || { echo "serving-check: predict exited $status, expected 1" >&2; exit 1; }

# (b) A venv from requirements-serving.txt alone (the copy in the exported folder).
pip_start=$SECONDS
"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet -r "$work/exported/requirements-serving.txt"
pip_seconds=$((SECONDS - pip_start))
if "$work/venv/bin/python" -I -c "import sgdnet_jax" 2>/dev/null \
  || "$work/venv/bin/python" -I -c "import flax" 2>/dev/null; then
  echo "serving-check: the serving venv can import sgdnet_jax or flax" >&2
  exit 1
fi

# (c) The exported serving.py in that venv, isolated (-I) and outside the repository.
status=0
(cd "$work" && venv/bin/python -I exported/serving.py --model exported --images images \
  --out served 2>serving.err) || status=$?
cat "$work/serving.err" >&2
[ "$status" -eq 1 ] || { echo "serving-check: serving.py exited $status, expected 1" >&2; exit 1; }

# (d) Served masks against predict's probabilities.
"$PY" - "$work" <<'PYTHON'
import pathlib
import sys

import numpy as np
from PIL import Image

work = pathlib.Path(sys.argv[1])
# predict's float16 probability is 2**-11 coarse at 0.5 and the two programs round differently
# (~1e-6): a pixel this close to 0.5 may fall either way.
UNDECIDED = 2e-3
failures = []
foreground_pixels = total_pixels = 0
for name, shape in (("rgb", (80, 96)), ("gray", (72, 72)), ("deep", (64, 64))):
  probability = np.load(work / "predicted" / "probabilities" / f"{name}.npy").astype(np.float32)
  predicted = np.asarray(Image.open(work / "predicted" / "masks" / f"{name}.png")) > 0
  served = np.asarray(Image.open(work / "served" / f"{name}.png")) > 0
  decided = np.abs(probability - 0.5) > UNDECIDED
  differ = served != predicted
  foreground_pixels, total_pixels = foreground_pixels + served.sum(), total_pixels + served.size
  print(
    f"serving-check: {name} {served.shape}: foreground served {served.mean():.3f}, "
    f"predict {predicted.mean():.3f}; {int(differ.sum())} pixels differ, "
    f"{int((~decided).sum())} within {UNDECIDED} of 0.5"
  )
  if served.shape != shape or predicted.shape != shape:
    failures.append(f"{name}: mask shapes {served.shape} / {predicted.shape}, expected {shape}")
  elif (differ & decided).any():
    failures.append(f"{name}: served and predicted masks differ where predict is decided")
  elif decided.mean() < 0.9:
    failures.append(f"{name}: predict is undecided on over 10 % of the pixels")
if not 0 < foreground_pixels < total_pixels:
  failures.append("every mask is uniform: the comparison cannot tell decoders apart")
if (work / "served" / "corrupt.png").exists():
  failures.append("a mask was written for corrupt.png")
for log in ("serving.err", "predict.err"):
  if "corrupt.png" not in (work / log).read_text():
    failures.append(f"{log} does not name corrupt.png")
if failures:
  sys.exit("serving-check failed:\n  " + "\n  ".join(failures))
PYTHON
echo "serving-check: passed in $((SECONDS - start)) s (of which pip install ${pip_seconds} s)"
