"""The embedded demo dataset: deterministic dermoscopy-like images with lesion masks.

Each case is an irregular lesion blob (random harmonics on a rotated ellipse) with a soft or
sharp boundary, two-tone pigment with texture and dark dots, on skin with low-frequency colour
variation, crossed by hairs (which are not lesion), under vignetting and sometimes the dark rim
of a dermoscope. The mask is exactly where the blob's opacity exceeds one half. Written in the
`folder` layout (`images/synth_XXXX.jpg`, `masks/synth_XXXX_segmentation.png`), so `make demo`
needs no download (`sgdnet_jax.demo.ensure_demo_dataset` generates and prepares it).
"""

import json
import os
import pathlib
import shutil

import numpy as np
from PIL import Image, ImageDraw

from sgdnet_jax.data import staging

GENERATOR_VERSION = 1
MANIFEST = "synthetic.json"


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
  """Zero-mean, unit-scale noise varying over about 1/cells of the image (bicubic upsampling)."""
  grid = Image.fromarray(rng.standard_normal((cells, cells)).astype(np.float32))
  return np.asarray(grid.resize((width, height), Image.BICUBIC))


def render_case(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
  """One synthetic dermoscopy image (H, W, 3) uint8 and its lesion mask (H, W) bool."""
  scale = min(height, width) / 2
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  # Lesion geometry, in units of half the short side.
  cy, cx = np.array([height, width]) / 2 + rng.uniform(-0.25, 0.25, 2) * scale
  angle = rng.uniform(0, np.pi)
  elongation = rng.uniform(1.0, 1.6)
  dy, dx = (yy - cy) / scale, (xx - cx) / scale
  u = dx * np.cos(angle) + dy * np.sin(angle)
  v = (-dx * np.sin(angle) + dy * np.cos(angle)) * elongation
  radius_field = np.hypot(u, v)
  theta = np.arctan2(v, u)
  wobble = np.ones_like(theta)
  for k in range(2, 8):
    wobble += rng.uniform(0, 0.22 / k) * np.cos(k * theta + np.float32(rng.uniform(0, 2 * np.pi)))
  boundary = np.float32(rng.uniform(0.25, 0.6)) * wobble
  softness = rng.choice([rng.uniform(0.002, 0.01), rng.uniform(0.02, 0.08)])  # sharp or soft
  opacity = 1 / (1 + np.exp(np.clip((radius_field - boundary) / np.float32(softness), -50, 50)))
  mask = radius_field < boundary

  # Skin: base tone with low-frequency variation and fine texture.
  skin_tone = rng.uniform([200, 150, 120], [240, 190, 165]).astype(np.float32)
  skin = (
    skin_tone
    * (
      1
      + 0.05 * _smooth_noise(rng, height, width, 5)
      + 0.02 * rng.standard_normal((height, width), np.float32)
    )[..., None]
  )
  # Pigment: two browns mixed by smooth noise, darker towards the centre, plus dark dots.
  light = rng.uniform([140, 90, 60], [190, 130, 95]).astype(np.float32)
  dark = rng.uniform([40, 25, 20], [90, 60, 50]).astype(np.float32)
  mix = np.clip(
    0.5
    + 0.35 * _smooth_noise(rng, height, width, 7)
    + 0.4 * (1 - radius_field / np.maximum(boundary, 1e-3)),
    0,
    1,
  )
  lesion = light * (1 - mix[..., None]) + dark * mix[..., None]
  lesion *= (1 + 0.08 * _smooth_noise(rng, height, width, 24))[..., None]
  dots = _smooth_noise(rng, height, width, 40) > 2.0
  lesion[dots] *= 0.6
  image = skin * (1 - opacity[..., None]) + lesion * opacity[..., None]

  # Vignetting and, sometimes, the dark rim of a dermoscope.
  rim = np.hypot((yy - height / 2) / (height / 2), (xx - width / 2) / (width / 2)) / np.sqrt(2)
  image *= (1 - rng.uniform(0.0, 0.4) * rim**2)[..., None]
  if rng.random() < 0.3:
    image[rim > rng.uniform(0.8, 0.95)] *= 0.08
  image += 2.5 * rng.standard_normal(image.shape, np.float32)

  # Hairs: dark quadratic curves over skin and lesion alike.
  picture = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(picture)
  t = np.linspace(0, 1, 24)[:, None]
  for _ in range(rng.integers(0, 9)):
    ends = rng.uniform(-0.1, 1.1, (3, 2)) * [width, height]
    curve = (1 - t) ** 2 * ends[0] + 2 * t * (1 - t) * ends[1] + t**2 * ends[2]
    colour = tuple(int(c) for c in rng.uniform(15, 60) * np.array([1.0, 0.8, 0.7]))
    draw.line([tuple(p) for p in curve], fill=colour, width=int(rng.integers(1, 3)))
  return np.asarray(picture), mask


def generate_folder_dataset(
  root: os.PathLike, *, num_cases: int = 300, image_size: int = 256, seed: int = 0
) -> pathlib.Path:
  """Writes the demo dataset in the `folder` layout under `root`; idempotent.

  A `synthetic.json` manifest records the parameters; when it matches, nothing is rewritten.
  The cases are written under a temporary name (removed if SIGTERM or SIGINT stop the work) and
  renamed into place. Deterministic: case i depends only on (seed, i).
  """
  root = pathlib.Path(root)
  manifest = {
    "generator_version": GENERATOR_VERSION,
    "num_cases": num_cases,
    "image_size": image_size,
    "seed": seed,
  }
  manifest_path = root / MANIFEST
  if manifest_path.is_file() and json.loads(manifest_path.read_text()) == manifest:
    return root
  if root.exists() and any(root.iterdir()) and not manifest_path.is_file():
    raise FileExistsError(
      f"{root} holds other files; expected an empty folder or a synthetic dataset (with {MANIFEST})"
    )
  with staging.Staging(root.parent / f".{root.name}.tmp-{os.getpid()}") as stage:
    (stage.path / "images").mkdir()
    (stage.path / "masks").mkdir()
    for index in range(num_cases):
      image, mask = render_case(np.random.default_rng([seed, index]), image_size, image_size)
      name = f"synth_{index:04d}"
      Image.fromarray(image).save(stage.path / "images" / f"{name}.jpg", quality=92)
      Image.fromarray(mask.astype(np.uint8) * 255).save(
        stage.path / "masks" / f"{name}_segmentation.png"
      )
    (stage.path / MANIFEST).write_text(json.dumps(manifest) + "\n")
    with stage.deferred():
      shutil.rmtree(root, ignore_errors=True)
      stage.path.rename(root)
  return root
