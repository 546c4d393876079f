"""`prepare`: check a downloaded dataset and write it once (see `sgdnet_jax.data.prepare`)."""

import argparse

from sgdnet_jax import cli
from sgdnet_jax.core import errors
from sgdnet_jax.data import prepare, synthetic

# Side of the images `--dataset synthetic` generates unless --generated-size says otherwise.
GENERATED_SIZE = 256


def build_parser() -> argparse.ArgumentParser:
  """The arguments of `prepare`, built without running it (tests check the documented
  command lines against it)."""
  parser = cli.parser(
    "prepare", "Check a downloaded dataset and write it once as a prepared dataset.", config=False
  )
  parser.add_argument("--dataset", required=True, choices=prepare.DATASETS)
  parser.add_argument(
    "--source", required=True, help="the unpacked download (for synthetic: where to generate it)"
  )
  parser.add_argument("--out", required=True, help="the prepared dataset folder to write")
  parser.add_argument(
    "--size",
    type=int,
    default=None,
    help="training size (square); default 256, for folder the images' median shorter side "
    "rounded down to a multiple of 32, at most 256",
  )
  parser.add_argument(
    "--no-strict",
    dest="strict",
    action="store_false",
    help="skip problematic cases (listed in dataset.json) instead of failing",
  )
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  parser.add_argument("--split-seed", type=int, default=0, help="seed of the seeded protocols")
  parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: CPUs)")
  parser.add_argument("--num-cases", type=int, default=300, help="synthetic only: cases to make")
  parser.add_argument(
    "--generated-size",
    type=int,
    default=None,
    help=f"synthetic only: side of the generated images (default {GENERATED_SIZE}; the demo "
    "generates at twice its training size)",
  )
  return parser


def check_size(size: int):
  """UserError unless the model can train at `size`: a positive multiple of the encoder's stride
  (a size that only fails once training starts is refused before anything is written)."""
  multiple = prepare.SIZE_MULTIPLE
  if size >= multiple and size % multiple == 0:
    return
  below, above = size // multiple * multiple, (max(size, 0) // multiple + 1) * multiple
  nearest = f"{below} or {above}" if below > 0 else str(above)
  raise errors.UserError(
    f"--size {size}: the models take sides that are multiples of {multiple} (the encoder's "
    f"stride); nothing was written; use --size {nearest}"
  )


def main(argv) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.generated_size is not None and args.dataset != "synthetic":
    parser.error("--generated-size goes with --dataset synthetic")
  if args.generated_size is not None and args.generated_size < 1:
    parser.error(f"--generated-size {args.generated_size}: give a positive number of pixels")
  if args.size is not None:
    check_size(args.size)
  prepare.check_output(args.source, args.out, overwrite=args.overwrite)  # before generating
  if args.dataset == "synthetic":
    synthetic.generate_folder_dataset(
      args.source, num_cases=args.num_cases, image_size=args.generated_size or GENERATED_SIZE
    )
  size = args.size
  if size is None:
    size, reason = prepare.default_size(args.dataset, args.source)
    print(f"--size {size}: {reason}")
  info = prepare.prepare(
    args.dataset,
    args.source,
    args.out,
    size=size,
    strict=args.strict,
    overwrite=args.overwrite,
    split_seed=args.split_seed,
    workers=args.workers,
  )
  counts = ", ".join(f"{s} {c['prepared']}" for s, c in info["counts"].items())
  print(
    f"prepared {args.dataset} into {args.out}: {counts}; {len(info['skipped'])} skipped, "
    f"{len(info['warnings'])} warning(s); protocols: {', '.join(info['protocols'])}"
  )
  return 0
