"""The main job on the embedded data, end to end (what `make demo` runs).

Generates and prepares the synthetic dermoscopy dataset (once), trains, evaluates the held-out
test split into `<workdir>/eval/test.json`, and draws predictions into `<workdir>/predictions`.
Running it again resumes or reuses what is already there. This module wires the synthetic
generator to `prepare`; neither of those knows the other.
"""

import json
import os
import pathlib
import time

import ml_collections

from sgdnet_jax.core import compilation_cache, errors, paths
from sgdnet_jax.data import prepare, synthetic
from sgdnet_jax.inference import evaluate, predict
from sgdnet_jax.train import loop
from sgdnet_jax.workdir import image_size, layout


def ensure_demo_dataset(
  root: os.PathLike,
  *,
  num_cases: int = 300,
  image_size: int = 256,
  prepared_size: int = 0,
  progress: bool = False,
) -> pathlib.Path:
  """The prepared demo dataset under `root` (generated and prepared on first use); idempotent.

  Writes `root/source` (folder layout) and `root/prepared` (prepared dataset, protocol
  `seeded_712`), and returns the latter. `prepared_size` defaults to `image_size`.
  """

  root = pathlib.Path(root)
  size = prepared_size or image_size
  source = synthetic.generate_folder_dataset(
    root / "source", num_cases=num_cases, image_size=image_size
  )
  prepared = root / "prepared"
  info_path = prepared / "dataset.json"
  if info_path.is_file():
    info = json.loads(info_path.read_text())
    manifest = json.loads((source / synthetic.MANIFEST).read_text())
    if info.get("synthetic") == manifest and info["image_size"] == size:
      return prepared
  prepare.prepare("synthetic", source, prepared, size=size, overwrite=True, progress=progress)
  return prepared


def ensure_config_data(config: ml_collections.ConfigDict) -> pathlib.Path:
  """The demo dataset `config.data.dir` names: `config.demo_cases` cases generated at twice
  `config.data.image_size` and prepared at it (`ensure_demo_dataset`)."""
  prepared = pathlib.Path(config.data.dir)
  if prepared.name != "prepared":
    raise errors.ConfigError(
      f"config.data.dir={config.data.dir!r}: the demo prepares its data into <root>/prepared; "
      "give a folder named 'prepared'"
    )
  size = config.data.image_size
  print(
    f"demo data: {prepared} ({config.demo_cases} synthetic cases at {2 * size} px, "
    f"prepared at {size} px)",
    flush=True,
  )
  return ensure_demo_dataset(
    prepared.parent, num_cases=config.demo_cases, image_size=2 * size, prepared_size=size
  )


def run_demo(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict:
  """Data, training, evaluation and pictures; prints the figures and returns them."""
  start = time.time()
  compilation_cache.enable(config.compilation_cache_dir)
  workdir = paths.as_path(workdir)
  if not config.data.image_size:
    raise errors.ConfigError(
      "config.data.image_size is 0: the demo generates its data at twice that size and prepares"
      " it at it; set one, e.g. --config.data.image_size=96"
    )
  image_size.resolve(config, [workdir])
  ensure_config_data(config)
  outcome = loop.train_and_evaluate(config, workdir)
  result = evaluate.evaluate(config, workdir, "test", "train")
  predicted = predict.predict(
    config, workdir, layout.predictions_dir(workdir), split="test", limit=24, overwrite=True
  )
  out, count = predicted.out, predicted.written
  minutes = (time.time() - start) / 60
  print(
    f"\ndemo finished in {minutes:.1f} min: {outcome['step']} steps, best validation Dice "
    f"{outcome['best_dice']:.4f} at step {outcome['best_step']}"
  )
  print(
    f"held-out test ({result['n_total']} cases, {result['resolution']}): "
    f"Dice {result['dice']:.4f}  IoU {result['iou']:.4f}  HD95 {result['hd95']:.2f} px  "
    f"ASSD {result['assd']:.2f} px"
  )
  evaluations = layout.eval_dir(workdir)
  cases = layout.eval_cases(evaluations, "test").name
  print(f"results:   {layout.eval_json(evaluations, 'test')} (per case: {cases})")
  print(f"pictures:  {out / 'overview.png'} and {out / 'panels'} ({count} cases)")
  print(f"metrics:   {layout.metrics_file(workdir)} and TensorBoard events in {workdir}")
  figures = {key: result[key] for key in ("dice", "iou", "hd95", "assd")}
  figures["minutes"] = round(minutes, 2)
  print(json.dumps(figures))
  return figures
