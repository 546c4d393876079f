"""ISIC 2018 Task 1, MedISeg/CTO 5-fold protocol (DATA.md), any variant of the paper's Tables 4-5.

  python -m sgdnet_jax.main summary --config configs/isic2018.py:variant=sgdnet,num_classes=2

Arguments: variant (see `sgdnet_jax.models.VARIANTS`), num_classes (1 sigmoid, 2 softmax), fold (0-4).
"""
from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, variant="sgdnet", num_classes=1, fold=0)
  config = common.ml_collections.ConfigDict()
  config.experiment = "isic2018"
  config.fold = args.fold
  config.image_size = 256
  config.model = common.model_config(args.variant, args.num_classes)
  return config
