"""`convert`: a PyTorch checkpoint -> a variables directory.

  python -m sgdnet_jax.main convert --torch cto_fold0.pth --layout cto \
      --config configs/isic2018.py:variant=cto,num_classes=2 --out runs/cto_fold0_torch

Writes a variables directory (`sgdnet_jax.workdir.variables_io`) with the resolved config;
train starts from it with `--config.init_from=DIR`, evaluate/predict load it. Layouts that fill
part of the network (res2net50_v1b, timm_res2net50d: the backbone; sge: the SGE) start from the
model's random initialisation (`--seed`, default config.seed) for everything else. `sgdc` fills a
standalone SGDC module and is available from Python (`sgdnet_jax.porting.load_torch`) only.
Tensors holding NaN or Inf are named in a warning (they are converted as they are).
"""

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from sgdnet_jax import cli, models
from sgdnet_jax.core import compilation_cache, config_utils
from sgdnet_jax.porting import key_tables, port
from sgdnet_jax.workdir import variables_io


def _initial_variables(module, image_size: int, seed: int, concrete: bool):
  images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  init = lambda x: module.init(jax.random.PRNGKey(seed), x, train=False)
  return jax.jit(init)(images) if concrete else jax.eval_shape(init, images)


def warn_non_finite(variables, source: str):
  """One stderr line naming the tensors that hold NaN or Inf (a model that predicts NaN later)."""
  found = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
    bad = int(np.size(leaf) - np.count_nonzero(np.isfinite(leaf)))
    if bad:
      found.append(f"{'/'.join(str(getattr(k, 'key', k)) for k in path)} ({bad})")
  if found:
    shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
    print(
      f"WARNING: {len(found)} tensor(s) converted from {source} hold NaN or Inf values "
      f"(count): {shown}; a model with them predicts NaN; check the checkpoint",
      file=sys.stderr,
    )


def build_parser() -> argparse.ArgumentParser:
  """The arguments of `convert`, built without running it (tests check the documented
  command lines against it)."""
  parser = cli.parser("convert", "PyTorch checkpoint -> variables directory.", config=False)
  parser.add_argument("--torch", required=True, help=".pth/.pt/.bin/.ckpt, .safetensors or .npz")
  parser.add_argument("--layout", required=True, choices=sorted(key_tables.LAYOUTS))
  parser.add_argument("--config", required=True, help="configs/<experiment>.py[:key=value,...]")
  parser.add_argument("--out", required=True, help="new variables directory")
  parser.add_argument(
    "--seed",
    type=int,
    default=None,
    help="init seed of the modules a partial layout does not fill (default: config.seed)",
  )
  return parser


def main(argv) -> int:
  parser = build_parser()
  args, overrides = parser.parse_known_args(argv)
  config = config_utils.load_config(args.config, overrides)
  compilation_cache.enable(config.compilation_cache_dir)  # it compiles the initialisation
  layout = key_tables.get_layout(args.layout)
  if layout.name == "sgdc":
    parser.error(
      "layout 'sgdc' fills a standalone SGDC module; use "
      "sgdnet_jax.porting.load_torch with that module's variables"
    )
  if layout.subtree is None and config.model.variant != layout.name:
    parser.error(
      f"layout {layout.name!r} fills the {layout.name!r} network, but the config builds "
      f"variant {config.model.variant!r} (pass e.g. {args.config.split(':')[0]}:"
      f"variant={layout.name},num_classes=2)"
    )
  module = models.build(config.model)
  size = config.data.image_size or 256
  models.check_input_size(config.model, size, f"data.image_size={size}")
  seed = args.seed if args.seed is not None else int(config.get("seed", 0))
  template = _initial_variables(module, size, seed, concrete=layout.subtree is not None)
  if layout.subtree is not None and layout.subtree not in template["params"]:
    parser.error(
      f"layout {layout.name!r} fills the model's {layout.subtree!r}, which variant "
      f"{config.model.variant!r} does not have"
    )
  result = port.load_torch(args.torch, layout.name, template)
  warn_non_finite(result.variables, args.torch)
  variables_io.save_variables(args.out, result.variables, config.to_dict())
  print(result.audit.describe())
  print(f"wrote {args.out}")
  return 0
