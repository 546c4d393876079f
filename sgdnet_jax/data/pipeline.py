"""grain input pipelines over a prepared dataset: per-host numpy batches.

Training: a seeded shuffle of the split, reshuffled every epoch, repeated forever; global
position i of that stream goes to host i % process_count, so the global batches (and their
augmentations, seeded by stream position) depend on neither the number of hosts nor that of
threads or worker processes. Batches may span an epoch boundary; an epoch is len(train split) /
global batch steps. The iterator's `get_state()` / `set_state()` checkpoint and restore the
position exactly (restore with the same num_workers: the state's form depends on it).

Evaluation: every case of the split exactly once across hosts (host p takes positions p, p + P,
...). Every host yields ceil(n / global batch) batches; the last ones are padded with
examples whose `valid` is False (zeros elsewhere, case_id '', index -1).
"""

import math
from collections.abc import Iterator

import grain
import jax
import ml_collections
import numpy as np
from absl import flags

from sgdnet_jax.core import errors
from sgdnet_jax.data import augment
from sgdnet_jax.data import dataset as dataset_lib


def _hosts(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} outside 0..{process_count - 1}")
  return process_index, process_count


def _per_host(global_batch_size: int, process_count: int) -> int:
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(
      f"global batch size {global_batch_size}: expected a positive multiple of "
      f"the process count {process_count}"
    )
  return global_batch_size // process_count


def image_size(data_config: ml_collections.ConfigDict) -> int:
  """The training size: `data.image_size`, or when it is 0 the size `data.dir` was prepared at.

  One source of truth: `prepare --size` writes the size into the prepared dataset, and a config
  that leaves `image_size` at 0 trains at it. An explicit size must equal it (`_open` checks).
  """
  if data_config.image_size:
    return int(data_config.image_size)
  if not data_config.dir:
    raise errors.ConfigError(
      "data.image_size is 0 (the prepared size) but data.dir is empty; give the prepared "
      "dataset folder (--config.data.dir) or an explicit --config.data.image_size"
    )
  return dataset_lib.PreparedDataset(data_config.dir).image_size


def _open(data_config: ml_collections.ConfigDict, directory: str) -> dataset_lib.PreparedDataset:
  if not directory:
    raise errors.ConfigError(
      "config.data.dir is empty: give the prepared dataset folder (--config.data.dir, see "
      "`prepare`)"
    )
  dataset = dataset_lib.PreparedDataset(directory)
  expected = image_size(data_config)
  if dataset.image_size != expected:
    given = (
      f"data.image_size is {expected}"
      if data_config.image_size
      else (f"data.dir {data_config.dir} was prepared at {expected}")
    )
    raise errors.ConfigError(
      f"{directory} was prepared at {dataset.image_size}x{dataset.image_size} but {given}; "
      f"prepare it again with --size {expected}, or set --config.data.image_size=0 to train at "
      f"the prepared size"
    )
  return dataset


def resolve_split(
  data_config: ml_collections.ConfigDict, split: str
) -> tuple[dataset_lib.PreparedDataset, list[str]]:
  """The prepared dataset and case ids of `split`: a protocol split name or an extra_eval name."""
  if split in data_config.extra_eval:
    if split in (data_config.train_split, data_config.val_split, data_config.test_split):
      raise ValueError(f"data.extra_eval.{split} shadows a split name; rename it")
    extra = data_config.extra_eval[split]
    dataset = _open(data_config, extra.dir)
    return dataset, dataset.split(
      extra.get("protocol", ""), extra.get("fold", 0), extra.get("split", "test")
    )
  dataset = _open(data_config, data_config.dir)
  return dataset, dataset.split(data_config.protocol, data_config.fold, split)


def _read_options(data_config: ml_collections.ConfigDict) -> grain.ReadOptions:
  return grain.ReadOptions(
    num_threads=data_config.read_threads, prefetch_buffer_size=data_config.prefetch
  )


class _TrainExample:
  """Record -> {'image': float32 normalised, 'mask': uint8 0/1}."""

  def __call__(self, record: dict) -> dict:
    return {"image": augment.normalize(record["image"]), "mask": np.asarray(record["mask"])}


def make_train_iterator(
  data_config: ml_collections.ConfigDict,
  global_batch_size: int,
  seed: int,
  process_index: int | None = None,
  process_count: int | None = None,
) -> grain.DatasetIterator:
  """Endless per-host training batches {'image': (b,S,S,3) float32, 'mask': (b,S,S) uint8}.

  b = global_batch_size / process_count; hosts default to jax.process_index()/process_count().
  """
  process_index, process_count = _hosts(process_index, process_count)
  per_host = _per_host(global_batch_size, process_count)
  dataset, case_ids = resolve_split(data_config, data_config.train_split)
  if len(case_ids) < global_batch_size:
    raise ValueError(
      f"split {data_config.train_split!r} of {dataset.directory} has "
      f"{len(case_ids)} cases, fewer than one global batch ({global_batch_size})"
    )
  ds = grain.MapDataset.source(dataset_lib.SplitSource(dataset, case_ids))
  ds = ds.seed(seed).shuffle().repeat()
  augmenter = augment.Augment(data_config.augment)
  if augmenter.active:
    ds = ds.random_map(augmenter)
  ds = ds.map(_TrainExample())[process_index::process_count]
  # Batching before to_iter_dataset makes a batch the unit of work for threads and worker
  # processes alike, so the batches do not depend on read_threads or num_workers.
  ds = ds.batch(per_host, drop_remainder=True)
  it_ds = ds.to_iter_dataset(_read_options(data_config))
  if data_config.num_workers > 0:
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; argparse CLIs never parse
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_config.num_workers))
  return iter(it_ds)


class _EvalExample:
  """Position in the split (or -1 for padding) -> a full evaluation example."""

  def __init__(self, source: dataset_lib.SplitSource):
    self.source = source
    size = source.dataset.image_size
    self.padding = {
      "image": np.zeros((size, size, 3), np.float32),
      "mask": np.zeros((size, size), np.uint8),
      "valid": np.bool_(False),
      "index": np.int32(-1),
      "case_id": np.str_(""),
      "original_size": np.zeros(2, np.int32),
    }
    if source.dataset.has_instances:
      self.padding["instances"] = np.zeros((size, size), np.int32)

  def __call__(self, position: int) -> dict:
    if position < 0:
      return self.padding
    case = self.source.cases[position]
    record = self.source[position]
    example = {
      "image": augment.normalize(record["image"]),
      "mask": np.asarray(record["mask"]),
      "valid": np.bool_(True),
      "index": np.int32(position),
      "case_id": np.str_(case.case_id),
      "original_size": np.array([case.height, case.width], np.int32),
    }
    if "instances" in self.padding:
      example["instances"] = np.asarray(record["instances"])
    return example


def make_eval_iterator(
  data_config: ml_collections.ConfigDict,
  split: str,
  global_batch_size: int,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Iterator[dict]:
  """Per-host evaluation batches covering `split` exactly once across hosts.

  `split` is data_config.val_split / test_split / train_split or a key of
  data_config.extra_eval. Batches hold image (b,S,S,3) float32, mask (b,S,S) uint8, valid (b,)
  bool, index (b,) int32 (position in the split), case_id (b,) str, original_size (b,2) int32
  (height, width), and for CoNIC instances (b,S,S) int32. Every host yields
  ceil(n / global_batch_size) batches.
  """
  process_index, process_count = _hosts(process_index, process_count)
  per_host = _per_host(global_batch_size, process_count)
  dataset, case_ids = resolve_split(data_config, split)
  if not case_ids:
    raise ValueError(
      f"split {split!r} of {dataset.directory} is empty in the chosen protocol "
      "(data.protocol, or protocol of data.extra_eval)"
    )
  steps = math.ceil(len(case_ids) / global_batch_size)
  positions = list(range(process_index, len(case_ids), process_count))
  positions += [-1] * (steps * per_host - len(positions))
  ds = grain.MapDataset.source(positions).map(
    _EvalExample(dataset_lib.SplitSource(dataset, case_ids))
  )
  return iter(ds.batch(per_host).to_iter_dataset(_read_options(data_config)))


def split_size(data_config: ml_collections.ConfigDict, split: str) -> int:
  """Number of cases in `split` (e.g. to derive steps per epoch)."""
  return len(resolve_split(data_config, split)[1])
