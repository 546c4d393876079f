"""Reads `torch.save` files without torch, and without running pickled code.

Both formats torch has written: the zip archive (torch >= 1.6: `<name>/data.pkl` plus one raw
storage per tensor in `<name>/data/<key>`) and the legacy stream (torch < 1.6, e.g. the
Res2Net ImageNet files: magic number, protocol, system info, the pickle, the storage keys, then
every storage as an int64 element count and its raw bytes). The unpickler resolves only the
globals a tensor needs (`_rebuild_tensor_v2`, `_rebuild_parameter`, the typed storage classes,
`OrderedDict`); any other global is refused, so a file can never execute code. Tensors become
numpy arrays (bfloat16 is widened to float32, exactly).
"""

import collections
import dataclasses
import io
import os
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_DTYPES = {
  "DoubleStorage": np.float64,
  "FloatStorage": np.float32,
  "HalfStorage": np.float16,
  "BFloat16Storage": np.uint16,  # widened to float32 in `_bfloat16_to_float32`
  "LongStorage": np.int64,
  "IntStorage": np.int32,
  "ShortStorage": np.int16,
  "CharStorage": np.int8,
  "ByteStorage": np.uint8,
  "BoolStorage": np.bool_,
}


class UnsafePickleError(pickle.UnpicklingError):
  """The pickle names a global that is not part of a plain tensor state dict."""


@dataclasses.dataclass
class _Storage:
  kind: str
  numel: int
  data: np.ndarray | None = None  # filled from the zip entry or the legacy stream


@dataclasses.dataclass
class _Tensor:
  storage: _Storage
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]

  def array(self) -> np.ndarray:
    data = self.storage.data
    if any(s < 0 for s in self.size) or any(s < 0 for s in self.stride) or self.offset < 0:
      raise ValueError(f"a tensor with negative size/stride/offset {self.size} {self.stride}")
    last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
    if min(self.size, default=1) > 0 and last >= data.size:
      raise ValueError(f"a tensor of size {self.size} reaches past its storage ({data.size})")
    view = np.lib.stride_tricks.as_strided(
      data[self.offset :], self.size, tuple(s * data.itemsize for s in self.stride)
    )
    array = np.array(view, copy=True)
    return _bfloat16_to_float32(array) if self.storage.kind == "BFloat16Storage" else array


def _bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
  return (bits.astype(np.uint32) << 16).view(np.float32)


def _rebuild_tensor(storage, offset, size, stride, *unused) -> _Tensor:
  return _Tensor(storage, int(offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, *unused):
  return data


_GLOBALS = {
  ("collections", "OrderedDict"): collections.OrderedDict,
  ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
  ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
  ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
} | {("torch", name): name for name in STORAGE_DTYPES}


class _Unpickler(pickle.Unpickler):
  def __init__(self, file, storage_of):
    super().__init__(file)
    self._storage_of = storage_of

  def find_class(self, module, name):
    if (module, name) not in _GLOBALS:
      raise UnsafePickleError(f"global {module}.{name}")
    return _GLOBALS[(module, name)]

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise UnsafePickleError(f"persistent id {str(pid)[:80]}")
    kind, key, numel = pid[1], str(pid[2]), int(pid[4])
    if kind not in STORAGE_DTYPES:
      raise UnsafePickleError(f"storage type {kind!r}")
    if len(pid) > 5 and pid[5] is not None:
      raise ValueError("a storage view (written by torch < 1.0); save it again with torch.save")
    return self._storage_of(key, kind, numel)


def _materialise(value: Any) -> Any:
  if isinstance(value, _Tensor):
    return value.array()
  if isinstance(value, dict):
    return type(value)((k, _materialise(v)) for k, v in value.items())
  if isinstance(value, list | tuple):
    return type(value)(_materialise(v) for v in value)
  return value


def _load_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
      raise ValueError("a zip file without exactly one <name>/data.pkl: not written by torch.save")
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = f"{prefix}byteorder"
    if byteorder in archive.namelist() and archive.read(byteorder).decode().strip() != "little":
      raise ValueError("a big-endian torch file")

    def storage_of(key, kind, numel):
      data = np.frombuffer(archive.read(f"{prefix}data/{key}"), STORAGE_DTYPES[kind])
      if data.size < numel:
        raise ValueError(f"storage {key} holds {data.size} of its {numel} elements")
      return _Storage(kind, numel, data)

    return _materialise(_Unpickler(io.BytesIO(archive.read(pickles[0])), storage_of).load())


def _load_legacy(path: str) -> Any:
  storages: dict[str, _Storage] = {}

  def storage_of(key, kind, numel):
    return storages.setdefault(key, _Storage(kind, numel))

  with open(path, "rb") as file:
    restricted = lambda: _Unpickler(file, storage_of).load()
    if restricted() != LEGACY_MAGIC:
      raise ValueError("neither a zip archive nor a legacy torch.save stream (no magic number)")
    restricted()  # protocol version
    if not restricted().get("little_endian", True):
      raise ValueError("a big-endian torch file")
    result = restricted()
    for key in restricted():
      storage = storages[str(key)]
      itemsize = np.dtype(STORAGE_DTYPES[storage.kind]).itemsize
      (numel,) = struct.unpack("<q", file.read(8))
      raw = file.read(numel * itemsize)
      if numel < storage.numel or len(raw) != numel * itemsize:
        raise ValueError(f"storage {key} is truncated")
      storage.data = np.frombuffer(raw, STORAGE_DTYPES[storage.kind])
  return _materialise(result)


def load(path: os.PathLike | str) -> Any:
  """The object a `torch.save` file holds, tensors as numpy arrays.

  Raises UnsafePickleError for anything but tensors in plain containers, and ValueError,
  pickle.UnpicklingError, EOFError or zipfile.BadZipFile for files torch did not write.
  """
  path = os.fspath(path)
  return _load_zip(path) if zipfile.is_zipfile(path) else _load_legacy(path)
