"""`export-torch`: a variables directory -> a PyTorch state dict in an upstream layout.

  python -m sgdnet_jax.main export-torch --workdir runs/cto_fold0_torch --layout cto \
      --out cto_fold0_roundtrip.safetensors
"""

from sgdnet_jax import cli, errors, variables_io
from sgdnet_jax.porting import key_tables, port, state_dicts


def main(argv) -> int:
  parser = cli.parser(
    "export-torch", "variables -> PyTorch state dict (upstream layout).", config=False
  )
  parser.add_argument("--workdir", required=True, help="a variables directory (e.g. convert --out)")
  parser.add_argument("--layout", required=True, choices=sorted(key_tables.LAYOUTS))
  parser.add_argument("--out", required=True, help="new .pth/.pt, .safetensors or .npz file")
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
