"""ISIC 2018 Task 1, MedISeg/CTO 5-fold protocol (docs/data.md), any variant of Tables 4-5.

  python -m sgdnet_jax.main prepare --dataset isic2018 --source ~/ISIC2018 --out data/isic2018
  python -m sgdnet_jax.main train --config configs/isic2018.py:variant=sgdnet,fold=0 \
      --workdir runs/isic2018_sgdnet_f0
  python -m sgdnet_jax.main summary --config configs/isic2018.py:variant=sgdnet,num_classes=2

Arguments: variant (see `sgdnet_jax/core/variants.py`), num_classes (1 sigmoid, 2 softmax), fold
(0-4), data (the prepared dataset folder), recipe (shared: the paper's setup for every method; cto:
CTO's published recipe, configs/common.py RECIPES). Report the mean over the 5 folds' test scores.

Sweeps (docs/ablations.md): table4, table5, main (each variant x folds 0-4), seeds (sgdnet x
seeds 0-2 on fold 0), cto_recipe (CTO trained with its published recipe, folds 0-4; give it a root
of its own, its workdirs are named cto/fold<k> too):

  python -m sgdnet_jax.main sweep --config configs/isic2018.py:sweep=table5 --root runs/t5 --local
"""

from configs import common


def get_config(arg=None):
  args = common.parse_arg(
    arg, variant="sgdnet", num_classes=1, fold=0, data="data/isic2018", recipe="shared"
  )
  config = common.experiment(args.variant, args.num_classes, args.data, args.recipe)
  config.data.protocol = "medi_seg_5fold"
  config.data.fold = args.fold
  return config


FOLDS = range(5)
TABLE4 = ("baseline", "sge_add", "sge_contmix", "sgdnet")
TABLE5 = ("sgdc_self_guidance", "sgdc_no_local", "sgdc_no_dynamic", "sgdnet")
MAIN = ("cto", "sgdnet")


def get_sweep(name):
  folds = lambda variants: [{"variant": v, "fold": k} for v in variants for k in FOLDS]
  return common.select_sweep(
    {
      "table4": folds(TABLE4),
      "table5": folds(TABLE5),
      "main": folds(MAIN),
      "seeds": [{"variant": "sgdnet", "fold": 0, "config.seed": s} for s in range(3)],
      "cto_recipe": [{"variant": "cto", "fold": k, "recipe": "cto"} for k in FOLDS],
    },
    name,
  )
