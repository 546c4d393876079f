"""Reading and writing PyTorch state dicts as {key: numpy array}, without running pickled code.

Formats, by extension:
  .pth .pt .bin .ckpt  torch.save files (zip or legacy), read without torch by `torch_files`,
                       which unpickles tensors only;
  .safetensors         the safetensors package (no torch needed);
  .npz                 numpy archives of plain arrays.
Checkpoints wrapped as {'state_dict': ...} (or {'model_state_dict': ...}, {'model': ...}) are
unwrapped, and a DataParallel `module.` prefix on every key is removed.
"""

import os
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from sgdnet_jax.core import errors
from sgdnet_jax.porting import torch_files

TORCH_EXTENSIONS = (".pth", ".pt", ".bin", ".ckpt")
SAFETENSORS_EXTENSIONS = (".safetensors",)
NUMPY_EXTENSIONS = (".npz",)
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
PARALLEL_PREFIX = "module."

StateDict = dict[str, np.ndarray]
Source = str | os.PathLike | Mapping[str, Any]


class CheckpointFileError(errors.UserError, ValueError):
  """A file or mapping that is not a readable state dict; the message names it."""


def _extension(path: str) -> str:
  return os.path.splitext(path)[1].lower()


def _known_extensions() -> str:
  return " ".join(TORCH_EXTENSIONS + SAFETENSORS_EXTENSIONS + NUMPY_EXTENSIONS)


def _is_tensor(value: Any) -> bool:
  return isinstance(value, np.ndarray) or (hasattr(value, "detach") and hasattr(value, "numpy"))


def _to_numpy(value: Any) -> np.ndarray:
  """A private numpy copy: torch tensors share memory, and torch updates BN buffers in place."""
  if isinstance(value, np.ndarray):
    return np.array(value, copy=True)
  tensor = value.detach().cpu()
  if tensor.dtype.is_floating_point and tensor.dtype.itemsize < 4:
    tensor = tensor.float()  # float16 / bfloat16 have no (portable) numpy dtype; exact upcast.
  return np.array(tensor.numpy(), copy=True)


def _read_torch(path: str) -> Any:
  try:
    return torch_files.load(path)
  except torch_files.UnsafePickleError as error:
    raise CheckpointFileError(
      f"{path}: refused, the file was not loaded: unpickling it would call {error}, which would "
      "execute code (it is not part of a plain tensor state dict), and we never unpickle code. "
      "Save the weights alone, e.g. torch.save(model.state_dict(), path), or as .safetensors"
    ) from None
  except Exception as error:  # pylint: disable=broad-except  (foreign files raise anything)
    raise CheckpointFileError(
      f"{path}: not a PyTorch checkpoint written by torch.save "
      f"({type(error).__name__}: {str(error)[:200]})"
    ) from None


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  try:
    return load_file(path)
  except Exception as error:  # pylint: disable=broad-except  (SafetensorError, dtype errors)
    raise CheckpointFileError(f"{path}: not a readable .safetensors file ({error})") from None


def _read_npz(path: str) -> dict[str, np.ndarray]:
  try:
    archive = np.load(path, allow_pickle=False)
    if not isinstance(archive, np.lib.npyio.NpzFile):
      raise ValueError("it holds a single array, not named arrays")
    with archive:
      return {key: archive[key] for key in archive.files}
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
    raise CheckpointFileError(f"{path}: not a .npz archive of plain arrays ({error})") from None


def _read_file(path: str) -> Any:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such checkpoint file")
  extension = _extension(path)
  if extension in TORCH_EXTENSIONS:
    return _read_torch(path)
  if extension in SAFETENSORS_EXTENSIONS:
    return _read_safetensors(path)
  if extension in NUMPY_EXTENSIONS:
    return _read_npz(path)
  raise CheckpointFileError(
    f"{path}: unknown checkpoint extension {extension!r}; expected one of {_known_extensions()}"
  )


def _unwrap(content: Any, origin: str) -> Mapping[str, Any]:
  while isinstance(content, Mapping) and not all(_is_tensor(v) for v in content.values()):
    wrapped = [k for k in WRAPPER_KEYS if isinstance(content.get(k), Mapping)]
    if not wrapped:
      others = [f"{k!r} ({type(v).__name__})" for k, v in content.items() if not _is_tensor(v)]
      raise CheckpointFileError(
        f"{origin}: not a state dict: entries {', '.join(others[:5])} are not tensors, and "
        f"there is no {' / '.join(WRAPPER_KEYS)} entry holding one"
      )
    content = content[wrapped[0]]
  if not isinstance(content, Mapping):
    raise CheckpointFileError(
      f"{origin}: holds a {type(content).__name__}, expected a state "
      f"dict (a mapping from names to tensors)"
    )
  if not content:
    raise CheckpointFileError(f"{origin}: the state dict is empty")
  return content


def read_state_dict(source: Source) -> StateDict:
  """{key: numpy array} from a checkpoint file or an in-memory state dict, in the file's order."""
  if isinstance(source, Mapping):
    origin, content = "the given state dict", source
  else:
    origin = os.fspath(source)
    content = _read_file(origin)
  content = _unwrap(content, origin)
  keys = [str(k) for k in content]
  if all(k.startswith(PARALLEL_PREFIX) for k in keys):
    keys = [k[len(PARALLEL_PREFIX) :] for k in keys]
  return {key: _to_numpy(value) for key, value in zip(keys, content.values())}


def write_state_dict(state_dict: Mapping[str, np.ndarray], path: str) -> None:
  """Writes a plain state dict (.pth/.pt via torch.save, .safetensors or .npz); never overwrites."""
  if os.path.exists(path):
    raise FileExistsError(f"{path} already exists; choose a new output file")
  extension = _extension(path)
  arrays = {k: np.asarray(v, order="C") for k, v in state_dict.items()}  # keeps 0-d arrays 0-d
  if extension in (".pth", ".pt"):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise CheckpointFileError(
        f"{path}: writing .pth needs PyTorch; write .safetensors "
        f"instead (loads with safetensors.torch.load_file)"
      ) from None
    torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, path)
  elif extension in SAFETENSORS_EXTENSIONS:
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

    save_file(arrays, path)
  elif extension in NUMPY_EXTENSIONS:
    np.savez(path, **arrays)
  else:
    raise CheckpointFileError(
      f"{path}: unknown output extension {extension!r}; expected .pth, .pt, .safetensors or .npz"
    )
