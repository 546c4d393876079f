"""ISIC 2016 -> PH2 cross-dataset protocol (docs/data.md), any variant of the paper's Tables 4-5.

Train on all 900 ISIC 2016 training images (`protocol=all900`; our reading: the paper names no
count; no validation, the last epoch's weights are evaluated; `protocol=holdout20` validates on
the last 20% in sorted order instead), test on all 200 PH2 cases (`--split ph2`, from
data.extra_eval.ph2) and on the 379 official ISIC 2016 test images (`--split test`).

  python -m sgdnet_jax.main prepare --dataset isic2016 --source ~/ISIC2016 --out data/isic2016
  python -m sgdnet_jax.main prepare --dataset ph2 --source ~/PH2Dataset --out data/ph2
  python -m sgdnet_jax.main train --config configs/isic2016_ph2.py:variant=sgdnet --workdir runs/ph2
  python -m sgdnet_jax.main evaluate --config configs/isic2016_ph2.py --workdir runs/ph2 --split ph2
  python -m sgdnet_jax.main evaluate --config configs/isic2016_ph2.py --workdir runs/ph2 \
      --split test

Arguments: variant, num_classes (1 sigmoid, 2 softmax), data (prepared ISIC 2016), ph2 (prepared
PH2), protocol (all900 or holdout20; docs/fidelity.md says why all900 is the default), recipe
(shared or cto: configs/common.py).
"""

import ml_collections

from configs import common


def get_config(arg=None):
  args = common.parse_arg(
    arg,
    variant="sgdnet",
    num_classes=1,
    data="data/isic2016",
    ph2="data/ph2",
    protocol="all900",
    recipe="shared",
  )
  config = common.experiment(args.variant, args.num_classes, args.data, args.recipe)
  config.data.protocol = args.protocol
  if args.protocol == "all900":  # no validation split: the last epoch's weights are evaluated
    config.eval_every_epochs = 0
  config.data.extra_eval.ph2 = ml_collections.ConfigDict(
    dict(dir=args.ph2, protocol="all", fold=0, split="test")
  )
  config.eval_splits = ("ph2", "test")
  return config


def get_sweep(name):
  """main: CTO and SGD-Net (docs/ablations.md)."""
  return common.select_sweep({"main": [{"variant": v} for v in ("cto", "sgdnet")]}, name)
