"""Read access to a prepared dataset (the output of `prepare`): cases, splits, records, masks."""

import dataclasses
import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from sgdnet_jax.core import paths
from sgdnet_jax.data import images, remote, splits


@dataclasses.dataclass(frozen=True)
class CaseInfo:
  """One prepared case. `image`/`mask` are the original files relative to `info['source']`."""

  case_id: str
  subset: str
  index: int  # record within the subset
  image: str
  mask: str
  height: int  # original size
  width: int
  group: str


class PreparedDataset:
  """A prepared dataset folder. Records are opened lazily, so instances pickle cheaply.

  `directory` may be any path a workdir may be: a URL (`gs://...`) is read from its staged
  local copy (`remote.staged_copy`), made once per host and content.
  """

  def __init__(self, directory: str | os.PathLike):
    if not paths.is_local(directory):
      directory = remote.staged_copy(directory)
    self.directory = pathlib.Path(directory)
    info_path = self.directory / "dataset.json"
    if not info_path.is_file():
      raise FileNotFoundError(
        f"{self.directory}: not a prepared dataset (no dataset.json); "
        "create it with `python -m sgdnet_jax.main prepare`"
      )
    self.info = json.loads(info_path.read_text())
    cases = json.loads((self.directory / "cases.json").read_text())
    self.cases: list[CaseInfo] = [CaseInfo(**case) for case in cases]
    self._by_id: dict[str, CaseInfo] = {case.case_id: case for case in self.cases}
    self._sources: dict[str, object] = {}

  @property
  def image_size(self) -> int:
    return self.info["image_size"]

  @property
  def has_instances(self) -> bool:
    return self.info["dataset"] == "conic"

  def __getstate__(self):
    return {**self.__dict__, "_sources": {}}

  def case(self, case_id: str) -> CaseInfo:
    if case_id not in self._by_id:
      raise KeyError(f"{self.directory}: no case {case_id!r}")
    return self._by_id[case_id]

  def protocol(self, name: str = "") -> dict:
    """The split protocol `name` ('' = the dataset's default)."""
    return splits.read_protocol(self.directory / "splits", name or self.info["default_protocol"])

  def split(self, protocol: str, fold: int, split: str) -> list[str]:
    """Case ids of split `split` ('train', 'val', 'test') of fold `fold` of `protocol`."""
    spec = self.protocol(protocol)
    folds = spec["folds"]
    if not 0 <= fold < len(folds):
      raise ValueError(
        f"fold {fold}: protocol {spec['name']!r} of {self.directory} has folds 0..{len(folds) - 1}"
      )
    if split not in folds[fold]:
      raise ValueError(f"split {split!r}: protocol {spec['name']!r} has {sorted(folds[fold])}")
    return folds[fold][split]

  def _source(self, subset: str):
    if subset not in self._sources:
      builder = tfds.builder_from_directory(self.directory / self.info["records"])
      self._sources[subset] = builder.as_data_source(subset)
    return self._sources[subset]

  def record(self, case: CaseInfo) -> dict:
    """The stored record: image (S,S,3) uint8, mask (S,S) uint8, case_id, native_mask_png, ..."""
    return self._source(case.subset)[case.index]

  def native_mask(self, case_id: str) -> np.ndarray:
    """The case's mask at its original resolution, (height, width) bool."""
    return images.decode_mask(self.record(self.case(case_id))["native_mask_png"])


class SplitSource:
  """A grain random-access source over the records of a list of case ids."""

  def __init__(self, dataset: PreparedDataset, case_ids: Sequence[str]):
    self.dataset = dataset
    self.cases = [dataset.case(case_id) for case_id in case_ids]

  def __len__(self) -> int:
    return len(self.cases)

  def __getitem__(self, index: int) -> dict:
    return self.dataset.record(self.cases[index])
