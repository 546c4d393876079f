"""Datasets as users download them, prepared once, streamed with grain.

Nothing is imported here, so that `prepare` does not pay for grain/jax; import the modules:

  layouts    one reader per distributed layout (ISIC 2016/2018, PH2, CoNIC, folder)
  prepare    integrity checks and the prepared copy (TFDS ArrayRecord, no TensorFlow needed)
  splits     the split protocols of each dataset (`splits.DEFAULT_PROTOCOL`)
  dataset    `PreparedDataset(dir)`: a prepared dataset on disk (cases, splits, records)
  pipeline   grain iterators over a prepared dataset: training (seeded, resumable) and
             evaluation (every case once across hosts, padded batches marked `valid`)
  augment    normalisation and augmentations; images: decoding and the resizing conventions
  synthetic  the embedded synthetic dermoscopy data of the demo

The `data` block of a config is described field by field in `configs/default.py`;
the on-disk layouts and protocols in `docs/data.md`.
"""
