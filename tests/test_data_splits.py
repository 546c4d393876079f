"""Split protocols: the MedISeg fold arithmetic, hold-outs, seeded and grouped 7:1:2 splits."""

import random

import pytest

from sgdnet_jax.data import splits

ISIC2018_IDS = [f"ISIC_{i:07d}" for i in range(2594)]


def test_medi_seg_fold_arithmetic_on_2594_cases():
  folds = splits.medi_seg_folds(ISIC2018_IDS)
  assert len(folds) == 5
  for k, fold in enumerate(folds):
    assert (len(fold["test"]), len(fold["val"]), len(fold["train"])) == (518, 415, 1661)
    assert fold["test"] == ISIC2018_IDS[518 * k : 518 * (k + 1)]
    rest = ISIC2018_IDS[: 518 * k] + ISIC2018_IDS[518 * (k + 1) :]
    assert fold["val"] == rest[:415] and fold["train"] == rest[415:]
    assert sorted(fold["train"] + fold["val"] + fold["test"]) == ISIC2018_IDS
  tested = [case for fold in folds for case in fold["test"]]
  assert len(tested) == len(set(tested)) == 2590
  assert set(ISIC2018_IDS[2590:]).isdisjoint(tested)


def test_isic2018_protocol_orders_by_mask_file_name():
  cases = [
    {
      "case_id": f"c{i}",
      "subset": "train",
      "mask": f"GT/ISIC_{9 - i:07d}_segmentation.png",
      "group": "",
    }
    for i in range(10)
  ]
  protocol = splits.build_protocols("isic2018", cases, seed=0)["medi_seg_5fold"]
  assert protocol["folds"][0]["test"] == ["c9", "c8"]  # int(0.2 * 10) = 2 smallest mask names
  assert protocol["folds"][4]["test"] == ["c1", "c0"]


def test_shuffled_folds_are_seeded_permutations_with_the_same_arithmetic():
  cases = [
    {"case_id": i, "subset": "train", "mask": f"{i}_segmentation.png", "group": ""}
    for i in ISIC2018_IDS
  ]
  first = splits.build_protocols("isic2018", cases, seed=1)["shuffled_5fold"]
  again = splits.build_protocols("isic2018", cases, seed=1)["shuffled_5fold"]
  other = splits.build_protocols("isic2018", cases, seed=2)["shuffled_5fold"]
  assert first == again and first["folds"] != other["folds"] and first["seed"] == 1
  assert [len(first["folds"][0][s]) for s in ("train", "val", "test")] == [1661, 415, 518]


def test_isic2016_all900_trains_on_every_image_and_holdout20_validates_on_the_last_20():
  train = [f"ISIC_{i:07d}" for i in range(900)]
  test = [f"ISIC_{i:07d}" for i in range(1000, 1379)]
  shuffled = random.Random(0).sample(train, len(train))
  cases = [{"case_id": c, "subset": "train", "mask": "", "group": ""} for c in shuffled] + [
    {"case_id": c, "subset": "test", "mask": "", "group": ""} for c in test
  ]
  protocols = splits.build_protocols("isic2016", cases, seed=0)
  fold = protocols["holdout20"]["folds"][0]
  assert fold["train"] == train[:720] and fold["val"] == train[720:] and fold["test"] == test
  # Our reading of the paper's protocol (the default; it gives no count): all 900 train,
  # nothing validates.
  fold = protocols["all900"]["folds"][0]
  assert fold["train"] == train and fold["val"] == [] and fold["test"] == test
  assert splits.DEFAULT_PROTOCOL["isic2016"] == "all900"


def test_ungrouped_712_counts_for_conic():
  ids = [f"{i:05d}" for i in range(4981)]
  split = splits.ratio_split(ids, seed=0)
  assert [len(split[s]) for s in ("train", "val", "test")] == [3486, 498, 997]
  assert sorted(split["train"] + split["val"] + split["test"]) == ids
  assert split == splits.ratio_split(ids, seed=0) != splits.ratio_split(ids, seed=1)


def test_grouped_712_keeps_each_source_image_on_one_side():
  rng = random.Random(0)
  ids, groups = [], []
  for g in range(60):
    for p in range(rng.randint(5, 40)):
      ids.append(f"{g}-{p}")
      groups.append(f"source_{g}")
  split = splits.grouped_ratio_split(ids, groups, seed=3)
  side = {}
  for name, members in split.items():
    for case in members:
      assert side.setdefault(case.split("-")[0], name) == name
  assert sorted(split["train"] + split["val"] + split["test"]) == sorted(ids)
  largest = 40
  assert abs(len(split["train"]) - 0.7 * len(ids)) <= largest
  assert abs(len(split["val"]) - 0.1 * len(ids)) <= 2 * largest
  assert split == splits.grouped_ratio_split(ids, groups, seed=3)


def test_protocols_round_trip_through_json(tmp_path):
  cases = [
    {"case_id": f"p{i}", "subset": "full", "mask": "", "group": f"g{i % 3}"} for i in range(20)
  ]
  protocols = splits.build_protocols("conic", cases, seed=5)
  assert sorted(protocols) == ["all", "grouped_712", "random_712"]
  splits.write_protocols(tmp_path, protocols)
  assert splits.read_protocol(tmp_path, "grouped_712") == protocols["grouped_712"]
  assert protocols["all"]["folds"] == [
    {"train": [], "val": [], "test": [c["case_id"] for c in cases]}
  ]
  with pytest.raises(
    FileNotFoundError,
    match=r"no split protocol 'nope'; available: \['all', "
    r"'grouped_712', 'random_712'\]",
  ):
    splits.read_protocol(tmp_path, "nope")
