"""Input pipeline throughput against the training step's consumption, on this machine.

    JAX_PLATFORMS=cpu .venv/bin/python benchmarks/input_pipeline.py [--data PREPARED_DIR]
        [--batch 16] [--batches 40] [--read-threads 4] [--workers 0] [--step-config
        configs/isic2018.py] [--step-batches 3] [--no-step]

Prints images/s of the prepared-data pipeline (256x256, batch 16) without and with every
augmentation (flips, right-angle rotations, ShiftScaleRotate p=0.5, colour jitter), then the
images/s of a jitted forward + backward of the model (gradient of BCE on o1, no optimiser update),
and
writes everything to benchmarks/results/input_pipeline.json. Without --data it uses the
embedded demo dataset under runs/demo_data (generated on first use). The pipeline should deliver
at least 3x what the step consumes.
"""

import argparse
import json
import os
import pathlib
import platform
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from configs import default
from sgdnet_jax import demo
from sgdnet_jax.data import pipeline


def pipeline_rate(data_config, batch: int, batches: int) -> float:
  """Images/s of make_train_iterator after two warm-up batches."""
  iterator = pipeline.make_train_iterator(
    data_config, batch, seed=0, process_index=0, process_count=1
  )
  for _ in range(2):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  rate = batches * batch / (time.perf_counter() - start)
  iterator.close()
  return rate


def step_rate(config_spec: str, batch: int, size: int, batches: int) -> dict:
  """Images/s of a jitted forward + backward (BCE on o1) of the experiment's model."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  from sgdnet_jax import models
  from sgdnet_jax.core import config_utils

  config = config_utils.load_config(config_spec)
  module = models.build(config.model)
  images = jnp.asarray(
    np.random.default_rng(0).standard_normal((batch, size, size, 3)), jnp.float32
  )
  masks = jnp.asarray(np.random.default_rng(1).random((batch, size, size)) > 0.5, jnp.float32)
  variables = jax.jit(lambda x: module.init({"params": jax.random.PRNGKey(0)}, x, train=False))(
    images
  )

  def loss_fn(params, batch_stats, key):
    outputs, updates = module.apply(
      {"params": params, "batch_stats": batch_stats},
      images,
      train=True,
      mutable=["batch_stats"],
      rngs={"dropout": key},
    )
    logits = outputs["o1"][..., -1]  # the foreground logit (sigmoid head: the only channel)
    return optax.sigmoid_binary_cross_entropy(logits, masks).mean(), updates

  grad_fn = jax.jit(jax.grad(loss_fn, has_aux=True))
  key = jax.random.PRNGKey(0)
  start = time.perf_counter()
  jax.block_until_ready(grad_fn(variables["params"], variables["batch_stats"], key))
  compile_and_first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(batches):
    grads = grad_fn(variables["params"], variables["batch_stats"], key)
  jax.block_until_ready(grads)
  seconds = time.perf_counter() - start
  return {
    "config": config_spec,
    "images_per_s": batches * batch / seconds,
    "seconds_per_step": seconds / batches,
    "compile_and_first_step_s": compile_and_first,
    "device": str(jax.devices()[0]),
    "timed_steps": batches,
  }


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data", default="", help="prepared dataset (default: the demo data)")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--size", type=int, default=256)
  parser.add_argument("--batches", type=int, default=40, help="timed pipeline batches")
  parser.add_argument("--read-threads", type=int, default=4)
  parser.add_argument("--workers", type=int, default=0, help="grain worker processes")
  parser.add_argument("--step-config", default="configs/isic2018.py")
  parser.add_argument("--step-batches", type=int, default=3, help="timed training steps")
  parser.add_argument("--no-step", action="store_true", help="measure the pipeline only")
  parser.add_argument("--out", default=str(REPO / "benchmarks/results/input_pipeline.json"))
  args = parser.parse_args()

  data_dir = args.data or str(
    demo.ensure_demo_dataset(REPO / "runs/demo_data", image_size=args.size, progress=True)
  )
  config = default.get_config().data
  config.dir, config.image_size = data_dir, args.size
  config.read_threads, config.num_workers = args.read_threads, args.workers
  results = {
    "machine": {
      "cpus": os.cpu_count(),
      "platform": platform.platform(),
      "python": platform.python_version(),
    },
    "data": data_dir,
    "batch": args.batch,
    "image_size": args.size,
    "read_threads": args.read_threads,
    "num_workers": args.workers,
  }
  results["pipeline_images_per_s"] = {
    "no_augmentation": pipeline_rate(config, args.batch, args.batches)
  }
  for switch in ("hflip", "vflip", "rot90", "shift_scale_rotate", "color_jitter"):
    config.augment[switch] = True
  results["pipeline_images_per_s"]["all_augmentations"] = pipeline_rate(
    config, args.batch, args.batches
  )
  for name, rate in results["pipeline_images_per_s"].items():
    print(f"pipeline {name}: {rate:.0f} images/s")
  if not args.no_step:
    step = step_rate(str(REPO / args.step_config), args.batch, args.size, args.step_batches)
    results["train_step"] = step
    results["pipeline_over_step"] = {
      name: rate / step["images_per_s"] for name, rate in results["pipeline_images_per_s"].items()
    }
    print(
      f"train step (forward + backward, {step['device']}): {step['images_per_s']:.3g} "
      f"images/s ({step['seconds_per_step']:.2f} s/step; compile + first step "
      f"{step['compile_and_first_step_s']:.0f} s)"
    )
    for name, ratio in results["pipeline_over_step"].items():
      print(f"pipeline / step, {name}: {ratio:.1f}x (target >= 3x)")
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=1) + "\n")
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
