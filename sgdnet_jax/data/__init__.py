"""Datasets as users download them, prepared once, streamed with grain.

Nothing is imported here, so that `prepare` does not pay for grain/jax; import the modules.

Preparation (once per dataset; no TensorFlow needed, now or later):

    python -m sgdnet_jax.main prepare --dataset {isic2016,isic2018,ph2,conic,folder} \
        --source DIR --out DIR [--size 256] [--no-strict] [--overwrite] [--split-seed 0]
    python -m sgdnet_jax.main prepare --dataset synthetic --source DIR --out DIR [--num-cases 300]

  `prepare.prepare(dataset, source, out, size=256, strict=True, overwrite=False, split_seed=0)`
  does the same from Python and returns the report. Layouts are read by `layouts` (one reader
  per distributed layout, also one folder deeper); the output (report.json, cases.json,
  splits/*.json, tfds/ ArrayRecord files) is described in `prepare`. Protocols per dataset
  (`splits.DEFAULT_PROTOCOL` marks the default):
    isic2018: medi_seg_5fold (folds 0-4), shuffled_5fold, official (when validation and test
              are present);  isic2016: all900, holdout20 (test = ISIC 2016 test);  ph2: all;
    conic: grouped_712, random_712, all;  folder / synthetic: seeded_712, all.

Demo data (no download): `synthetic.ensure_demo_dataset(root, num_cases=300, image_size=256,
prepared_size=0) -> prepared_dir`, idempotent, ~15 s for 300 cases at 256 px on 2 cores.

Training and evaluation (`pipeline`):

  data_config = pipeline.default_data_config()   # the `data` block of an experiment config
    dir           prepared dataset folder
    protocol      split protocol name ('' = the dataset's default)
    fold          fold of a k-fold protocol (0 otherwise)
    train_split / val_split / test_split   split names in the protocol ('train', 'val', 'test')
    image_size    0: the size data.dir was prepared at (pipeline.image_size); else must
                  equal it (checked)
    augment       hflip, vflip, rot90, shift_scale_rotate (ssr_prob, shift_limit, scale_limit,
                  rotate_limit), color_jitter (brightness, contrast, saturation); all off
    num_workers   grain worker processes (0: threads in-process, best on few cores)
    read_threads, prefetch   per-process threads building batches, batches built ahead
    extra_eval    name -> ConfigDict(dir, protocol, fold, split): evaluation sets from other
                  prepared datasets (e.g. PH2 for the ISIC 2016 -> PH2 protocol)
  The shuffling seed is an argument of make_train_iterator (the experiment's seed).

  pipeline.make_train_iterator(data_config, global_batch_size, seed, process_index=None,
      process_count=None) -> grain.DatasetIterator
    Endless per-host batches {'image': (b,S,S,3) float32 ImageNet-normalised RGB,
    'mask': (b,S,S) uint8 0/1}, b = global / process_count; hosts default to jax.process_index()
    / process_count(). Seeded shuffle, reshuffled every epoch; get_state() / set_state() restore
    the position exactly (a small dict, e.g. for Orbax / grain checkpoint handlers).
  pipeline.make_eval_iterator(data_config, split, global_batch_size, process_index=None,
      process_count=None) -> iterator of batches
    Every case of `split` (a split name or an extra_eval name) exactly once across hosts; every
    host yields ceil(n / global batch) batches with 'image', 'mask', 'valid' (bool; False for
    padding), 'index', 'case_id' (str), 'original_size' (height, width) and, for CoNIC,
    'instances'. 'case_id' is a string array: keep it on the host.
  pipeline.resolve_split(data_config, split) -> (PreparedDataset, case ids)
  pipeline.split_size(data_config, split) -> int

  dataset.PreparedDataset(dir): .report, .cases, .case(case_id) (original paths and size),
    .split(protocol, fold, split), .record(case), .native_mask(case_id) -> (H, W) bool at the
    original resolution (stored in the prepared data, so the download is not needed).

Shared helpers: `augment.normalize` and `augment.IMAGENET_MEAN/STD`; `images.load_rgb`,
`images.resize_image`, `images.resize_mask` (the resizing conventions, for prediction).
"""
