"""The upstream PyTorch state-dict layouts we port, and what each holds besides our variables.

A layout names (1) how its top-level torch modules map to our Flax modules (the naming rule of
`naming` does the rest), (2) the *extra* keys the upstream state dict has that our model does not
hold: frozen Sobel kernels (constants in our model, checked on import and written back exactly on
export) and modules that the upstream code defines but never calls (ignored on import, written as
placeholders on export), and (3) the canonical Flax structure of the layout, which exports are
checked against so that the result loads into the upstream module with `strict=True`.

Placeholders for never-called modules: zeros, except BatchNorm running_var (ones) and
num_batches_tracked (0). They do not influence any output of the upstream forward.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgdnet_jax import models
from sgdnet_jax.core import variants
from sgdnet_jax.models import layers, res2net, sgdc, sge

# Extra-key kinds.
SOBEL_X = "sobel_x"  # frozen Sobel-x kernel in every (out, in) slice
SOBEL_Y = "sobel_y"
UNUSED = "unused"  # a module defined upstream but never called
SOBEL_KERNELS = {SOBEL_X: layers.SOBEL_X, SOBEL_Y: layers.SOBEL_Y}

# CTO's GlobalFilter(dim=3, h=256, w=129) weight, whatever the input size.
FFT_SHAPE = (256, 129, 3, 2)
IMAGENET_CLASSES = 1000


@dataclasses.dataclass(frozen=True)
class ExtraKey:
  """A key of the upstream state dict that our Flax model does not hold."""

  shape: tuple[int, ...]
  kind: str  # SOBEL_X, SOBEL_Y or UNUSED
  dtype: Any = np.float32

  def placeholder(self, key: str) -> np.ndarray:
    """The value written on export (exact Sobel constants; placeholders for unused modules)."""
    if self.kind in SOBEL_KERNELS:
      return np.ascontiguousarray(np.broadcast_to(SOBEL_KERNELS[self.kind], self.shape), np.float32)
    if key.endswith(".num_batches_tracked"):
      return np.zeros(self.shape, np.int64)
    fill = 1.0 if key.endswith(".running_var") else 0.0
    return np.full(self.shape, fill, self.dtype)


Extras = dict[str, ExtraKey]
Params = Mapping[str, Any]


def _bn(prefix: str, channels: int) -> Extras:
  shape = (channels,)
  entries = {
    f"{prefix}.{leaf}": ExtraKey(shape, UNUSED)
    for leaf in ("weight", "bias", "running_mean", "running_var")
  }
  entries[f"{prefix}.num_batches_tracked"] = ExtraKey((), UNUSED, np.int64)
  return entries


def _conv(prefix: str, out: int, inp: int, kernel: int) -> Extras:
  """A Conv2d with bias."""
  return {
    f"{prefix}.weight": ExtraKey((out, inp, kernel, kernel), UNUSED),
    f"{prefix}.bias": ExtraKey((out,), UNUSED),
  }


def _out_channels(tree: Params, *path: str) -> int:
  """Output channels of the conv kernel at `path` (HWIO)."""
  for name in path:
    tree = tree[name]
  return int(tree["kernel"].shape[-1])


def _stage_channels(resnet: Params) -> tuple[int, ...]:
  """Output channels of the four Res2Net stages (conv3 of each stage's first block)."""
  return tuple(_out_channels(resnet, f"layer{i}_0", "conv3") for i in (1, 2, 3, 4))


def _resnet_fc(prefix: str, resnet: Params) -> Extras:
  channels = _stage_channels(resnet)[3]
  return {
    f"{prefix}fc.weight": ExtraKey((IMAGENET_CLASSES, channels), UNUSED),
    f"{prefix}fc.bias": ExtraKey((IMAGENET_CLASSES,), UNUSED),
  }


def _cto_sobel(index: int, channels: int, with_bn: bool) -> Extras:
  entries: Extras = {}
  for axis, kind in (("x", SOBEL_X), ("y", SOBEL_Y)):
    entries[f"sobel_{axis}{index}.0.weight"] = ExtraKey((1, channels, 3, 3), kind)
    if with_bn:
      entries.update(_bn(f"sobel_{axis}{index}.1", 1))
  return entries


def _cto_unused(params: Params, module_shapes: Callable[[str, str], Extras]) -> Extras:
  """CTO body modules that upstream defines but never calls, with shapes read off `params`.

  `module_shapes(flax_name, torch_prefix)` gives the torch keys/shapes of one of our modules
  under another name (dm4 has dm1's shapes, predictor4 predictor1's).
  """
  channels = _stage_channels(params["resnet"])
  classes = _out_channels(params, "predictor1")
  extras: Extras = {"fft.complex_weight": ExtraKey(FFT_SHAPE, UNUSED)}
  extras.update(_resnet_fc("resnet.", params["resnet"]))
  for index, width in enumerate(channels, start=1):
    prefix = f"erb_db_{index}"
    extras.update(_conv(f"{prefix}.conv1", classes, width, 1))
    extras.update(_conv(f"{prefix}.conv2", classes, classes, 3))
    extras.update(_bn(f"{prefix}.bn", classes))
    extras.update(_conv(f"{prefix}.conv3", classes, classes, 3))
  extras.update(_conv("reduce5.conv", 1, channels[3], 1))
  extras.update(_bn("reduce5.bn", 1))
  extras.update(module_shapes("dm1", "dm4"))
  extras.update(module_shapes("predictor1", "predictor4"))
  return extras


def _res2net_extras(params: Params, module_shapes) -> Extras:
  del module_shapes
  return _resnet_fc("", params)


def _cto_extras(params: Params, module_shapes) -> Extras:
  channels = _stage_channels(params["resnet"])
  extras: Extras = {}
  for index, width in enumerate(channels, start=1):
    extras.update(_cto_sobel(index, width, with_bn=index in (2, 3)))
  extras.update(_cto_unused(params, module_shapes))
  return extras


def _sge_sobel(prefix: str, params: Params) -> Extras:
  mid = _out_channels(params, "s1_proj", "conv")
  return {
    f"{prefix}sobel_x.weight": ExtraKey((mid, mid, 3, 3), SOBEL_X),
    f"{prefix}sobel_y.weight": ExtraKey((mid, mid, 3, 3), SOBEL_Y),
  }


def _sgdnet_extras(params: Params, module_shapes) -> Extras:
  channels = _stage_channels(params["resnet"])
  extras = _sge_sobel("eam.", params["sge"])
  for index in (2, 3):
    extras.update(_cto_sobel(index, channels[index - 1], with_bn=True))
  extras.update(_cto_unused(params, module_shapes))
  return extras


def _sge_extras(params: Params, module_shapes) -> Extras:
  del module_shapes
  return _sge_sobel("", params)


def _no_extras(params: Params, module_shapes) -> Extras:
  del params, module_shapes
  return {}


# --- Canonical structures (the upstream modules' defaults; constructor arguments read off params).


def _abstract(module, *shapes, **kwargs):
  args = [jax.ShapeDtypeStruct(shape, jnp.float32) for shape in shapes]
  return jax.eval_shape(lambda *a: module.init(jax.random.PRNGKey(0), *a, **kwargs), *args)


def _res2net_structure(params: Params):
  del params
  return _abstract(res2net.Res2Net(depth=50), (1, 64, 64, 3), train=False)


# The upstream networks as SGDNet fields (their variant presets, which set top-level model fields
# only); everything else is the modules' (upstream) defaults.
UPSTREAM_NETWORKS = {name: dict(variants.VARIANTS[name]) for name in ("sgdnet", "cto")}


def _network_structure(variant: str) -> Callable[[Params], Any]:
  def structure(params: Params):
    module = models.SGDNet(
      num_classes=_out_channels(params, "predictor1"),
      trans_patch_sizes=(8, 4, 2, 1),  # shapes do not depend on them; a small input
      **UPSTREAM_NETWORKS[variant],
    )
    return _abstract(module, (1, 64, 64, 3), train=False)

  return structure


def _sge_structure(params: Params):
  module = sge.StructureGuidanceExtractor(
    mid_channels=_out_channels(params, "s1_proj", "conv"),
    guide_channels=_out_channels(params, "out_guidance"),
  )
  x4 = (1, 2, 2, int(params["s4_proj"]["conv"]["kernel"].shape[2]))
  x1 = (1, 16, 16, int(params["s1_proj"]["conv"]["kernel"].shape[2]))
  return _abstract(module, x4, x1, train=False)


def _sgdc_structure(params: Params):
  dim = int(params["attn"]["kernel"].shape[2])
  guide = int(params["proj_guidance"]["kernel"].shape[2])
  return _abstract(sgdc.SGDC(), (1, 8, 8, dim), (1, 8, 8, guide), train=False)


@dataclasses.dataclass(frozen=True)
class Layout:
  """An upstream state-dict layout.

  Attributes:
    name: the layout's name (`--layout`).
    description: what upstream module writes it.
    renames: torch top-level module -> our Flax module, where they differ.
    subtree: for partial layouts, the Flax module they fill when given a whole network's
      variables (the rest is kept); None when the layout is the whole model.
    extras: params -> the upstream keys our model does not hold (see module docstring).
    structure: params -> the canonical abstract variables of the layout (None: no export).
    signature: a key only this layout's checkpoints have (to name a foreign checkpoint).
  """

  name: str
  description: str
  renames: Mapping[str, str]
  subtree: str | None
  extras: Callable[[Params, Callable[[str, str], Extras]], Extras]
  structure: Callable[[Params], Any] | None
  signature: str

  def to_flax_name(self, torch_name: str) -> str:
    return self.renames.get(torch_name, torch_name)

  def to_torch_name(self, flax_name: str) -> str:
    inverse = {v: k for k, v in self.renames.items()}
    return inverse.get(flax_name, flax_name)


LAYOUTS: dict[str, Layout] = {
  layout.name: layout
  for layout in (
    Layout(
      "res2net50_v1b",
      "Res2Net-50 v1b 26w4s ImageNet file (res2net50_v1b_26w_4s); fc.* ignored",
      {},
      "resnet",
      _res2net_extras,
      _res2net_structure,
      "layer1.0.convs.0.weight",
    ),
    Layout(
      "timm_res2net50d",
      "timm res2net50d (the same 524 keys as res2net50_v1b, SPEC §5)",
      {},
      "resnet",
      _res2net_extras,
      _res2net_structure,
      "layer1.0.convs.0.weight",
    ),
    Layout(
      "cto",
      "CTO(num_class) from CTO_net.py -> variant 'cto'",
      {},
      None,
      _cto_extras,
      _network_structure("cto"),
      "eam.reduce1.conv.weight",
    ),
    Layout(
      "sgdnet",
      "SGD-Net candidate (CTO body, eam = SGE, sgdc.x1..x3) -> variant 'sgdnet'",
      {"eam": "sge"},
      None,
      _sgdnet_extras,
      _network_structure("sgdnet"),
      "sgdc.x1.attn.weight",
    ),
    Layout(
      "sge",
      "official SGE.py SGE(2048, 256) -> StructureGuidanceExtractor",
      {},
      "sge",
      _sge_extras,
      _sge_structure,
      "s4_proj.conv.weight",
    ),
    Layout(
      "sgdc",
      "official sgdc.py SGDC(dim, 16) -> SGDC",
      {},
      None,
      _no_extras,
      _sgdc_structure,
      "proj_guidance.weight",
    ),
  )
}


# The naming rule alone: every key must map onto the template, nothing is extra.
NAMING_RULE_ONLY = Layout(
  "naming rule",
  "any module whose torch and Flax names follow the rule",
  {},
  None,
  _no_extras,
  None,
  "",
)


def get_layout(name: str) -> Layout:
  if name not in LAYOUTS:
    raise ValueError(f"unknown layout {name!r}; expected one of {sorted(LAYOUTS)}")
  return LAYOUTS[name]


def guess_layouts(keys) -> tuple[str, ...]:
  """Layouts whose signature key is among `keys` (to say what a foreign checkpoint looks like)."""
  keys = set(keys)
  found = {}
  for layout in LAYOUTS.values():
    if layout.signature in keys:
      found.setdefault(layout.signature, layout.name)
  return tuple(found.values())
