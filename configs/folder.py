"""Your own images and masks, prepared with `prepare --dataset folder` (seeded 7:1:2 split).

  python -m sgdnet_jax.main prepare --dataset folder --source my_data --out data/mine
  python -m sgdnet_jax.main train --config configs/folder.py:data=data/mine,variant=sgdnet \
      --workdir runs/mine

Small-data defaults: batch 8, 100 epochs (the poly schedule is per epoch), validation every 2
epochs, initialise from converted weights with --config.init_from=<convert output> when you
have them. Arguments: data (required), variant, num_classes (1 sigmoid, 2 softmax).
"""

from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, data="", variant="sgdnet", num_classes=1)
  if not args.data:
    raise ValueError(
      "configs/folder.py needs data=<prepared folder>, e.g. "
      "--config configs/folder.py:data=data/mine"
    )
  config = common.experiment(args.variant, args.num_classes, args.data)
  config.data.protocol = "seeded_712"
  config.global_batch_size = 8
  config.eval_batch_size = 8
  config.epochs = 100
  config.eval_every_epochs = 2
  return config
