"""Prepared datasets in a bucket: staged once per host into a local cache keyed by their content.

grain reads a prepared dataset record by record at random through array_record's C++ reader,
which opens local files only, and a record fetched on its own from a bucket costs a request
(docs/data.md measures both). So a `data.dir` URL is copied once per host into
`$SGDNET_JAX_DATA_CACHE` (default `~/.cache/sgdnet_jax/datasets`), under a folder named after
the dataset and a key of its content: every file's path and size and the bytes of `dataset.json`
and `cases.json` (which `prepare` rewrites on every run). Processes of one host copy it once
(a file lock; the others wait and reuse it), into a temporary folder renamed into place when
every file has its listed size; later runs with the same content reuse the copy without
downloading. `prepare --out URL` prepares locally and uploads with `dataset.json` last, so a
reader never takes a partial upload for a dataset.
"""

import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import sys
import time
import uuid

from sgdnet_jax.core import paths

CACHE_ENV = "SGDNET_JAX_DATA_CACHE"
DEFAULT_CACHE = "~/.cache/sgdnet_jax/datasets"
MANIFEST = ".staged.json"  # in a staged copy: the listing it was copied from
INFO_FILES = ("dataset.json", "cases.json")
CHUNK_BYTES = 16 << 20


def cache_root() -> pathlib.Path:
  """$SGDNET_JAX_DATA_CACHE, else ~/.cache/sgdnet_jax/datasets (absolute)."""
  return pathlib.Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser().resolve()


def listing(root: paths.Path) -> dict[str, int]:
  """{relative path: size in bytes} of every file under `root`, through the path type."""
  files, folders = {}, [(root, "")]
  while folders:
    folder, prefix = folders.pop()
    for child in folder.iterdir():
      if child.is_dir():
        folders.append((child, f"{prefix}{child.name}/"))
      else:
        files[prefix + child.name] = child.stat().length
  return dict(sorted(files.items()))


def content_key(root: paths.Path, files: dict[str, int]) -> str:
  """A hash of the listing and of the bytes of INFO_FILES: the name of a staged copy."""
  digest = hashlib.sha256(json.dumps(files).encode())
  for name in INFO_FILES:
    digest.update((root / name).read_bytes())
  return digest.hexdigest()[:16]


def _copy(source: paths.Path, target: pathlib.Path) -> None:
  target.parent.mkdir(parents=True, exist_ok=True)
  with source.open("rb") as reader, open(target, "wb") as writer:
    shutil.copyfileobj(reader, writer, CHUNK_BYTES)


def _complete(folder: pathlib.Path, files: dict[str, int]) -> bool:
  """Whether `folder` holds every listed file at its listed size."""
  return all(
    (folder / name).is_file() and (folder / name).stat().st_size == size
    for name, size in files.items()
  )


def staged_copy(url: str | os.PathLike) -> pathlib.Path:
  """The local copy of the prepared dataset at `url`, made now if this content has none yet.

  Raises FileNotFoundError if `url` holds no prepared dataset, OSError if the copy comes out
  incomplete (the bucket changed while it was read).
  """
  root = paths.as_path(url)
  if not (root / "dataset.json").is_file():
    raise FileNotFoundError(
      f"{root}: not a prepared dataset (no dataset.json); "
      "create it with `python -m sgdnet_jax.main prepare`"
    )
  files = listing(root)
  cache = cache_root()
  target = cache / f"{root.name}-{content_key(root, files)}"
  cache.mkdir(parents=True, exist_ok=True)
  with open(cache / f".{target.name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # one copy per host; the others wait for it
    if (target / MANIFEST).is_file() and _complete(target, files):
      return target
    start = time.monotonic()
    staging = cache / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
      for name in files:
        _copy(root / name, staging / name)
      if not _complete(staging, files):
        raise OSError(f"{root}: changed while it was copied to {cache}; run again")
      (staging / MANIFEST).write_text(json.dumps({"source": str(root), "files": files}))
      if target.exists():  # an incomplete copy under this name (it was checked above)
        shutil.rmtree(target)
      staging.rename(target)
    finally:
      shutil.rmtree(staging, ignore_errors=True)
  megabytes = sum(files.values()) / 1e6
  print(
    f"data: staged {root} into {target} ({len(files)} files, {megabytes:.1f} MB, "
    f"{time.monotonic() - start:.1f} s); later runs reuse it",
    file=sys.stderr,
  )
  return target


def upload(local: pathlib.Path, url: str | os.PathLike) -> None:
  """Copies the prepared dataset `local` to `url`, `dataset.json` last (its marker).

  What `url` held (a prepared dataset: `prepare.check_output` checked it) is removed first,
  its `dataset.json` before the rest.
  """
  root = paths.as_path(url)
  if root.exists():
    (root / "dataset.json").unlink(missing_ok=True)
    root.rmtree()
  names = sorted(
    str(p.relative_to(local)) for p in local.rglob("*") if p.is_file() and p.name != "dataset.json"
  )
  for name in [*names, "dataset.json"]:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    with open(local / name, "rb") as reader, (root / name).open("wb") as writer:
      shutil.copyfileobj(reader, writer, CHUNK_BYTES)
