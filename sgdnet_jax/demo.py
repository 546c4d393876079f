"""`demo`: the main job on the embedded data, end to end (what `make demo` runs).

  python -m sgdnet_jax.main demo [--config configs/demo.py] [--workdir runs/demo] [--config.x=y]

Generates and prepares the synthetic dermoscopy dataset (once), trains, evaluates the held-out
test split into `<workdir>/eval/test.json`, and draws predictions into `<workdir>/predictions`.
Running it again resumes or reuses what is already there.
"""

import argparse
import json
import os
import pathlib
import time

from sgdnet_jax import config_utils


def main(argv) -> int:
  parser = argparse.ArgumentParser(prog="sgdnet_jax.main demo", description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/demo.py")
  parser.add_argument("--workdir", default="runs/demo")
  args, overrides = parser.parse_known_args(argv)
  config = config_utils.load_config(args.config, overrides)
  start = time.time()
  from sgdnet_jax import evaluate, predict  # After argument errors, which should not wait for JAX.
  from sgdnet_jax.data import synthetic
  from sgdnet_jax.train import loop

  prepared = pathlib.Path(config.data.dir)
  if prepared.name != "prepared":
    raise ValueError(
      f"config.data.dir={config.data.dir!r}: the demo prepares its data into <root>/prepared"
    )
  size = config.data.image_size
  print(
    f"demo data: {prepared} ({config.demo_cases} synthetic cases at {2 * size} px, "
    f"prepared at {size} px)",
    flush=True,
  )
  synthetic.ensure_demo_dataset(
    prepared.parent, num_cases=config.demo_cases, image_size=2 * size, prepared_size=size
  )
  summary = loop.train_and_evaluate(config, args.workdir)
  result = evaluate.evaluate(config, args.workdir, "test", "train")
  out, count = predict.predict(
    config, args.workdir, os.path.join(args.workdir, "predictions"), split="test", limit=24
  )
  minutes = (time.time() - start) / 60
  print(
    f"\ndemo finished in {minutes:.1f} min: {summary['step']} steps, best validation Dice "
    f"{summary['best_dice']:.4f} at step {summary['best_step']}"
  )
  print(
    f"held-out test ({result['n_total']} cases, {result['resolution']}): "
    f"Dice {result['dice']:.4f}  IoU {result['iou']:.4f}  HD95 {result['hd95']:.2f} px  "
    f"ASSD {result['assd']:.2f} px"
  )
  print(f"results:   {os.path.join(args.workdir, 'eval', 'test.json')} (per case: test_cases.csv)")
  print(f"pictures:  {out / 'overview.png'} and {out / 'panels'} ({count} cases)")
  print(
    f"metrics:   {os.path.join(args.workdir, 'metrics.jsonl')} and TensorBoard events in "
    f"{args.workdir}"
  )
  print(
    json.dumps(
      {
        "minutes": round(minutes, 2),
        "dice": result["dice"],
        "iou": result["iou"],
        "hd95": result["hd95"],
        "assd": result["assd"],
      }
    )
  )
  return 0
