"""The package-wide naming rule between PyTorch state-dict keys and Flax variable paths.

A key is split on '.', and a purely numeric segment (an `nn.Sequential` / `nn.ModuleList` index)
is joined to its predecessor with '_', as Flax names list members:

  layer1.0.convs.1.weight                 -> resnet/layer1_0/convs_1/kernel
  multi_trans.t.attention.output_linear.0 -> multi_trans/t/attention/output_linear_0
  head.conv_p1.1.running_mean             -> batch_stats head/conv_p1_1/mean

Leaves: a conv weight (O, I, kh, kw) is a `kernel` (kh, kw, I, O) (depthwise (C, 1, k, k) ->
(k, k, 1, C)); BatchNorm/LayerNorm weight -> `scale`; bias -> `bias`; running_mean/var ->
`batch_stats` mean/var; `num_batches_tracked` has no Flax counterpart; PReLU `weight` and scalar
or vector parameters (`alpha`, `beta`, `ls1`, ...) keep their names.

The inverse (`path_to_torch_key`) splits a trailing `_<digits>` back into `.<digits>`. That is
exact for every upstream layout we port (no upstream module name ends in `_<digits>`), but not in
general: ContMix's `dil_conv_k5_1` is a name, not an index, so only torch -> Flax is used there.
"""

import re
from collections.abc import Sequence

import numpy as np

from sgdnet_jax.core import errors

BN_STATS = {"running_mean": "mean", "running_var": "var"}
BN_COUNTER = "num_batches_tracked"
# Flax leaf names a torch `weight` can become, resolved by what the Flax module holds.
WEIGHT_LEAVES = ("kernel", "scale", "weight")

_INDEX_SUFFIX = re.compile(r"^(.*?)((?:_\d+)+)$")


class NamingError(errors.UserError, ValueError):
  """A key that the naming rule cannot map."""


def torch_key_to_path(key: str) -> tuple[str, ...]:
  """'layer1.0.convs.1.weight' -> ('layer1_0', 'convs_1', 'weight') (leaf keeps its torch name)."""
  path = []
  for segment in key.split("."):
    if not segment:
      raise NamingError(f"state-dict key {key!r} has an empty segment")
    if segment.isdigit():
      if not path:
        raise NamingError(f"state-dict key {key!r} starts with an index; expected a module name")
      path[-1] = f"{path[-1]}_{segment}"
    else:
      path.append(segment)
  return tuple(path)


def path_to_torch_key(path: Sequence[str]) -> str:
  """('layer1_0', 'convs_1', 'weight') -> 'layer1.0.convs.1.weight' (see the module docstring)."""
  segments = []
  for name in path:
    match = _INDEX_SUFFIX.match(name)
    if match and match.group(1):
      segments.append(match.group(1))
      segments.extend(match.group(2)[1:].split("_"))
    else:
      segments.append(name)
  return ".".join(segments)


def kernel_to_flax(weight: np.ndarray) -> np.ndarray:
  """Conv (O, I, kh, kw) -> (kh, kw, I, O); Linear (O, I) -> (I, O)."""
  if weight.ndim == 4:
    return np.ascontiguousarray(weight.transpose(2, 3, 1, 0))
  if weight.ndim == 2:
    return np.ascontiguousarray(weight.T)
  return weight


def kernel_to_torch(kernel: np.ndarray) -> np.ndarray:
  """Inverse of `kernel_to_flax`."""
  if kernel.ndim == 4:
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
  if kernel.ndim == 2:
    return np.ascontiguousarray(kernel.T)
  return kernel


def torch_shape_of_kernel(shape: Sequence[int]) -> tuple[int, ...]:
  """The torch shape a Flax kernel of `shape` comes from (for error messages)."""
  shape = tuple(shape)
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if len(shape) == 2:
    return shape[::-1]
  return shape
