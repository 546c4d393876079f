"""A tiny network for CPU tests: same structure as SGD-Net, narrow widths, 64x64 inputs.

python -m sgdnet_jax.main summary --config configs/test.py:variant=cto

Sweep `tiny`: baseline and cto on folds 0 and 1 of a protocol with two folds; sweep `seeds`:
the baseline on both folds with seeds 0 and 1, four runs that train and evaluate one program
(tests/test_study_sweep.py interrupts and resumes it).
"""

from configs import common


def get_config(arg=None):
  args = common.parse_arg(arg, variant="sgdnet", num_classes=1, data="")
  config = common.make_tiny(common.experiment(args.variant, args.num_classes, args.data))
  config.model.pretrained = "none"
  config.data.image_size = 64
  config.global_batch_size = 4
  config.eval_batch_size = 4
  config.epochs = 2
  config.log_every_steps = 1
  return config


def get_sweep(name):
  tiny = [{"variant": v, "config.data.fold": k} for v in ("baseline", "cto") for k in (0, 1)]
  seeds = [
    {"variant": "baseline", "config.data.fold": k, "config.seed": s} for k in (0, 1) for s in (0, 1)
  ]
  return common.select_sweep({"tiny": tiny, "seeds": seeds}, name)
