"""CoNIC (Lizard patches) as binary nucleus segmentation, 7:1:2 split grouped by source image.

Evaluation adds panoptic quality (PQ) from the instance maps to the overlap and surface metrics.

  python -m sgdnet_jax.main prepare --dataset conic --source ~/CoNIC --out data/conic
  python -m sgdnet_jax.main train --config configs/conic.py:variant=sgdnet --workdir runs/conic
  python -m sgdnet_jax.main evaluate --config configs/conic.py --workdir runs/conic --split test

Arguments: variant, num_classes (1 sigmoid, 2 softmax), data (the prepared dataset folder),
protocol ('grouped_712', or the ungrouped 'random_712'), recipe (shared or cto: configs/common.py).
"""

from configs import common


def get_config(arg=None):
  args = common.parse_arg(
    arg,
    variant="sgdnet",
    num_classes=1,
    data="data/conic",
    protocol="grouped_712",
    recipe="shared",
  )
  config = common.experiment(args.variant, args.num_classes, args.data, args.recipe)
  config.data.protocol = args.protocol
  return config


def get_sweep(name):
  """main: CTO and SGD-Net (docs/ablations.md)."""
  return common.select_sweep({"main": [{"variant": v} for v in ("cto", "sgdnet")]}, name)
