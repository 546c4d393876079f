"""The paper's metrics on a split, with their conventions stated; also the validation score.

  python -m sgdnet_jax.main evaluate --config configs/<exp>.py[:args] --workdir W \
      [--split test] [--resolution {train,native}] [--out DIR]

Writes `<out>/<split>.json` (every metric as a top-level number, `conventions` with each metric's
definition, empty policy and `per_case_column` (its column of the CSV; null where none holds its
per-case values), `cases` with n_used / n_total / n_excluded per metric) and
`<out>/<split>_cases.csv` (per-case values), the CSV first: the JSON marks a finished evaluation;
`<out>` defaults to `W/eval`; W and `<out>` may be `gs://` URLs (`sgdnet_jax.core.paths`). The model
is the workdir's best checkpoint by validation Dice (else its latest). At `native` resolution
the foreground probability is resized bilinearly to each case's original size and compared with
the original mask.

Validation during training runs the same collection (`collect_split`) with overlap metrics only,
computed inside the jitted step, so validation Dice and evaluation Dice are one implementation.
"""

import csv
import io
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from sgdnet_jax import metrics, models
from sgdnet_jax.core import compilation_cache, distributed, errors, paths, programs, sharding
from sgdnet_jax.data import pipeline
from sgdnet_jax.inference import ensemble, postprocessing
from sgdnet_jax.metrics import panoptic
from sgdnet_jax.workdir import guard, image_size, layout, variables_io

RESOLUTIONS = ("train", "native")
DISTANCES_ON = ("host", "device")


def metric_options(config: ml_collections.ConfigDict, resolution: str) -> metrics.MetricOptions:
  """The conventions of `config.metrics` at the evaluation resolution."""
  size = config.data.image_size
  return metrics.MetricOptions(
    dice=config.metrics.dice,
    iou=config.metrics.iou,
    overlap_empty=config.metrics.overlap_empty,
    hd95=config.metrics.hd95,
    distance_empty=config.metrics.distance_empty,
    resolution=f"{size}x{size}" if resolution == "train" else "original",
  )


def make_eval_step(
  model,
  mesh,
  *,
  device_metrics: bool,
  distances: bool,
  one_empty: str,
  probability: bool = True,
  tta: str = "none",
):
  """Jitted (variable sets, images, masks) -> per-image outputs, batch-sharded.

  The foreground probability is `ensemble.probability_maps`: the mean over the variable sets (an
  ensemble, e.g. the five folds; one set is the plain model) of the `tta` mean. `device_metrics`:
  the per-image metric record is computed in the step (exact EDT distances when `distances`);
  otherwise the host scores the `probability` (B, H, W), which is also returned when
  `probability` (the host needs it for panoptic counts).
  """

  def step(variable_sets, images, masks):
    foreground = ensemble.probability_maps(model, variable_sets, images, tta)["probability"]
    outputs = {"probability": foreground} if probability or not device_metrics else {}
    if device_metrics:
      pred, gt = foreground > 0.5, masks > 0
      outputs.update(
        metrics.per_image_metrics_jax(pred, gt, one_empty=one_empty, distances=distances)
      )
    return outputs

  return jax.jit(step, out_shardings=sharding.batch_sharding(mesh))


def eval_step_for(model_config: ml_collections.ConfigDict, mesh, **options):
  """`make_eval_step` of the model of `model_config`, the same jitted function for an equal
  model, mesh and `options` within the process (`sgdnet_jax.core.programs`)."""
  key = {"model": programs.config_key(model_config), "mesh": programs.mesh_key(mesh), **options}
  frozen = programs.frozen(model_config)
  return programs.cached(
    "eval_step", key, lambda: make_eval_step(models.build(frozen), mesh, **options)
  )


def host_local(array: jax.Array, mesh) -> np.ndarray:
  """This process's rows of a batch-sharded global array."""
  if jax.process_count() == 1:
    return np.asarray(array)
  return np.asarray(
    multihost_utils.global_array_to_host_local_array(
      array, mesh, jax.sharding.PartitionSpec(sharding.BATCH_AXES)
    )
  )


def _host_record(
  probability, batch, dataset, resolution, one_empty, post=()
) -> dict[str, np.ndarray]:
  """Per-image metric fields of one host batch, scored on the host (padding rows included)."""
  if resolution == "train":
    pred = np.stack([postprocessing.postprocess(p > 0.5, post) for p in probability])
    return metrics.per_image_metrics(pred, np.asarray(batch["mask"]) > 0, one_empty=one_empty)
  rows = []
  for p, case_id, valid in zip(probability, np.asarray(batch["case_id"]), batch["valid"]):
    if valid:
      gt = dataset.native_mask(str(case_id))
      native = postprocessing.postprocess(
        postprocessing.resize_probability(p, *gt.shape) > 0.5, post
      )
    else:  # padding: an empty pair, dropped by PerImageValues
      native = gt = np.zeros((1, 1), bool)
    rows.append(metrics.per_image_metrics(native[None], gt[None], one_empty=one_empty))
  return {key: np.concatenate([row[key] for row in rows]) for key in rows[0]}


def _panoptic_record(pred: np.ndarray, batch: dict) -> dict[str, np.ndarray]:
  """PQ counts (B,) of a host batch; PerImageValues drops the padding rows."""
  return metrics.panoptic_counts(np.asarray(batch["instances"]), pred)


def _case_columns(record: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The per-case CSV's columns: the record's fields and, for CoNIC, each patch's `pq`.

  The report pairs runs case by case, so a metric it compares needs a per-case column; `pq` is
  the mean of the per-patch PQs (`pq_dataset` and `mpq_plus` pool the counts: no per-case value).
  """
  columns = {key: value for key, value in record.items() if key != "index"}
  if "pq_tp" in record:
    columns["pq"] = panoptic.pq_per_patch(record)
  return columns


def collect_split(
  step: Callable,
  variables,
  config: ml_collections.ConfigDict,
  split: str,
  mesh,
  *,
  resolution: str = "train",
  device_metrics: bool,
  one_empty: str = "diagonal",
  post: tuple[tuple[str, int], ...] = (),
) -> tuple[dict[str, np.ndarray], list[str]]:
  """Per-image records of every case of `split` on every process, in split order; case ids."""
  dataset, case_ids = pipeline.resolve_split(config.data, split)
  collected = metrics.PerImageValues.empty()
  for batch in pipeline.make_eval_iterator(config.data, split, config.eval_batch_size):
    device_batch = sharding.global_batch({"image": batch["image"], "mask": batch["mask"]}, mesh)
    outputs = {
      key: host_local(value, mesh)
      for key, value in step(variables, device_batch["image"], device_batch["mask"]).items()
    }
    if device_metrics:
      record = {k: v for k, v in outputs.items() if k != "probability"}
    else:
      probability = outputs["probability"]
      record = _host_record(probability, batch, dataset, resolution, one_empty, post)
    if "instances" in batch and "probability" in outputs:  # validation scores Dice only
      record.update(_panoptic_record(outputs["probability"] > 0.5, batch))
    record["index"] = np.asarray(batch["index"])
    collected = collected.merge(
      metrics.PerImageValues.from_model_output(mask=np.asarray(batch["valid"], bool), **record)
    )
  record = collected.compute()
  order = np.argsort(record["index"])
  return {key: value[order] for key, value in record.items()}, case_ids


def split_name(config: ml_collections.ConfigDict, split: str) -> str:
  """`train`/`val`/`test` through the config's split names; other names (extra_eval) as given."""
  if split in ("train", "val", "test"):
    return config.data[f"{split}_split"]
  return split


def _check_split_has_cases(config: ml_collections.ConfigDict, split: str, name: str):
  """UserError for a split that is unknown or holds no case (nothing to score, before a compile)."""
  try:
    _, case_ids = pipeline.resolve_split(config.data, name)
  except ValueError as e:
    raise errors.UserError(f"--split {split}: {e}") from None
  if not case_ids:
    raise errors.UserError(
      f"--split {split}: split {name!r} of {config.data.dir} (protocol "
      f"{config.data.protocol!r}, fold {config.data.fold}) holds no case; evaluate another split"
      " or prepare the dataset with cases in it"
    )


def evaluate(
  config: ml_collections.ConfigDict,
  workdir: str | os.PathLike | Sequence[str | os.PathLike],
  split: str = "test",
  resolution: str = "train",
  variables: dict[str, Any] | None = None,
  out_dir: str | os.PathLike | None = None,
  *,
  tta: str = "none",
  post: str = "",
) -> dict[str, Any]:
  """Evaluates the workdir's model on `split`; writes and returns the results record.

  Several workdirs evaluate their ensemble (the mean probability; give `out_dir`). `tta` and
  `post` have the meaning of `predict`'s (`sgdnet_jax.inference.predict`); their results are
  written under a name of their own (`<split>_tta-flip_post.json`), so the plain evaluation stays.
  """
  compilation_cache.enable(config.compilation_cache_dir)
  workdirs = paths.as_paths(workdir)
  if len(workdirs) > 1 and not out_dir:
    raise errors.ConfigError(
      f"evaluate: {len(workdirs)} workdirs make an ensemble; give --out DIR for its results"
    )
  ensemble.check_tta(tta)
  post_steps = postprocessing.parse_post(post)
  if resolution not in RESOLUTIONS:
    raise errors.ConfigError(f"--resolution must be one of {RESOLUTIONS}, got {resolution!r}")
  distances_on = config.metrics.distances_on
  if distances_on not in DISTANCES_ON:
    raise errors.ConfigError(
      f"config.metrics.distances_on={distances_on!r}: expected one of {DISTANCES_ON}"
    )
  if distances_on == "device" and (resolution == "native" or post_steps):
    raise errors.ConfigError(
      "config.metrics.distances_on='device' needs --resolution train and no --post (native "
      "sizes differ per case, post-processing runs on the host); use distances_on='host'"
    )
  guard.check_model_fits(config, workdirs)
  distributed.initialize(config.distributed)
  config.data.image_size = image_size.resolve(config, workdirs)
  name = split_name(config, split)
  mesh = sharding.make_mesh(config.mesh)
  if variables is not None:
    variable_sets = [variables]
  else:
    variable_sets = [variables_io.load_variables(w) for w in workdirs]
    ensemble.check_same_structure(variable_sets, workdirs)
  variable_sets = jax.device_put(variable_sets, sharding.replicated(mesh))
  _check_split_has_cases(config, split, name)  # after the variables: a workdir's errors first
  options = metric_options(config, resolution)
  one_empty = "diagonal" if options.distance_empty == "diagonal" else "nan"
  device_metrics = distances_on == "device"
  step = distributed.CompiledOnAllProcesses(
    eval_step_for(
      config.model,
      mesh,
      device_metrics=device_metrics,
      distances=True,
      one_empty=one_empty,
      tta=tta,
    ),
    "eval_step",
  )
  record, case_ids = collect_split(
    step, variable_sets, config, name, mesh, resolution=resolution,
    device_metrics=device_metrics, one_empty=one_empty, post=post_steps,
  )  # fmt: skip
  results = metrics.compute_results({k: v for k, v in record.items() if k != "index"}, options)

  result: dict[str, Any] = {
    "split": name,
    "resolution": results.resolution,
    "n_total": len(record["index"]),
  }
  result.update(results.values)
  result["conventions"] = {
    name: {
      "definition": c.definition,
      "empty_policy": c.empty_policy,
      "per_case_column": c.per_case_column,
    }
    for name, c in results.conventions.items()
  }
  result["cases"] = {
    name: {"n_used": c.n_used, "n_total": c.n_total, "n_excluded": c.n_excluded}
    for name, c in results.cases.items()
  }
  result["n_used"] = {name: c.n_used for name, c in results.cases.items()}
  if jax.process_index() == 0:
    out_dir = paths.as_path(out_dir or layout.eval_dir(workdirs[0]))
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = layout.eval_suffix(resolution, tta, bool(post_steps))
    columns = _case_columns(record)
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["case_id", *columns])
    writer.writerows(
      [case_ids[int(i)]] + [columns[k][n] for k in columns] for n, i in enumerate(record["index"])
    )
    paths.write_text_atomic(layout.eval_cases(out_dir, split, suffix), table.getvalue())
    # The JSON last: it marks a finished evaluation (`sweep` and `report` trust it, CSV included).
    paths.write_text_atomic(layout.eval_json(out_dir, split, suffix), json.dumps(result, indent=2))
  return result
