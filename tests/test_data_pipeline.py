"""grain pipelines: batches, epochs, iterator state, host sharding, evaluation padding, augment."""

import numpy as np
import pytest

from configs import default
from sgdnet_jax.data import augment, pipeline, prepare
from sgdnet_jax.data import dataset as dataset_lib
from tests import replicas, tolerances

SIZE = 32
NUM_CASES = 20  # seeded_712 -> 14 train / 2 val / 4 test


@pytest.fixture(scope="module")
def data_config(tmp_path_factory):
  root = tmp_path_factory.mktemp("pipeline")
  source = replicas.write_folder(root / "source", num_cases=NUM_CASES)
  prepare.prepare("folder", source, root / "prepared", size=SIZE, progress=False)
  ph2 = replicas.write_ph2(root / "ph2_source", ids=(2, 3, 4, 5, 6))
  prepare.prepare("ph2", ph2, root / "ph2", size=SIZE, progress=False)
  config = default.get_config().data
  config.dir = str(root / "prepared")
  config.image_size = SIZE
  config.read_threads = 2
  config.extra_eval.ph2 = dict(dir=str(root / "ph2"), protocol="all", split="test")
  return config


def _stored_images(config, split):
  """Case id -> the stored uint8 image, for identifying batch rows."""
  dataset, case_ids = pipeline.resolve_split(config, split)
  return {c: dataset.record(dataset.case(c))["image"] for c in case_ids}


def _identify(batch_images, stored):
  """Case ids of normalised batch rows, by matching the stored images."""
  ids = []
  for image in batch_images:
    raw = np.rint(image * augment.IMAGENET_STD + augment.IMAGENET_MEAN).astype(np.uint8)
    ids.append(next(c for c, s in stored.items() if np.array_equal(s, raw)))
  return ids


def test_train_batches_are_normalised_numpy(data_config):
  it = pipeline.make_train_iterator(data_config, 4, seed=0, process_index=0, process_count=1)
  batch = next(it)
  assert batch["image"].shape == (4, SIZE, SIZE, 3) and batch["image"].dtype == np.float32
  assert batch["mask"].shape == (4, SIZE, SIZE) and batch["mask"].dtype == np.uint8
  assert set(np.unique(batch["mask"])) <= {0, 1}
  stored = _stored_images(data_config, "train")
  assert len(set(_identify(batch["image"], stored))) == 4


def test_every_epoch_is_a_new_permutation_of_the_train_split(data_config):
  stored = _stored_images(data_config, "train")
  assert len(stored) == 14
  it = pipeline.make_train_iterator(data_config, 2, seed=0, process_index=0, process_count=1)
  order = [c for _ in range(14) for c in _identify(next(it)["image"], stored)]
  first, second = order[:14], order[14:]
  assert sorted(first) == sorted(second) == sorted(stored)
  assert first != second
  again = pipeline.make_train_iterator(data_config, 2, seed=0, process_index=0, process_count=1)
  assert _identify(next(again)["image"], stored) == first[:2]
  other = pipeline.make_train_iterator(data_config, 14, seed=1, process_index=0, process_count=1)
  assert _identify(next(other)["image"], stored) != first


def test_iterator_state_round_trip(data_config):
  data_config = data_config.copy_and_resolve_references()
  data_config.augment.hflip = data_config.augment.color_jitter = True
  it = pipeline.make_train_iterator(data_config, 4, seed=3, process_index=0, process_count=1)
  for _ in range(5):  # crosses an epoch boundary (14 cases)
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  restored = pipeline.make_train_iterator(data_config, 4, seed=3, process_index=0, process_count=1)
  restored.set_state(state)
  for want in expected:
    got = next(restored)
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["mask"], want["mask"])


def test_two_hosts_see_disjoint_shards_that_make_the_global_batches(data_config):
  stored = _stored_images(data_config, "train")
  single = pipeline.make_train_iterator(data_config, 6, seed=0, process_index=0, process_count=1)
  hosts = [
    pipeline.make_train_iterator(data_config, 6, seed=0, process_index=p, process_count=2)
    for p in range(2)
  ]
  seen = [[], []]
  for _ in range(2):  # 12 of the 14 cases of the first epoch
    global_ids = _identify(next(single)["image"], stored)
    host_ids = [_identify(next(h)["image"], stored) for h in hosts]
    assert len(host_ids[0]) == len(host_ids[1]) == 3
    assert sorted(host_ids[0] + host_ids[1]) == sorted(global_ids)
    for p in range(2):
      seen[p] += host_ids[p]
  assert not set(seen[0]) & set(seen[1])


@pytest.mark.parametrize("process_count,global_batch", [(1, 3), (2, 4), (3, 3)])
def test_eval_covers_every_case_once_across_hosts_with_padding(
  data_config, process_count, global_batch
):
  dataset, case_ids = pipeline.resolve_split(data_config, "test")
  assert len(case_ids) == 4
  steps = -(-len(case_ids) // global_batch)
  seen = []
  for p in range(process_count):
    batches = list(
      pipeline.make_eval_iterator(
        data_config, "test", global_batch, process_index=p, process_count=process_count
      )
    )
    assert len(batches) == steps
    for batch in batches:
      assert batch["image"].shape == (global_batch // process_count, SIZE, SIZE, 3)
      valid = batch["valid"]
      assert not batch["image"][~valid].any() and (batch["index"][~valid] == -1).all()
      seen += list(batch["case_id"][valid])
      for case_id, size, mask in zip(
        batch["case_id"][valid], batch["original_size"][valid], batch["mask"][valid]
      ):
        case = dataset.case(case_id)
        assert tuple(size) == (case.height, case.width)
        np.testing.assert_array_equal(mask, dataset.record(case)["mask"])
  assert sorted(seen) == sorted(case_ids)


def test_extra_eval_reads_another_prepared_dataset(data_config):
  batches = list(pipeline.make_eval_iterator(data_config, "ph2", 4, 0, 1))
  ids = [c for b in batches for c in b["case_id"][b["valid"]]]
  assert ids == ["IMD002", "IMD003", "IMD004", "IMD005", "IMD006"]
  dataset, _ = pipeline.resolve_split(data_config, "ph2")
  assert dataset.native_mask("IMD004").shape == (
    batches[0]["original_size"][2][0],
    batches[0]["original_size"][2][1],
  )
  assert pipeline.split_size(data_config, "ph2") == 5


def test_conic_eval_batches_carry_instances(tmp_path):
  source = replicas.write_conic(tmp_path / "source", num_patches=12, size=SIZE)
  prepare.prepare("conic", source, tmp_path / "out", size=SIZE, progress=False)
  config = default.get_config().data
  config.dir, config.image_size, config.protocol = str(tmp_path / "out"), SIZE, "all"
  batch = next(pipeline.make_eval_iterator(config, "test", 12, 0, 1))
  labels = np.load(source / "labels.npy")
  np.testing.assert_array_equal(batch["instances"], labels[..., 0])


def test_configuration_errors_are_clear(data_config):
  wrong_size = data_config.copy_and_resolve_references()
  wrong_size.image_size = 64
  with pytest.raises(ValueError, match="prepared at 32x32 but data.image_size is 64"):
    pipeline.make_train_iterator(wrong_size, 4, 0, 0, 1)
  with pytest.raises(ValueError, match="positive multiple of the process count 2"):
    pipeline.make_train_iterator(data_config, 3, 0, 0, 2)
  with pytest.raises(ValueError, match="fewer than one global batch"):
    pipeline.make_train_iterator(data_config, 16, 0, 0, 1)
  all_protocol = data_config.copy_and_resolve_references()
  all_protocol.protocol = "all"
  with pytest.raises(ValueError, match=r"split 'val' of .* is empty in the chosen protocol"):
    pipeline.make_eval_iterator(all_protocol, "val", 4, 0, 1)
  with pytest.raises(ValueError, match="fold 1: protocol 'seeded_712'"):
    folded = data_config.copy_and_resolve_references()
    folded.fold = 1
    pipeline.split_size(folded, "train")
  with pytest.raises(FileNotFoundError, match="not a prepared dataset"):
    dataset_lib.PreparedDataset(data_config.extra_eval.ph2.dir + "/tfds")


def _coded_example(size=SIZE):
  """An example whose image encodes each pixel's position and whose mask is an L shape."""
  yy, xx = np.mgrid[0:size, 0:size]
  image = np.stack([yy * 7 % 256, xx * 7 % 256, (yy + xx) % 256], -1).astype(np.uint8)
  mask = ((yy < size // 2) & (xx < size // 4)).astype(np.uint8)
  return {"image": image, "mask": mask}


def test_augmentations_are_off_by_default_and_move_image_and_mask_together():
  example = _coded_example()
  rng = np.random.default_rng(0)
  assert not augment.Augment(default.get_config().data.augment).active
  config = default.get_config().data.augment
  config.hflip = config.vflip = config.rot90 = True
  flip = augment.Augment(config)
  for _ in range(8):
    out = flip(example, rng)
    # The mask still marks the pixels whose coded colour it marked before.
    np.testing.assert_array_equal(
      sorted(map(tuple, out["image"][out["mask"] == 1])),
      sorted(map(tuple, example["image"][example["mask"] == 1])),
    )


def test_shift_scale_rotate_identity_shift_and_quarter_turn():
  example = _coded_example()
  image, mask = augment.shift_scale_rotate(example["image"], example["mask"], (0.0, 0.0), 1.0, 0.0)
  np.testing.assert_array_equal(image, example["image"])
  np.testing.assert_array_equal(mask, example["mask"])
  image, mask = augment.shift_scale_rotate(example["image"], example["mask"], (3.0, 5.0), 1.0, 0.0)
  np.testing.assert_array_equal(image[3:, 5:], example["image"][:-3, :-5])
  np.testing.assert_array_equal(mask[3:, 5:], example["mask"][:-3, :-5])
  np.testing.assert_array_equal(image[:3, 5:], example["image"][3:0:-1, :-5])  # reflect-101
  image, mask = augment.shift_scale_rotate(example["image"], example["mask"], (0.0, 0.0), 1.0, 90.0)
  np.testing.assert_array_equal(mask, np.rot90(example["mask"]))
  np.testing.assert_allclose(
    image.astype(int), np.rot90(example["image"]).astype(int), atol=1
  )  # bilinear rounding


def test_full_augmentation_keeps_binary_masks_and_is_deterministic():
  config = default.get_config().data.augment
  config.shift_scale_rotate, config.ssr_prob, config.color_jitter = True, 1.0, True
  aug = augment.Augment(config)
  example = _coded_example()
  first = aug(example, np.random.default_rng(5))
  second = aug(example, np.random.default_rng(5))
  np.testing.assert_array_equal(first["image"], second["image"])
  assert set(np.unique(first["mask"])) <= {0, 1}
  assert first["image"].min() >= 0 and first["image"].max() <= 255
  assert not np.array_equal(first["mask"], example["mask"])


def test_normalize_uses_imagenet_statistics():
  pixel = np.array([[[124, 116, 104]]], np.uint8)
  # float32: the constants x 255 and the subtraction round within eps of 255, the division
  # within eps of the result; in units of the smallest std (0.224 x 255): 3 eps / 0.224.
  np.testing.assert_allclose(
    augment.normalize(pixel)[0, 0],
    (pixel[0, 0] / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225],
    rtol=0,
    atol=tolerances.rounding(np.float32, 3, 1 / 0.224),
  )


def test_hosts_default_to_jax_process_index_and_count(data_config):
  implicit = next(pipeline.make_train_iterator(data_config, 4, seed=0))
  explicit = next(
    pipeline.make_train_iterator(data_config, 4, seed=0, process_index=0, process_count=1)
  )
  np.testing.assert_array_equal(implicit["image"], explicit["image"])


@pytest.mark.slow
def test_worker_processes_give_the_same_batches_and_restore_state(data_config):
  threads = pipeline.make_train_iterator(data_config, 2, seed=4, process_index=0, process_count=1)
  workers_config = data_config.copy_and_resolve_references()
  workers_config.num_workers = 2
  workers = pipeline.make_train_iterator(
    workers_config, 2, seed=4, process_index=0, process_count=1
  )
  for _ in range(3):
    np.testing.assert_array_equal(next(workers)["image"], next(threads)["image"])
  state = workers.get_state()
  expected = next(workers)["mask"]
  workers.close()
  restored = pipeline.make_train_iterator(
    workers_config, 2, seed=4, process_index=0, process_count=1
  )
  restored.set_state(state)
  np.testing.assert_array_equal(next(restored)["mask"], expected)
  restored.close()
