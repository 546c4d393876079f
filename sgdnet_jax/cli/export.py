"""`export`, the StableHLO export: a trained model as one portable jax.export file (a StableHLO
program, served without this package) and a model card (`sgdnet_jax.inference.stablehlo`). The
PyTorch export of the weights is `export-torch`.

  python -m sgdnet_jax.main export --config configs/<exp>.py[:args] --workdir W --out DIR \
      [--platforms cpu,cuda,tpu] [--tta none|flip]
"""

import argparse

from sgdnet_jax import cli
from sgdnet_jax.core import config_utils


def build_parser() -> argparse.ArgumentParser:
  """The arguments of `export`, built without running it (tests check the documented
  command lines against it)."""
  parser = cli.parser("export", __doc__)
  parser.add_argument("--workdir", required=True, help="training workdir (or a `convert` output)")
  parser.add_argument("--out", required=True, help="folder for the exported model and its card")
  parser.add_argument(
    "--platforms",
    default="cpu,cuda,tpu",
    help="comma-separated targets among cpu, cuda, rocm, tpu (default: cpu,cuda,tpu; serving.py "
    "runs on JAX's backend when it is among them, else on the CPU)",
  )
  parser.add_argument(
    "--tta", choices=("none", "flip"), default="none", help="mirror test-time augmentation"
  )
  return parser


def main(argv) -> int:
  parser = build_parser()
  args, overrides = parser.parse_known_args(argv)
  config = config_utils.load_config(args.config, overrides)
  from sgdnet_jax.inference import stablehlo

  platforms = [p.strip() for p in args.platforms.split(",") if p.strip()]
  out = stablehlo.export_model(config, args.workdir, args.out, platforms, args.tta)
  print(
    f"wrote {out / stablehlo.MODEL_FILE} ({', '.join(platforms)}) and {out / stablehlo.CARD_FILE}"
  )
  return 0
