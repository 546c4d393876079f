"""Split protocols (docs/data.md), persisted as JSON beside the prepared data.

A protocol is a JSON file `splits/<name>.json`:

    {"name": "medi_seg_5fold", "dataset": "isic2018", "description": "...", "seed": null,
     "folds": [{"train": [case ids], "val": [case ids], "test": [case ids]}, ...]}

Protocols without folds have one entry in "folds". Case ids refer to the prepared dataset's
`cases.json`. The functions here are pure: they take case ids (in the order a protocol needs)
and return the splits.
"""

import json
import math
import os
import pathlib
import posixpath
from collections.abc import Sequence

import numpy as np

Split = dict[str, list[str]]  # split name ('train', 'val', 'test') -> case ids
SPLIT_NAMES = ("train", "val", "test")

DEFAULT_PROTOCOL = {
  "isic2018": "medi_seg_5fold",
  "isic2016": "all900",  # every training image trains: our reading (docs/fidelity.md)
  "ph2": "all",
  "conic": "grouped_712",
  "folder": "seeded_712",
  "synthetic": "seeded_712",
}


def medi_seg_folds(ordered_ids: Sequence[str], num_folds: int = 5) -> list[Split]:
  """MedISeg / CTO k-fold: fold k tests ids [t*k, t*(k+1)) with t = int(0.2 * n).

  Of the remaining ids, in order, the first int(0.2 * len) validate and the rest train. For
  2,594 ISIC 2018 cases: 518 test, 415 val, 1,661 train; the last 4 ids are never tested.
  """
  ids = list(ordered_ids)
  test_count = int(0.2 * len(ids))
  folds = []
  for k in range(num_folds):
    test = ids[test_count * k : test_count * (k + 1)]
    rest = ids[: test_count * k] + ids[test_count * (k + 1) :]
    val_count = int(0.2 * len(rest))
    folds.append({"train": rest[val_count:], "val": rest[:val_count], "test": test})
  return folds


def holdout_tail(ordered_ids: Sequence[str], fraction: float = 0.2) -> Split:
  """The last int(fraction * n) ids validate, the others train (no test)."""
  ids = list(ordered_ids)
  val_count = int(fraction * len(ids))
  return {"train": ids[: len(ids) - val_count], "val": ids[len(ids) - val_count :], "test": []}


def ratio_split(ids: Sequence[str], seed: int, ratios=(0.7, 0.1, 0.2)) -> Split:
  """Seeded permutation; floor(r_train * n) train, floor(r_val * n) val, the rest test."""
  order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
  train_count = math.floor(ratios[0] * len(ids))
  val_count = math.floor(ratios[1] * len(ids))
  return {
    "train": order[:train_count],
    "val": order[train_count : train_count + val_count],
    "test": order[train_count + val_count :],
  }


def grouped_ratio_split(
  ids: Sequence[str], groups: Sequence[str], seed: int, ratios=(0.7, 0.1, 0.2)
) -> Split:
  """Seeded permutation of the groups; whole groups go to train/val/test by patch count.

  Groups are taken in permuted order; a group joins the split in which its first id falls when
  ids are counted off in that order against the boundaries round(r_train * n) and
  round((r_train + r_val) * n). All ids of one group thus land in one split.
  """
  members: dict[str, list[str]] = {}
  for case_id, group in zip(ids, groups):
    members.setdefault(group, []).append(case_id)
  names = sorted(members)
  order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
  bounds = (round(ratios[0] * len(ids)), round((ratios[0] + ratios[1]) * len(ids)))
  split: Split = {name: [] for name in SPLIT_NAMES}
  position = 0
  for group in order:
    name = "train" if position < bounds[0] else "val" if position < bounds[1] else "test"
    split[name] += members[group]
    position += len(members[group])
  return split


def _protocol(
  name: str, dataset: str, description: str, folds: list[Split], seed: int | None = None
) -> dict:
  return {
    "name": name,
    "dataset": dataset,
    "description": description,
    "seed": seed,
    "folds": folds,
  }


def build_protocols(dataset: str, cases: Sequence[dict], seed: int) -> dict[str, dict]:
  """All protocols for a prepared dataset, by name.

  `cases` are the entries of `cases.json` (keys case_id, subset, mask, group; subsets train,
  validation, test, full); `seed` drives the seeded alternatives and is recorded in their files.
  """
  by_subset: dict[str, list[dict]] = {}
  for case in cases:
    by_subset.setdefault(case["subset"], []).append(case)
  ids = lambda subset: [c["case_id"] for c in by_subset.get(subset, [])]
  protocols = {}
  if dataset == "isic2018":
    by_mask_name = sorted(by_subset["train"], key=lambda c: posixpath.basename(c["mask"]))
    ordered = [c["case_id"] for c in by_mask_name]
    protocols["medi_seg_5fold"] = _protocol(
      "medi_seg_5fold",
      dataset,
      "MedISeg/CTO 5-fold on the training set sorted by mask file "
      "name: fold k tests [t*k, t*(k+1)), t = int(0.2 n); of the rest the first 20% validate",
      medi_seg_folds(ordered),
    )
    shuffled = [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))]
    protocols["shuffled_5fold"] = _protocol(
      "shuffled_5fold",
      dataset,
      "The MedISeg fold arithmetic on a seeded permutation of the training set",
      medi_seg_folds(shuffled),
      seed,
    )
    if ids("validation") and ids("test"):
      protocols["official"] = _protocol(
        "official",
        dataset,
        "The challenge's own partition: training / validation / test",
        [{"train": ids("train"), "val": ids("validation"), "test": ids("test")}],
      )
  elif dataset == "isic2016":
    holdout = holdout_tail(sorted(ids("train")))
    holdout["test"] = ids("test")
    protocols["holdout20"] = _protocol(
      "holdout20",
      dataset,
      "Training set sorted by name, last 20% validate; test = the "
      "ISIC 2016 test set (PH2 is evaluated from its own prepared dataset)",
      [holdout],
    )
    protocols["all900"] = _protocol(
      "all900",
      dataset,
      "Our reading of the paper's protocol (it gives no count): train on every training "
      "image (900 in the release), no "
      "validation (train with eval_every_epochs=0; the last epoch's weights are evaluated); "
      "test = the ISIC 2016 test set",
      [{"train": sorted(ids("train")), "val": [], "test": ids("test")}],
    )
  elif dataset == "conic":
    protocols["grouped_712"] = _protocol(
      "grouped_712",
      dataset,
      "Seeded permutation of source images (patch_info), whole "
      "groups assigned to train/val/test 7:1:2 by patch count",
      [grouped_ratio_split(ids("full"), [c["group"] for c in by_subset["full"]], seed)],
      seed,
    )
    protocols["random_712"] = _protocol(
      "random_712",
      dataset,
      "Seeded permutation of patches, floor(0.7n)/floor(0.1n)/rest",
      [ratio_split(ids("full"), seed)],
      seed,
    )
  elif dataset in ("folder", "synthetic"):
    protocols["seeded_712"] = _protocol(
      "seeded_712",
      dataset,
      "Seeded permutation, floor(0.7n) train / floor(0.1n) val / rest test",
      [ratio_split(ids("full"), seed)],
      seed,
    )
  if "full" in by_subset:
    protocols["all"] = _protocol(
      "all",
      dataset,
      "Every case is a test case (evaluation only)",
      [{"train": [], "val": [], "test": ids("full")}],
    )
  return protocols


def write_protocols(directory: os.PathLike, protocols: dict[str, dict]) -> None:
  folder = pathlib.Path(directory)
  folder.mkdir(parents=True, exist_ok=True)
  for name, protocol in protocols.items():
    (folder / f"{name}.json").write_text(json.dumps(protocol, indent=1) + "\n")


def read_protocol(directory: os.PathLike, name: str) -> dict:
  path = pathlib.Path(directory) / f"{name}.json"
  if not path.is_file():
    known = sorted(p.stem for p in pathlib.Path(directory).glob("*.json"))
    raise FileNotFoundError(f"{path}: no split protocol {name!r}; available: {known}")
  return json.loads(path.read_text())
