"""`export-torch`, the PyTorch export: a variables directory -> a PyTorch state dict in an
upstream layout (`sgdnet_jax.porting.port`). The StableHLO export of a whole model is `export`.

  python -m sgdnet_jax.main export-torch --workdir runs/cto_fold0_torch --layout cto \
      --out cto_fold0_roundtrip.safetensors
"""

import argparse

from sgdnet_jax import cli
from sgdnet_jax.core import errors
from sgdnet_jax.porting import key_tables, port, state_dicts
from sgdnet_jax.workdir import variables_io


def build_parser() -> argparse.ArgumentParser:
  """The arguments of `export-torch`, built without running it (tests check the documented
  command lines against it)."""
  parser = cli.parser(
    "export-torch",
    "PyTorch export: variables -> PyTorch state dict (upstream layout).",
    config=False,
  )
  parser.add_argument("--workdir", required=True, help="a variables directory (e.g. convert --out)")
  parser.add_argument("--layout", required=True, choices=sorted(key_tables.LAYOUTS))
  parser.add_argument("--out", required=True, help="new .pth/.pt, .safetensors or .npz file")
  return parser


def main(argv) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  variables = variables_io.load_variables(args.workdir)
  try:
    result = port.export_torch(variables, args.layout)
  except port.PortingError as error:  # Its summary, with the folder; --debug shows every key.
    raise errors.UserError(f"--workdir {args.workdir}: {error.summary}") from error
  state_dicts.write_state_dict(result.state_dict, args.out)
  print(result.audit.describe())
  print(f"wrote {args.out}")
  return 0
