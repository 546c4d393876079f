"""`predict`: masks and pictures people can look at (see `sgdnet_jax.predict`)."""

from sgdnet_jax import cli, config_utils


def main(argv) -> int:
  parser = cli.parser("predict", __doc__)
  parser.add_argument("--workdir", required=True, help="training workdir (or a `convert` output)")
  parser.add_argument("--images", nargs="*", default=[], help="image files and/or folders")
  parser.add_argument(
    "--split", default="", help="a split of the config's prepared dataset instead"
  )
  parser.add_argument("--out", default="", help="default: <workdir>/predictions")
  parser.add_argument("--limit", type=int, default=0, help="at most this many images (0: all)")
  args, overrides = parser.parse_known_args(argv)
  if bool(args.images) == bool(args.split):
    parser.error("give either --images or --split")
  config = config_utils.load_config(args.config, overrides)
  from sgdnet_jax import paths, predict  # After argument errors, which should not wait for JAX.

  out, count = predict.predict(
    config,
    args.workdir,
    args.out or paths.as_path(args.workdir) / "predictions",
    args.images,
    args.split,
    args.limit,
  )
  print(
    f"wrote {count} masks to {out / 'masks'} and pictures to {out / 'panels'} "
    f"(overview: {out / 'overview.png'})"
  )
  return 0
