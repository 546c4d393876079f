"""The ImageNet-initialised encoder (`config.model.pretrained`), downloaded once and checked.

  variables, line = initialize_encoder("res2net50_v1b_26w_4s", variables)

`model.pretrained` is one of
  - a name in `NAMED_WEIGHTS` (the upstream Res2Net v1b 26w4s files CTO starts from);
  - `none`: the encoder keeps its random initialisation;
  - a local file (.pth/.pt, .safetensors, .npz) holding a Res2Net v1b encoder state dict, in the
    `res2net50_v1b` or `timm_res2net50d` layout (the same keys), `fc.*` ignored;
  - an http(s):// URL of such a file, or an object-store URL (`gs://`, see `sgdnet_jax.core.paths`).
A URL (a name resolves to one) is downloaded once into `$SGDNET_JAX_CACHE` (default
`~/.cache/sgdnet_jax/weights`): into a temporary file in that folder, checked, then renamed into
place, so the cache never holds a partial, corrupt or foreign file. A file name that carries a
hash prefix (torch hub convention `name-<8+ hex digits>.ext`: the start of the file's SHA-256) is
checked against it. Local files are the user's own and are not hash-checked. In a multi-host run
only process 0 downloads; the others wait at a barrier and read the cached file (the cache folder
must then be shared, or the file given as a local path on every host).
"""

import contextlib
import hashlib
import os
import re
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

import tqdm

from sgdnet_jax.core import errors, paths
from sgdnet_jax.models import res2net
from sgdnet_jax.porting import port, state_dicts

NAMED_WEIGHTS = {
  "res2net50_v1b_26w_4s": (
    "https://shanghuagao.oss-cn-beijing.aliyuncs.com/res2net/res2net50_v1b_26w_4s-3cf99910.pth"
  ),
  "res2net101_v1b_26w_4s": (
    "https://shanghuagao.oss-cn-beijing.aliyuncs.com/res2net/res2net101_v1b_26w_4s-0812c246.pth"
  ),
}
# Encoder depth of each named file (blocks in layer3: 6 for depth 50, 23 for 101).
NAMED_DEPTH = {"res2net50_v1b_26w_4s": 50, "res2net101_v1b_26w_4s": 101}
LAYER3_BLOCKS = {blocks[2]: depth for depth, blocks in res2net.DEPTH_TO_BLOCKS.items()}
NONE = "none"
CACHE_ENV = "SGDNET_JAX_CACHE"
DEFAULT_CACHE = "~/.cache/sgdnet_jax/weights"
# res2net50_v1b and timm_res2net50d have the same keys (SPEC §5): one layout reads both.
LAYOUT = "res2net50_v1b"
ENCODER = "resnet"
HASH_PREFIX = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")
READABLE = state_dicts.TORCH_EXTENSIONS + (".safetensors", ".npz")
CHUNK_BYTES = 1 << 20
HTTP_SCHEMES = ("http://", "https://")
TIMEOUT_S = 60

Barrier = Callable[[], None]


def cache_dir(override: str | None = None) -> str:
  """The weights cache: `override`, else $SGDNET_JAX_CACHE, else ~/.cache/sgdnet_jax/weights."""
  return os.path.abspath(os.path.expanduser(override or os.environ.get(CACHE_ENV) or DEFAULT_CACHE))


def resolve(spec: str) -> str | None:
  """`model.pretrained` -> None (random init), a URL, or a local file path (checked to exist)."""
  spec = spec.strip()
  if spec.lower() in (NONE, ""):
    return None
  if spec in NAMED_WEIGHTS:
    return NAMED_WEIGHTS[spec]
  if spec.startswith(HTTP_SCHEMES):
    return spec
  path = paths.as_path(spec)
  if not paths.is_local(path):
    return str(path)  # An object-store URL: fetched into the cache like an http one.
  if not path.is_file():
    raise errors.ConfigError(
      f"model.pretrained={spec!r} is neither {NONE!r}, a name ({', '.join(NAMED_WEIGHTS)}), "
      f"a URL nor an existing file; give one of those"
    )
  return str(path)


def expected_hash_prefix(file_name: str) -> str | None:
  """The SHA-256 prefix a `name-<hex>.ext` file name promises (torch hub convention), or None."""
  match = HASH_PREFIX.search(file_name)
  return match.group(1) if match else None


def _url_file_name(url: str) -> str:
  name = os.path.basename(urllib.parse.unquote(urllib.parse.urlparse(url).path))
  if not name.lower().endswith(READABLE):
    raise errors.ConfigError(
      f"model.pretrained={url!r}: the URL's file name {name!r} does not end in one of "
      f"{' '.join(READABLE)}, so it cannot be read; download it and pass the local file"
    )
  return name


def _ways_out(url: str, cached: str) -> str:
  return (
    f"download {url} elsewhere and pass --config.model.pretrained=/path/to/file.pth (or copy it "
    f"to {cached}), or train from random initialisation with --config.model.pretrained=none"
  )


@contextlib.contextmanager
def _remote_file(url: str):
  """(readable binary stream, size in bytes as text or None) of an http(s) or object-store URL."""
  if url.startswith(HTTP_SCHEMES):
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
      yield response, response.headers.get("Content-Length")
  else:
    path = paths.as_path(url)
    with path.open("rb") as stream:
      yield stream, str(path.stat().length)


def _download(url: str, part: str, progress: bool) -> str:
  """Streams `url` into the file `part`; returns its SHA-256 hex digest."""
  digest = hashlib.sha256()
  with _remote_file(url) as (response, total), open(part, "wb") as out:
    with tqdm.tqdm(
      total=int(total) if total and total.isdigit() else None,
      desc=f"download {url}",
      unit="B",
      unit_scale=True,
      unit_divisor=1024,
      disable=not progress,
      file=sys.stderr,
    ) as bar:
      while chunk := response.read(CHUNK_BYTES):
        out.write(chunk)
        digest.update(chunk)
        bar.update(len(chunk))
    if total and total.isdigit() and out.tell() != int(total):
      raise OSError(f"the connection closed after {out.tell()} of {total} bytes")
  return digest.hexdigest()


def fetch(
  url: str,
  *,
  cache: str | None = None,
  check: Callable[[str], None] | None = None,
  is_main: bool = True,
  barrier: Barrier | None = None,
  progress: bool = True,
) -> str:
  """The cached file of `url`, downloaded first if absent (by the main process only).

  The download goes to a temporary file in the cache folder, is checked against the hash prefix
  of its name and by `check(path)` (raising to reject it), and only then renamed into place.
  Every process calls this; `barrier()` (when given) separates process 0's download from the
  others' reads, and is reached even when the download fails.

  Raises:
    UserError: no network or an HTTP error (naming the URL, the cache path and the ways out), a
      hash mismatch, or what `check` raises; the cache is left without the file.
  """
  folder = cache_dir(cache)
  name = _url_file_name(url)
  cached = os.path.join(folder, name)
  try:
    if is_main and not os.path.isfile(cached):
      _download_checked(url, folder, cached, check, progress)
  finally:
    if barrier is not None:
      barrier()
  if not os.path.isfile(cached):
    raise errors.UserError(
      f"{cached}: not found after process 0 fetched {url} (see its error); put the cache on a "
      f"folder every host shares (${CACHE_ENV}) or pass the file as a local path"
    )
  return cached


def _download_checked(url, folder, cached, check, progress) -> None:
  try:
    os.makedirs(folder, exist_ok=True)
    # A hidden name that keeps the extension (it says how to read the file) and marks it partial.
    stem, extension = os.path.splitext(os.path.basename(cached))
    handle, part = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".part{extension}", dir=folder)
  except OSError as error:
    raise errors.UserError(
      f"cannot write the weights cache {folder} ({error.strerror}); set ${CACHE_ENV} to a "
      f"writable folder"
    ) from None
  os.close(handle)
  try:
    try:
      digest = _download(url, part, progress)
    except (urllib.error.URLError, OSError, ValueError) as error:
      reason = getattr(error, "reason", None) or error
      raise errors.UserError(
        f"cannot download the pretrained encoder {url} into {cached} ({reason}); "
        + _ways_out(url, cached)
      ) from None
    prefix = expected_hash_prefix(os.path.basename(cached))
    if prefix is not None and not digest.startswith(prefix):
      raise errors.UserError(
        f"{url}: the downloaded file's SHA-256 is {digest[:16]}..., but its name promises "
        f"{prefix}: a corrupt or substituted download, not cached; try again, or "
        + _ways_out(url, cached)
      )
    if check is not None:
      check(part)
    os.replace(part, cached)
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(part)


def _default_multihost() -> tuple[bool, Barrier | None]:
  import jax  # pylint: disable=g-import-not-at-top

  if jax.process_count() == 1:
    return True, None
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  return jax.process_index() == 0, lambda: multihost_utils.sync_global_devices("pretrained")


def encoder_depth(variables: Mapping[str, Any]) -> int | None:
  """The encoder's depth (res2net.DEPTH_TO_BLOCKS) from its number of layer3 blocks, else None."""
  encoder = variables["params"].get(ENCODER, {})
  return LAYER3_BLOCKS.get(sum(1 for name in encoder if name.startswith("layer3_")))


def _load_encoder(path: str, variables: Mapping[str, Any], origin: str) -> port.PortResult:
  try:
    return port.load_torch(path, LAYOUT, variables)
  except state_dicts.CheckpointFileError as error:
    raise errors.UserError(f"model.pretrained: {str(error).replace(path, origin)}") from None
  except port.PortingError as error:
    raise errors.UserError(
      f"{origin} is not a Res2Net v1b encoder of this model's depth and widths: "
      f"{error.summary.replace(f'{path} ', '', 1)}; give a res2net50_v1b / timm res2net50d "
      f"state dict, or --config.model.pretrained=none"
    ) from None


def _summary(result: port.PortResult, origin: str) -> str:
  audit = result.audit
  tensors = audit.loaded + audit.counters + len(audit.ignored)
  ignored = (
    f"ignored {len(audit.ignored)} ({', '.join(audit.ignored)})"
    if audit.ignored
    else "ignored none"
  )
  return (
    f"pretrained encoder {origin}: loaded {audit.loaded} of its {tensors} tensors into "
    f"{ENCODER} ({audit.loaded_values:,} values, params and BatchNorm statistics); {ignored}; "
    f"{audit.counters} BatchNorm num_batches_tracked dropped; the rest of the model keeps "
    f"its initialisation"
  )


def initialize_encoder(
  spec: str,
  variables: Mapping[str, Any],
  *,
  cache: str | None = None,
  is_main: bool | None = None,
  barrier: Barrier | None = None,
  progress: bool = True,
) -> tuple[dict[str, Any], str]:
  """Fills the encoder (`resnet` params and BatchNorm statistics) from `model.pretrained`.

  Args:
    spec: `model.pretrained` (see the module docstring).
    variables: the model's initialised {'params', 'batch_stats'}.
    cache: the weights cache folder (default: `cache_dir()`).
    is_main, barrier: multi-host coordination; by default process 0 downloads and the others
      wait at `multihost_utils.sync_global_devices` (nothing to wait for on one process).
    progress: show the download's progress bar.

  Returns:
    (variables, one line saying what was loaded and ignored). With `none` the variables are
    returned as given; otherwise everything but the encoder keeps its initialisation.
  """
  source = resolve(spec)
  if source is None:
    return dict(variables), "model.pretrained=none: the encoder starts from random initialisation"
  depth = encoder_depth(variables)
  if spec in NAMED_DEPTH and depth is not None and NAMED_DEPTH[spec] != depth:
    other = [name for name, d in NAMED_DEPTH.items() if d == depth]
    raise errors.ConfigError(
      f"model.pretrained={spec!r} is a {NAMED_DEPTH[spec]}-layer encoder but model.backbone_depth "
      f"is {depth}; use --config.model.pretrained={other[0] if other else NONE}"
    )
  if paths.is_local(source):
    result = _load_encoder(source, variables, source)
    return result.variables, _summary(result, source)
  if is_main is None:
    is_main, default_barrier = _default_multihost()
    barrier = barrier or default_barrier
  loaded: dict[str, port.PortResult] = {}

  def check(path: str) -> None:
    loaded["result"] = _load_encoder(path, variables, source)

  path = fetch(
    source, cache=cache, check=check, is_main=is_main, barrier=barrier, progress=progress
  )
  result = loaded.get("result") or _load_encoder(path, variables, f"{source} (cached {path})")
  return result.variables, _summary(result, f"{source} (cached {path})")
