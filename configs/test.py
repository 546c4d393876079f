"""A tiny network for CPU tests: same structure as SGD-Net, narrow widths, 64x64 inputs.

  python -m sgdnet_jax.main summary --config configs/test.py:variant=cto
"""
from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, variant="sgdnet", num_classes=1)
  config = common.ml_collections.ConfigDict()
  config.experiment = "test"
  config.image_size = 64
  config.model = common.tiny_model_config(args.variant, args.num_classes)
  return config
