"""PyTorch state dict <-> Flax variables for the upstream layouts (`key_tables.LAYOUTS`).

`load_torch` fills a Flax variables template from a checkpoint: every key must map onto the
template (naming rule of `naming`) with the right shape, every template leaf must be filled, and
the layout's extra keys (frozen Sobel kernels, modules upstream never calls) are accepted and
reported (`.audit`). `export_torch` is the inverse and writes the full upstream layout.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from sgdnet_jax.core import errors
from sgdnet_jax.porting import key_tables, naming, state_dicts

Path = tuple[str, ...]
COLLECTIONS = ("params", "batch_stats")
# How many keys the second line of an error names, and how many examples its summary gives.
FIRST_KEYS = 5
EXAMPLES = 3
# The model fields that set the widths of the upstream layouts (configs/default.py).
WIDTH_FIELDS = (
  "model.backbone_base_planes, model.decoder_channels, model.sge.mid_channels, "
  "model.sge.guide_channels"
)


class PortingError(errors.UserError, ValueError):
  """A checkpoint or variables that do not fit the layout.

  `summary` is one line (the counts, three examples, the likely cause), which the command line
  prints; the message is that line followed by every key, for `--debug` and for Python callers.
  """

  def __init__(self, summary: str, details: Sequence[str] = ()):
    super().__init__("\n".join([summary, *details]))
    self.summary = summary


@dataclasses.dataclass(frozen=True)
class PortAudit:
  """What `load_torch` did.

  Attributes:
    layout: the layout name.
    source: the checkpoint file (or 'the given state dict').
    loaded: Flax leaves filled from the checkpoint; `loaded_values` counts their scalars.
    sobel_constants: frozen Sobel kernels found, checked equal to our constant kernels.
    ignored: keys of modules that upstream defines but never calls (not loaded).
    absent: keys of those two kinds that the checkpoint does not have (harmless).
    counters: BatchNorm `num_batches_tracked` entries (no Flax counterpart; dropped).
    kept: top-level Flax modules left as they were in the template (partial layouts).
  """

  layout: str
  source: str
  loaded: int
  loaded_values: int
  sobel_constants: tuple[str, ...]
  ignored: tuple[str, ...]
  absent: tuple[str, ...]
  counters: int
  kept: tuple[str, ...]

  def describe(self) -> str:
    lines = [
      f"{self.source}: layout {self.layout!r}, loaded {self.loaded} arrays "
      f"({self.loaded_values:,} values)",
      f"  frozen Sobel kernels checked and skipped (constants in our model): "
      f"{len(self.sobel_constants)}",
      f"  ignored keys of modules upstream never calls: {len(self.ignored)}"
      + (f" ({_module_list(self.ignored)})" if self.ignored else ""),
      f"  BatchNorm num_batches_tracked dropped: {self.counters}",
    ]
    if self.absent:
      lines.append(
        f"  optional keys not in the checkpoint: {len(self.absent)} ({_module_list(self.absent)})"
      )
    if self.kept:
      lines.append(f"  kept as in the template (not in this layout): {', '.join(self.kept)}")
    return "\n".join(lines)


class PortResult(dict):
  """`load_torch`'s result: the {'params', 'batch_stats'} variables, with the `audit`.

  It is the variables mapping itself, so `module.apply(load_torch(...), x)` works, and JAX
  treats it as that dict (`jax.device_put`, `jax.jit` arguments; transformed trees come back as
  plain dicts). `.variables` is a plain-dict copy of the top level.
  """

  def __init__(self, variables: Mapping[str, Any], audit: PortAudit):
    super().__init__(variables)
    self.audit = audit

  @property
  def variables(self) -> dict[str, Any]:
    return dict(self)


jax.tree_util.register_pytree_with_keys(
  PortResult,
  lambda result: (tuple((jax.tree_util.DictKey(k), result[k]) for k in result), tuple(result)),
  lambda keys, values: dict(zip(keys, values)),
  flatten_func=lambda result: (tuple(result.values()), tuple(result)),
)


@dataclasses.dataclass(frozen=True)
class ExportAudit:
  """What `export_torch` wrote: `held` keys from our variables (+ `counters` BatchNorm
  num_batches_tracked = 0), exact Sobel constants, and placeholders for never-called modules."""

  layout: str
  written: int
  held: int
  counters: int
  sobel_constants: tuple[str, ...]
  placeholders: tuple[str, ...]

  def describe(self) -> str:
    return (
      f"layout {self.layout!r}: {self.written} keys = {self.held} from the variables + "
      f"{self.counters} num_batches_tracked (0) + {len(self.sobel_constants)} frozen Sobel "
      f"kernels (exact) + {len(self.placeholders)} placeholders for modules upstream never "
      f"calls ({_module_list(self.placeholders) or 'none'}; zeros, BN running_var ones)"
    )


class ExportResult(NamedTuple):
  state_dict: dict[str, np.ndarray]
  audit: ExportAudit


def _module_list(keys) -> str:
  """The distinct modules of `keys`, for summaries (two levels deep under resnet. and eam.)."""
  modules = []
  for key in keys:
    parts = key.split(".")
    module = ".".join(parts[:2]) if parts[0] == "resnet" or parts[0] == "eam" else parts[0]
    if module not in modules:
      modules.append(module)
  return ", ".join(modules)


def _flatten(tree: Mapping[str, Any], prefix: Path = ()) -> dict[Path, Any]:
  flat = {}
  for name, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, prefix + (name,)))
    else:
      flat[prefix + (name,)] = value
  return flat


def _unflatten(flat: Mapping[Path, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value
  return tree


def _plain(tree: Mapping[str, Any]) -> dict[str, Any]:
  return {k: _plain(v) if isinstance(v, Mapping) else v for k, v in tree.items()}


def _target_name(layout: key_tables.Layout, variables: Mapping[str, Any]) -> str | None:
  """The Flax module a partial layout fills in a whole network's variables, else None."""
  if "params" not in variables:
    raise PortingError(
      f"variables must be a mapping with 'params' (and 'batch_stats'), got keys {sorted(variables)}"
    )
  if layout.subtree is not None and layout.subtree in variables["params"]:
    return layout.subtree
  return None


def _collections(variables: Mapping[str, Any], target: str | None) -> dict[str, dict[Path, Any]]:
  flat = {}
  for collection in COLLECTIONS:
    tree = variables.get(collection, {})
    if target is not None:
      tree = tree.get(target, {})
    flat[collection] = _flatten(tree)
  return flat


def _torch_key(layout: key_tables.Layout, collection: str, path: Path) -> str:
  """The upstream key of a Flax leaf (`path` relative to the layout's target)."""
  *module, leaf = path
  if collection == "batch_stats":
    leaf = {"mean": "running_mean", "var": "running_var"}[leaf]
  elif leaf in naming.WEIGHT_LEAVES:
    leaf = "weight"
  if module:
    module[0] = layout.to_torch_name(module[0])
  return naming.path_to_torch_key(tuple(module) + (leaf,))


def _torch_shape(collection: str, path: Path, shape) -> tuple[int, ...]:
  if collection == "params" and path[-1] == "kernel":
    return naming.torch_shape_of_kernel(shape)
  return tuple(int(s) for s in shape)


def _to_flax_value(value: np.ndarray, leaf: str, template_shape) -> np.ndarray:
  if leaf == "kernel":
    return naming.kernel_to_flax(value)
  template_shape = tuple(template_shape)
  # GRN's gamma/beta: torch (1, C, 1, 1), ours (C,).
  if (
    value.shape != template_shape
    and value.ndim == 4
    and len(template_shape) == 1
    and value.shape == (1, template_shape[0], 1, 1)
  ):
    return value.reshape(template_shape)
  return value


def _is_sobel(value: np.ndarray, kind: str) -> bool:
  expected = np.broadcast_to(key_tables.SOBEL_KERNELS[kind], value.shape)
  return bool(np.array_equal(value, expected))


def _describe(values: list[str], title: str) -> list[str]:
  if not values:
    return []
  return [f"{title} ({len(values)}):"] + [f"  {line}" for line in values]


def load_torch(
  source: state_dicts.Source, layout: str, variables_template: Mapping[str, Any]
) -> PortResult:
  """Fills `variables_template` ({'params', 'batch_stats'}) from a PyTorch checkpoint.

  Args:
    source: a checkpoint file (.pth/.pt/.bin/.ckpt, .safetensors, .npz) or a state dict.
    layout: one of `key_tables.LAYOUTS` (res2net50_v1b, timm_res2net50d, cto, sgdnet, sge, sgdc).
    variables_template: the Flax model's variables (arrays, or ShapeDtypeStructs from
      `jax.eval_shape(model.init, ...)` when the layout fills the whole model). For
      res2net50_v1b / timm_res2net50d (sge) given a whole network's variables, only `resnet`
      (`sge`) is filled and the rest is returned as it was in the template.

  Returns:
    PortResult: the variables (a dict; numpy arrays in the template's dtypes) with `.audit`.

  Raises:
    PortingError: listing every unexpected, missing, mis-shaped key and every wrong Sobel kernel.
    CheckpointFileError: the source is not a readable state dict.
  """
  return _load(source, key_tables.get_layout(layout), variables_template)


def convert_state_dict(
  state_dict: state_dicts.Source, variables_template: Mapping[str, Any]
) -> PortResult:
  """Torch -> Flax by the naming rule alone, for any module named by the rule (e.g. the ContMix
  block): every key must fill a template leaf of the right shape and every leaf must be filled."""
  return _load(state_dict, key_tables.NAMING_RULE_ONLY, variables_template)


def _load(
  source: state_dicts.Source, spec: key_tables.Layout, variables_template: Mapping[str, Any]
) -> PortResult:
  state = state_dicts.read_state_dict(source)
  origin = "the given state dict" if isinstance(source, Mapping) else str(source)
  target = _target_name(spec, variables_template)
  template = _collections(variables_template, target)
  modules_with_stats = {path[:-1] for path in template["batch_stats"]}
  leaves_of_module: dict[Path, set] = {}
  for path in template["params"]:
    leaves_of_module.setdefault(path[:-1], set()).add(path[-1])
  target_params = (
    variables_template["params"][target] if target is not None else variables_template["params"]
  )
  target_stats = variables_template.get("batch_stats", {})
  if target is not None:
    target_stats = target_stats.get(target, {})

  def module_shapes(flax_name: str, torch_prefix: str) -> key_tables.Extras:
    return _shapes_as(spec, target_params, target_stats, flax_name, torch_prefix)

  extras = spec.extras(target_params, module_shapes)

  filled: dict[str, dict[Path, np.ndarray]] = {c: {} for c in COLLECTIONS}
  present: dict[str, set] = {c: set() for c in COLLECTIONS}  # keys found but mis-shaped
  unexpected, misshaped, wrong_sobel = [], [], []
  sobel, ignored = [], []
  counters = 0
  for key, value in state.items():
    if key in extras:
      extra = extras[key]
      if value.shape != extra.shape:
        misshaped.append((key, value.shape, extra.shape, "layout"))
      elif extra.kind in key_tables.SOBEL_KERNELS:
        if not _is_sobel(value, extra.kind):
          wrong_sobel.append(
            f"{key}: not the constant {extra.kind.replace('_', '-')} kernel in "
            f"every (out, in) slice"
          )
        sobel.append(key)
      else:
        ignored.append(key)
      continue
    try:
      *module, leaf = naming.torch_key_to_path(key)
    except naming.NamingError as error:
      unexpected.append(f"{key} ({error})")
      continue
    if module:
      module[0] = spec.to_flax_name(module[0])
    module = tuple(module)
    if leaf == naming.BN_COUNTER:
      if module in modules_with_stats and value.shape == ():
        counters += 1
      else:
        unexpected.append(f"{key} {value.shape}")
      continue
    if leaf in naming.BN_STATS:
      collection, name = "batch_stats", naming.BN_STATS[leaf]
    elif leaf == "weight":
      candidates = [n for n in naming.WEIGHT_LEAVES if n in leaves_of_module.get(module, ())]
      collection, name = "params", candidates[0] if len(candidates) == 1 else "weight"
    else:
      collection, name = "params", leaf
    path = module + (name,)
    if path not in template[collection]:
      unexpected.append(f"{key} {value.shape}")
      continue
    expected = template[collection][path]
    converted = _to_flax_value(value, name, expected.shape)
    if converted.shape != tuple(expected.shape):
      misshaped.append((key, value.shape, _torch_shape(collection, path, expected.shape), "model"))
      present[collection].add(path)
      continue
    if path in filled[collection]:
      unexpected.append(f"{key} (a second key for {collection} {'/'.join(path)})")
      continue
    filled[collection][path] = np.asarray(converted, dtype=np.dtype(expected.dtype))

  missing = sorted(
    f"{_torch_key(spec, c, p)} {_torch_shape(c, p, leaf.shape)} -> {c} {'/'.join(p)}"
    for c in COLLECTIONS
    for p, leaf in template[c].items()
    if p not in filled[c] and p not in present[c]
  )
  if unexpected or missing or misshaped or wrong_sobel:
    raise PortingError(
      *_mismatch_message(origin, spec, state, unexpected, missing, misshaped, wrong_sobel)
    )

  variables = {c: _unflatten(filled[c]) for c in COLLECTIONS}
  kept: tuple[str, ...] = ()
  if target is not None:
    variables, kept = _merge_into_template(variables_template, target, variables)
  audit = PortAudit(
    layout=spec.name,
    source=origin,
    loaded=sum(len(f) for f in filled.values()),
    loaded_values=int(sum(v.size for f in filled.values() for v in f.values())),
    sobel_constants=tuple(sobel),
    ignored=tuple(ignored),
    absent=tuple(k for k in extras if k not in state),
    counters=counters,
    kept=kept,
  )
  return PortResult(variables, audit)


def _merge_into_template(
  template: Mapping[str, Any], target: str, loaded: dict[str, Any]
) -> tuple[dict[str, Any], tuple[str, ...]]:
  merged = {}
  for collection in COLLECTIONS:
    tree = _plain(template.get(collection, {}))
    for path, leaf in _flatten(tree).items():
      if path[0] != target and isinstance(leaf, jax.ShapeDtypeStruct):
        raise PortingError(
          f"the template's {collection} {'/'.join(path)} is abstract; this layout fills only "
          f"'{target}', so pass initialised variables (model.init), not jax.eval_shape output"
        )
    if collection in template or loaded[collection]:
      tree[target] = loaded[collection]
      merged[collection] = tree
  kept = tuple(name for name in template["params"] if name != target)
  return merged, kept


def _narrower(shapes: Sequence[tuple[Sequence[int], Sequence[int]]]) -> bool:
  """Whether most (ours, theirs) shape pairs are ours smaller in some dimension, never larger:
  a model narrowed by its width fields against the full-width upstream layout."""
  narrower = sum(
    len(a) == len(b) and all(x <= y for x, y in zip(a, b)) and tuple(a) != tuple(b)
    for a, b in shapes
  )
  return narrower * 2 > len(shapes)


def _summary(head: str, counts: str, examples: Sequence[str], cause: str) -> str:
  """One line: what does not fit, the counts, up to EXAMPLES examples and the likely cause."""
  return f"{head}: {counts}, e.g. {'; '.join(examples[:EXAMPLES])}. Likely cause: {cause}"


def _spread(*groups: Sequence[str]) -> list[str]:
  """Examples taken from every non-empty group in turn, so that each kind shows."""
  examples = []
  for index in range(EXAMPLES):
    examples += [group[index] for group in groups if index < len(group)]
  return examples[:EXAMPLES]


def _mismatch_message(
  origin, spec, state, unexpected, missing, misshaped, wrong_sobel
) -> tuple[str, list[str]]:
  """(one-line summary, every key) of a checkpoint that does not fit the layout and model."""
  counts = f"{len(unexpected)} unexpected, {len(missing)} missing, {len(misshaped)} mis-shaped keys"
  if wrong_sobel:
    counts += f", {len(wrong_sobel)} wrong Sobel kernels"
  shaped = [
    f"{key}: checkpoint {theirs}, {whose} expects {ours}" for key, theirs, ours, whose in misshaped
  ]
  guesses = [name for name in key_tables.guess_layouts(state) if name != spec.name]
  if guesses and (unexpected or missing):
    cause = (
      f"it looks like a {' / '.join(repr(g) for g in guesses)} checkpoint; convert it with that "
      "--layout and a config of that variant"
    )
  elif any(key.startswith("predictor") for key, *_ in misshaped):
    cause = "the predictor shapes differ: check model.num_classes (CTO checkpoints are 2-class)"
  elif misshaped and _narrower([(ours, theirs) for _, theirs, ours, _ in misshaped]):
    cause = (
      f"the model is narrower than the checkpoint: {WIDTH_FIELDS} must keep the upstream "
      "widths of configs/default.py (a narrowed config such as configs/test.py cannot load it)"
    )
  elif wrong_sobel and not (unexpected or missing or misshaped):
    cause = "the checkpoint's frozen Sobel kernels are not the Sobel constants (edited weights?)"
  else:
    cause = (
      f"the checkpoint holds another network than the config builds; compare the config's "
      f"model.variant and model fields with the checkpoint, or pick another --layout than "
      f"{spec.name!r}"
    )
  head = f"{origin} does not fit layout {spec.name!r} for this model"
  examples = _spread(
    [f"unexpected {item.split(' ')[0]}" for item in unexpected],
    [f"missing {item.split(' ')[0]}" for item in missing],
    shaped,
    [item.split(":")[0] + ": not the Sobel constants" for item in wrong_sobel],
  )
  details = []
  if unexpected or missing:
    looks = (
      f"It looks like a {' / '.join(repr(g) for g in guesses)} checkpoint. " if guesses else ""
    )
    first = lambda items: ", ".join(item.split(" ")[0] for item in items[:FIRST_KEYS])
    details.append(
      f"{looks}First keys that do not match: {first(unexpected) or '-'}; "
      f"first missing: {first(missing) or '-'}."
    )
  details += _describe(unexpected, "unexpected keys (not in the model)")
  details += _describe(missing, "missing keys (model leaves the checkpoint does not fill)")
  details += _describe(shaped, "mis-shaped keys")
  details += _describe(wrong_sobel, "frozen Sobel weights that are not the Sobel constants")
  return _summary(head, counts, examples, cause), details


def _torch_leaves(spec: key_tables.Layout, params: Mapping[str, Any], stats: Mapping[str, Any]):
  """Yields (torch key, collection, path, leaf) for our variables in module order: a module's
  parameters, then for a BatchNorm its running_mean/var and its num_batches_tracked (collection,
  path and leaf None)."""
  flat = {"params": _flatten(params), "batch_stats": _flatten(stats)}
  modules: dict[Path, list[Path]] = {}
  for path in flat["params"]:
    modules.setdefault(path[:-1], []).append(path)
  for module, paths in modules.items():
    for path in paths:
      yield _torch_key(spec, "params", path), "params", path, flat["params"][path]
    stat_paths = [module + (n,) for n in ("mean", "var") if module + (n,) in flat["batch_stats"]]
    for path in stat_paths:
      yield _torch_key(spec, "batch_stats", path), "batch_stats", path, flat["batch_stats"][path]
    if stat_paths:
      module_key = _torch_key(spec, "batch_stats", stat_paths[0]).rsplit(".", 1)[0]
      yield f"{module_key}.{naming.BN_COUNTER}", None, None, None


def _shapes_as(
  spec: key_tables.Layout,
  params: Mapping[str, Any],
  stats: Mapping[str, Any],
  flax_name: str,
  torch_prefix: str,
) -> key_tables.Extras:
  """The torch keys and shapes of our module `flax_name`, renamed to `torch_prefix`, as unused
  extras (upstream's dm4 has dm1's shapes, predictor4 predictor1's)."""
  extras = {}
  old_prefix = spec.to_torch_name(flax_name) + "."
  sub_params = {flax_name: params[flax_name]}
  sub_stats = {flax_name: stats[flax_name]} if flax_name in stats else {}
  for key, collection, path, leaf in _torch_leaves(spec, sub_params, sub_stats):
    new_key = f"{torch_prefix}.{key[len(old_prefix) :]}"
    if leaf is None:
      extras[new_key] = key_tables.ExtraKey((), key_tables.UNUSED, np.int64)
    else:
      extras[new_key] = key_tables.ExtraKey(
        _torch_shape(collection, path, leaf.shape), key_tables.UNUSED
      )
  return extras


def check_structure(variables: Mapping[str, Any], layout: str) -> None:
  """Raises PortingError unless `variables` have exactly the canonical structure of `layout`
  (paths and shapes; constructor arguments such as num_classes are read off the variables)."""
  spec = key_tables.get_layout(layout)
  target = _target_name(spec, variables)
  ours = _collections(variables, target)
  try:
    expected_tree = spec.structure(variables["params"][target] if target else variables["params"])
  except (KeyError, TypeError, IndexError, ValueError) as error:
    raise PortingError(
      f"variables do not have the {layout!r} layout: cannot read its "
      f"dimensions ({type(error).__name__}: {error})"
    ) from None
  expected = _collections(expected_tree, None)
  unexpected, missing, misshaped, shapes = [], [], [], []
  for collection in COLLECTIONS:
    for path, leaf in ours[collection].items():
      if path not in expected[collection]:
        unexpected.append(f"unexpected {collection} {'/'.join(path)} {tuple(leaf.shape)}")
      elif tuple(leaf.shape) != tuple(expected[collection][path].shape):
        shapes.append((tuple(leaf.shape), tuple(expected[collection][path].shape)))
        misshaped.append(
          f"mis-shaped {collection} {'/'.join(path)}: {shapes[-1][0]}, layout "
          f"expects {shapes[-1][1]}"
        )
    for path, leaf in expected[collection].items():
      if path not in ours[collection]:
        missing.append(f"missing {collection} {'/'.join(path)} {tuple(leaf.shape)}")
  problems = unexpected + missing + misshaped
  if not problems:
    return
  if misshaped and not (unexpected or missing) and _narrower(shapes):
    cause = (
      f"the model is narrower than the upstream layout: {WIDTH_FIELDS} must keep the upstream "
      "widths of configs/default.py to export (a narrowed model such as configs/test.py or "
      "configs/demo.py has no upstream counterpart)"
    )
  else:
    cause = (
      f"the variables hold another network than the {layout!r} layout; export them with the "
      "layout of the variant they were trained as"
    )
  counts = (
    f"{len(problems)} differences ({len(misshaped)} mis-shaped, {len(missing)} missing, "
    f"{len(unexpected)} unexpected)"
  )
  head = f"variables do not have the {layout!r} layout ({spec.description})"
  raise PortingError(
    _summary(head, counts, _spread(misshaped, missing, unexpected), cause),
    [f"  {problem}" for problem in problems],
  )


def export_torch(variables: Mapping[str, Any], layout: str) -> ExportResult:
  """Our variables -> the full upstream state dict of `layout` ({key: numpy array}).

  Every leaf we hold is written bit-exactly (conv kernels transposed back), BatchNorm
  num_batches_tracked as 0, frozen Sobel kernels as the exact constants, and modules upstream
  defines but never calls as placeholders (zeros; BN running_var ones). The variables are first
  checked against the layout's canonical structure, so the result loads into the upstream module
  with `load_state_dict(strict=True)`.
  """
  spec = key_tables.get_layout(layout)
  check_structure(variables, layout)
  target = _target_name(spec, variables)
  params = variables["params"][target] if target else variables["params"]
  stats = variables.get("batch_stats", {})
  stats = stats.get(target, {}) if target else stats
  state: dict[str, np.ndarray] = {}
  held = counters = 0
  for key, _, path, leaf in _torch_leaves(spec, params, stats):
    if leaf is None:
      state[key] = np.zeros((), np.int64)
      counters += 1
      continue
    value = np.asarray(leaf)
    state[key] = naming.kernel_to_torch(value) if path[-1] == "kernel" else value
    held += 1
  extras = spec.extras(params, lambda name, prefix: _shapes_as(spec, params, stats, name, prefix))
  sobel, placeholders = [], []
  for key, extra in extras.items():
    if key in state:
      raise PortingError(f"layout {layout!r}: extra key {key} collides with a model key")
    state[key] = extra.placeholder(key)
    (sobel if extra.kind in key_tables.SOBEL_KERNELS else placeholders).append(key)
  audit = ExportAudit(
    layout=spec.name,
    written=len(state),
    held=held,
    counters=counters,
    sobel_constants=tuple(sobel),
    placeholders=tuple(placeholders),
  )
  return ExportResult(state, audit)
