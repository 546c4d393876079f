"""`predict`: masks and pictures people can look at (see `sgdnet_jax.inference.predict`).

Exit status 0 when every image was predicted (or already was), 1 when some image could not be
read (the others are predicted and the unreadable ones listed), 2 for a usage error.
"""

import argparse
import sys

from sgdnet_jax import cli
from sgdnet_jax.core import config_utils


def build_parser() -> argparse.ArgumentParser:
  """The arguments of `predict`, built without running it (tests check the documented
  command lines against it)."""
  parser = cli.parser("predict", __doc__)
  parser.add_argument(
    "--workdir",
    nargs="+",
    required=True,
    help="training workdir (or a `convert` output); several: their probabilities are averaged",
  )
  parser.add_argument("--images", nargs="*", default=[], help="image files and/or folders")
  parser.add_argument(
    "--split", default="", help="a split of the config's prepared dataset instead"
  )
  parser.add_argument(
    "--out",
    default="",
    help="default: <first workdir>/predictions; another must be new, empty or predict's own",
  )
  parser.add_argument("--limit", type=int, default=0, help="at most this many images (0: all)")
  parser.add_argument(
    "--tta",
    default="none",
    help="test-time augmentation: none, flip (4 mirrorings) or flip_rot (8 symmetries)",
  )
  parser.add_argument(
    "--tile",
    default="off",
    help="off: resize each image to the training size (as training did); auto: sliding "
    "windows of the training size over images larger than it; SIZE: windows of SIZE px",
  )
  parser.add_argument(
    "--overlap", type=float, default=0.5, help="overlap of neighbouring windows (fraction)"
  )
  parser.add_argument(
    "--save-probabilities",
    action="store_true",
    help="also write probabilities/<id>.npy (float16, original size; > 0.5 gives the mask)",
  )
  parser.add_argument(
    "--post", default="", help="mask clean-up steps in order: largest,fill_holes,min_size=N"
  )
  parser.add_argument("--num-parts", type=int, default=1, help="split the inputs into K shares")
  parser.add_argument("--part-id", type=int, default=0, help="predict share I (0..K-1)")
  parser.add_argument(
    "--overwrite", action="store_true", help="predict images whose outputs exist again"
  )
  return parser


def main(argv) -> int:
  parser = build_parser()
  args, overrides = parser.parse_known_args(argv)
  if bool(args.images) == bool(args.split):
    parser.error("give either --images or --split")
  config = config_utils.load_config(args.config, overrides)
  from sgdnet_jax.inference import predict
  from sgdnet_jax.workdir import layout

  result = predict.predict(
    config,
    args.workdir,
    args.out or layout.predictions_dir(args.workdir[0]),
    args.images,
    args.split,
    args.limit,
    tta=args.tta,
    tile=args.tile,
    overlap=args.overlap,
    save_probabilities=args.save_probabilities,
    post=args.post,
    num_parts=args.num_parts,
    part_id=args.part_id,
    overwrite=args.overwrite,
  )
  out = result.out
  print(
    f"wrote {result.written} masks to {out / 'masks'} and pictures to {out / 'panels'} "
    f"(overview: {out / 'overview.png'})"
  )
  if result.existing:
    print(f"skipped {result.existing} images whose outputs exist (--overwrite to redo them)")
  if result.unreadable:
    print(f"skipped {len(result.unreadable)} unreadable images:", file=sys.stderr)
    for path, reason in result.unreadable:
      print(f"  {path}: {reason}", file=sys.stderr)
    return 1
  return 0
