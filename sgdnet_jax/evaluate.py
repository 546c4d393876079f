"""`evaluate`: the paper's metrics on a split, with their conventions stated.

  python -m sgdnet_jax.main evaluate --config configs/<exp>.py[:args] --workdir W \
      [--split test] [--resolution {train,native}]

Writes `W/eval/<split>.json` (every metric as a top-level number, `conventions`, `cases` with
n_used / n_total / n_excluded per metric) and `W/eval/<split>_cases.csv` (per-case values). The
model is the workdir's best checkpoint by validation Dice (else its latest). At `native`
resolution the foreground probability is resized bilinearly to each case's original size and
compared with the original mask.
"""

import csv
import io
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from PIL import Image

from sgdnet_jax import distributed, metrics, models, variables_io
from sgdnet_jax.data import pipeline
from sgdnet_jax.train import losses
from sgdnet_jax.train import state as state_lib

RESOLUTIONS = ("train", "native")


def default_metrics_config() -> ml_collections.ConfigDict:
  """Metric conventions (METRICS.md); the defaults are the project's."""
  return ml_collections.ConfigDict(
    dict(
      dice="per_image_mean",
      iou="per_image_mean",
      overlap_empty="score",
      hd95="pooled",
      distance_empty="diagonal",
    )
  )


def make_probability_fn(model, mesh):
  """Jitted eval forward: (variables, images) -> foreground probability (B, H, W)."""
  return jax.jit(
    lambda v, x: losses.foreground_probability(model.apply(v, x, train=False)["o1"]),
    out_shardings=state_lib.batch_sharding(mesh),
  )


def host_local(array: jax.Array, mesh) -> np.ndarray:
  """This process's rows of a batch-sharded global array."""
  if jax.process_count() == 1:
    return np.asarray(array)
  return np.asarray(
    multihost_utils.global_array_to_host_local_array(
      array, mesh, jax.sharding.PartitionSpec(state_lib.BATCH_AXES)
    )
  )


def resize_probability(probability: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear (half-pixel centres) resize of a (h, w) float map to (height, width)."""
  image = Image.fromarray(probability.astype(np.float32), mode="F")
  return np.asarray(image.resize((width, height), Image.BILINEAR))


def _case_records(probability, batch, dataset, resolution, one_empty) -> dict[str, np.ndarray]:
  """Per-image metric fields for the valid cases of one host batch."""
  valid = np.asarray(batch["valid"], bool)
  pred = probability > 0.5
  if resolution == "train":
    record = metrics.per_image_metrics(
      pred[valid], np.asarray(batch["mask"])[valid] > 0, one_empty=one_empty
    )
  else:
    rows = []
    for p, case_id in zip(probability[valid], np.asarray(batch["case_id"])[valid]):
      gt = dataset.native_mask(str(case_id))
      native = resize_probability(p, *gt.shape) > 0.5
      rows.append(metrics.per_image_metrics(native[None], gt[None], one_empty=one_empty))
    record = {key: np.concatenate([row[key] for row in rows]) for key in rows[0]} if rows else {}
  if "instances" in batch:
    panoptic = [
      metrics.panoptic_counts(inst, p)
      for inst, p in zip(np.asarray(batch["instances"])[valid], pred[valid])
    ]
    for key in ("pq_tp", "pq_fp", "pq_fn", "pq_iou_sum"):
      record[key] = np.asarray([counts[key] for counts in panoptic])
  record["index"] = np.asarray(batch["index"])[valid]
  return record


def _gather(records) -> dict[str, np.ndarray]:
  """Concatenates host records, across processes too, ordered by position in the split."""
  local = {key: np.concatenate([r[key] for r in records]) for key in records[0]}
  if jax.process_count() > 1:
    # Hosts hold different numbers of valid cases: pad to a common length, then drop padding.
    length = int(np.max(multihost_utils.process_allgather(np.asarray(len(local["index"])))))
    padded = {
      k: np.concatenate([v.astype(np.float64), np.full(length - len(v), np.nan)])
      for k, v in local.items()
    }
    padded["index"][len(local["index"]) :] = -1
    gathered = {
      k: np.asarray(multihost_utils.process_allgather(v)).reshape(-1) for k, v in padded.items()
    }
    keep = gathered["index"] >= 0
    local = {k: v[keep] for k, v in gathered.items()}
    local["index"] = local["index"].astype(np.int64)
  order = np.argsort(local["index"])
  return {key: value[order] for key, value in local.items()}


def evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  split: str = "test",
  resolution: str = "train",
  variables: dict[str, Any] | None = None,
) -> dict[str, Any]:
  """Evaluates the workdir's model on `split`; writes and returns the results record."""
  if resolution not in RESOLUTIONS:
    raise ValueError(f"--resolution must be one of {RESOLUTIONS}, got {resolution!r}")
  distributed.initialize(config.distributed)
  split_name = (
    getattr(config.data, f"{split}_split", split) if split in ("train", "val", "test") else split
  )
  mesh = state_lib.make_mesh(config.mesh)
  model = models.build(config.model)
  variables = variables if variables is not None else variables_io.load_variables(workdir)
  variables = jax.device_put(variables, state_lib.replicated(mesh))
  probability_fn = distributed.CompiledOnAllProcesses(
    make_probability_fn(model, mesh), "eval_forward"
  )
  dataset, case_ids = pipeline.resolve_split(config.data, split_name)
  options = metrics.MetricOptions(
    dice=config.metrics.dice,
    iou=config.metrics.iou,
    overlap_empty=config.metrics.overlap_empty,
    hd95=config.metrics.hd95,
    distance_empty=config.metrics.distance_empty,
    resolution=(
      f"{config.data.image_size}x{config.data.image_size}" if resolution == "train" else "original"
    ),
  )
  one_empty = "diagonal" if options.distance_empty == "diagonal" else "nan"

  records = []
  for batch in pipeline.make_eval_iterator(config.data, split_name, config.eval_batch_size):
    device_images = state_lib.global_batch({"image": batch["image"]}, mesh)["image"]
    probability = host_local(probability_fn(variables, device_images), mesh)
    records.append(_case_records(probability, batch, dataset, resolution, one_empty))
  record = _gather(records)
  report = metrics.summarize({k: v for k, v in record.items() if k != "index"}, options)

  result: dict[str, Any] = {
    "split": split_name,
    "resolution": report.resolution,
    "n_total": len(record["index"]),
  }
  result.update(report.values)
  result["conventions"] = {
    name: {"definition": c.definition, "empty_policy": c.empty_policy}
    for name, c in report.conventions.items()
  }
  result["cases"] = {
    name: {"n_used": c.n_used, "n_total": c.n_total, "n_excluded": c.n_excluded}
    for name, c in report.cases.items()
  }
  result["n_used"] = {name: c.n_used for name, c in report.cases.items()}
  if jax.process_index() == 0:
    out_dir = os.path.join(workdir, "eval")
    os.makedirs(out_dir, exist_ok=True)
    suffix = "" if resolution == "train" else "_native"
    _write_atomic(os.path.join(out_dir, f"{split}{suffix}.json"), json.dumps(result, indent=2))
    fields = [k for k in record if k != "index"]
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["case_id"] + fields)
    writer.writerows(
      [case_ids[int(i)]] + [record[k][n] for k in fields] for n, i in enumerate(record["index"])
    )
    _write_atomic(os.path.join(out_dir, f"{split}{suffix}_cases.csv"), table.getvalue())
  return result


def _write_atomic(path: str, text: str):
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)
