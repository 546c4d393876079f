"""HD95 speed: sgdnet_jax.metrics against medpy on the same masks, in one run.

Run from the repository root:

    JAX_PLATFORMS=cpu .venv/bin/python -m benchmarks.metrics

For 100 lesion-like mask pairs of 256x256 and of 1024x768 it times medpy's
`hd95` (one call per image), our host backend (`distance_metrics`, which also
computes HD, both HD95 conventions, ASSD and ASD in the same pass) and our jax
backend (`distance_metrics_jax`, compile excluded; at 1024x768 on a CPU only
the first `--jax-large-masks` images, since its work is O(H W min(H, W)) per
image and it is meant for accelerators). It checks that all agree with medpy to
1e-6 relative, prints a table and writes benchmarks/results/metrics.json.
"""

import argparse
import json
import pathlib
import platform
import sys
import time

if __package__ in (None, ""):  # run as a file: make the repository importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np
from medpy.metric import binary as medpy_binary

from sgdnet_jax import metrics

SIZES = ((256, 256), (1024, 768))
DEFAULT_OUTPUT = pathlib.Path(__file__).resolve().parent / "results" / "metrics.json"


def _star_shape(rows, cols, centre, radius, harmonics) -> np.ndarray:
  """Pixels inside the closed curve r(theta) = radius (1 + sum a_k cos(k theta + phi_k))."""
  dy, dx = rows - centre[0], cols - centre[1]
  theta = np.arctan2(dy, dx)
  boundary = radius * (1 + sum(a * np.cos(k * theta + phi) for k, a, phi in harmonics))
  return np.hypot(dy, dx) <= boundary


def _harmonics(rng, orders, amplitude):
  return [(k, rng.uniform(0, amplitude), rng.uniform(0, 2 * np.pi)) for k in orders]


def lesion_pairs(
  count: int, shape: tuple[int, int], seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """(pred, gt) batches of skin-lesion-like masks (ISIC): one smooth irregular blob each.

  The prediction follows the lesion with a smooth boundary error of a few percent
  of its radius; a third of the predictions add a small false-positive island
  and a fifth a small hole.
  """
  rng = np.random.default_rng(seed)
  rows, cols = np.ogrid[: shape[0], : shape[1]]
  size = min(shape)
  preds, gts = [], []
  for _ in range(count):
    centre = (rng.uniform(0.35, 0.65) * shape[0], rng.uniform(0.35, 0.65) * shape[1])
    radius = rng.uniform(0.15, 0.35) * size
    lesion = _harmonics(rng, range(2, 7), 0.08)
    error = _harmonics(rng, range(1, 9), 0.04)
    gts.append(_star_shape(rows, cols, centre, radius, lesion))
    pred = _star_shape(rows, cols, centre, radius, lesion + error)
    if rng.random() < 1 / 3:
      corner = (rng.uniform(0.05, 0.2) * shape[0], rng.uniform(0.05, 0.95) * shape[1])
      pred |= _star_shape(rows, cols, corner, 0.02 * size, _harmonics(rng, (2, 3), 0.2))
    if rng.random() < 1 / 5:
      pred &= ~_star_shape(rows, cols, centre, 0.05 * size, _harmonics(rng, (2, 3), 0.2))
    preds.append(pred)
  return np.stack(preds), np.stack(gts)


def _best_time(fn, repeats: int) -> tuple[float, object]:
  best, result = float("inf"), None
  for _ in range(repeats):
    start = time.perf_counter()
    result = fn()
    best = min(best, time.perf_counter() - start)
  return best, result


def _max_relative_difference(values, reference) -> float:
  values, reference = np.asarray(values, np.float64), np.asarray(reference, np.float64)
  return float(np.max(np.abs(values - reference) / np.maximum(np.abs(reference), 1e-12)))


def run(num_masks: int, jax_large_masks: int, repeats: int) -> list[dict]:
  rows = []
  for shape in SIZES:
    pred, gt = lesion_pairs(num_masks, shape)
    medpy_s, medpy_hd95 = _best_time(
      lambda: [medpy_binary.hd95(p, g) for p, g in zip(pred, gt)], repeats
    )
    host_s, host = _best_time(lambda: metrics.distance_metrics(pred, gt), repeats)

    jax_count = num_masks if shape == SIZES[0] else min(jax_large_masks, num_masks)
    jax_pred, jax_gt = jnp.asarray(pred[:jax_count]), jnp.asarray(gt[:jax_count])
    start = time.perf_counter()
    jax.block_until_ready(metrics.distance_metrics_jax(jax_pred, jax_gt))  # compile + first run
    jax_first_s = time.perf_counter() - start
    jax_s, device = _best_time(
      lambda: jax.device_get(metrics.distance_metrics_jax(jax_pred, jax_gt)), repeats
    )

    rows.append(
      {
        "size": f"{shape[0]}x{shape[1]}",
        "masks": num_masks,
        "surface_pixels_per_mask": float(
          np.mean([metrics.surface.surface(m).sum() for m in np.concatenate([pred, gt])])
        ),
        "medpy_hd95_s": medpy_s,
        "ours_host_s": host_s,
        "speedup_host_vs_medpy": medpy_s / host_s,
        "ours_jax_masks": jax_count,
        "ours_jax_s": jax_s,
        "ours_jax_compile_and_first_run_s": jax_first_s,
        "speedup_jax_vs_medpy_per_mask": (medpy_s / num_masks) / (jax_s / jax_count),
        "max_rel_diff_host_vs_medpy": _max_relative_difference(host["hd95_pooled"], medpy_hd95),
        "max_rel_diff_jax_vs_medpy": _max_relative_difference(
          device["hd95_pooled"], medpy_hd95[:jax_count]
        ),
      }
    )
  return rows


def format_table(rows: list[dict]) -> str:
  header = (
    f"{'size':>9} {'masks':>5} {'medpy s':>9} {'ours host s':>11} {'speedup':>8}"
    f" {'jax masks':>9} {'jax s':>8} {'jax speedup':>11} {'max rel diff':>12}"
  )
  lines = [header, "-" * len(header)]
  for r in rows:
    diff = max(r["max_rel_diff_host_vs_medpy"], r["max_rel_diff_jax_vs_medpy"])
    lines.append(
      f"{r['size']:>9} {r['masks']:>5} {r['medpy_hd95_s']:>9.3f} {r['ours_host_s']:>11.3f}"
      f" {r['speedup_host_vs_medpy']:>7.1f}x {r['ours_jax_masks']:>9} {r['ours_jax_s']:>8.3f}"
      f" {r['speedup_jax_vs_medpy_per_mask']:>10.2f}x {diff:>12.1e}"
    )
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--masks", type=int, default=100, help="mask pairs per size")
  parser.add_argument(
    "--jax-large-masks", type=int, default=10, help="masks timed for the jax backend at 1024x768"
  )
  parser.add_argument("--repeats", type=int, default=2, help="timed runs; the best is kept")
  parser.add_argument("--output", type=pathlib.Path, default=DEFAULT_OUTPUT)
  args = parser.parse_args(argv)

  rows = run(args.masks, args.jax_large_masks, args.repeats)
  print(f"HD95 over {args.masks} mask pairs per size; jax on {jax.default_backend()}")
  print(format_table(rows))
  args.output.parent.mkdir(parents=True, exist_ok=True)
  payload = {
    "machine": {
      "platform": platform.platform(),
      "processor": platform.processor(),
      "python": platform.python_version(),
      "jax_backend": jax.default_backend(),
    },
    "repeats": args.repeats,
    "results": rows,
  }
  args.output.write_text(json.dumps(payload, indent=2) + "\n")
  print(f"wrote {args.output}")
  worst = max(max(r["max_rel_diff_host_vs_medpy"], r["max_rel_diff_jax_vs_medpy"]) for r in rows)
  if worst > 1e-6:
    print(f"ERROR: results differ from medpy by {worst:.2e} relative (> 1e-6)", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
