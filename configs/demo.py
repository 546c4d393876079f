"""The demo: a small SGD-Net trained on the embedded synthetic dermoscopy data (no download).

  make demo        # = python -m sgdnet_jax.main demo --workdir runs/demo

Same structure as the full SGD-Net (Res2Net, patch transformer, DA head, SGE, three SGDCs, DM
decoders) at narrow widths and 96x96 inputs, so it trains on a 2-core CPU in a few minutes.
There are no ImageNet weights here, so the learning rate is higher than CTO's 1e-4.

Sweep `example` (the README's example report, docs/pictures.sh): baseline and sgdnet, seeds 0 and 1
on the demo split, 4 epochs each.
"""

from configs import common

DATA_ROOT = "data/demo"


def get_config(arg=None):
  args = common.parse_arg(
    arg, variant="sgdnet", num_classes=1, data=f"{DATA_ROOT}/prepared", epochs=6
  )
  config = common.make_tiny(common.experiment(args.variant, args.num_classes, args.data))
  config.model.sge.guide_channels = 16
  config.model.pretrained = "none"  # the demo needs no download
  config.data.image_size = 96
  config.data.protocol = "seeded_712"
  config.demo_cases = 300  # generated at 192 px, prepared at 96 px
  config.global_batch_size = 8
  config.eval_batch_size = 16
  config.epochs = args.epochs
  config.optimizer.lr = 1e-3
  config.log_every_steps = 10
  config.keep_checkpoints = 1
  return config


def get_sweep(name):
  example = [
    {"variant": v, "epochs": 4, "config.seed": s} for v in ("baseline", "sgdnet") for s in range(2)
  ]
  return common.select_sweep({"example": example}, name)
