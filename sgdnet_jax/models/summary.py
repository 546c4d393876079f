"""`summary`: parameter counts per module, BN statistics, constants, GMACs and executed FLOPs.

  python -m sgdnet_jax.main summary --config configs/isic2018.py:variant=sgdnet,num_classes=2

GMACs follow the paper's convention (multiply-accumulates of convolutions and matrix products,
counting the dense C->C Sobel convolutions the reference SGE executes, SPEC §0.2, §6); the executed
FLOPs are what XLA's cost analysis reports for the compiled eval forward.
"""

import math
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sgdnet_jax import models
from sgdnet_jax.core import compilation_cache

PAPER_GMACS = {"sgdnet": 36.23, "cto": 22.70}


def count(tree) -> int:
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))


def abstract_variables(module, image_size: int, batch: int = 1):
  """Variables as ShapeDtypeStructs: no memory, no compile."""
  images = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
  return jax.eval_shape(
    lambda x: module.init({"params": jax.random.PRNGKey(0)}, x, train=False), images
  )


def _sub_jaxprs(eqn) -> Iterator[Any]:
  for value in eqn.params.values():
    for item in value if isinstance(value, (list, tuple)) else (value,):
      if isinstance(item, jax.extend.core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jax.extend.core.Jaxpr):
        yield item


def _macs_of_jaxpr(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      out = eqn.outvars[0].aval.shape
      rhs = eqn.invars[1].aval.shape  # HWIO as written by our layers.
      spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, spatial...) positions.
      in_per_group = rhs[spec[1]]
      kernel = math.prod(rhs[i] for i in spec[2:])
      total += math.prod(out) * in_per_group * kernel
    elif name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in lhs_contract)
    for sub in _sub_jaxprs(eqn):
      total += _macs_of_jaxpr(sub)
  return total


def sobel_macs_paper(model_config, image_size: int) -> tuple[int, int]:
  """(dense Sobel MACs as the reference executes them, channel-sum MACs we execute instead)."""
  x1 = (image_size // 4) ** 2
  x4 = (image_size // 32) ** 2
  per_position = 2 * 9  # two 3x3 Sobel directions
  ours = per_position * (x1 + x4)
  if model_config.edge_branch == "sge":
    mid = model_config.sge.mid_channels
    return per_position * mid * mid * (x1 + x4), ours
  if model_config.edge_branch == "eam":
    planes = model_config.backbone_base_planes
    return per_position * (4 * planes * x1 + 32 * planes * x4), ours
  return 0, 0


def gmacs_paper(module, variables, model_config, image_size: int) -> float:
  images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  jaxpr = jax.make_jaxpr(lambda v, x: module.apply(v, x, train=False))(variables, images)
  dense, ours = sobel_macs_paper(model_config, image_size)
  return (_macs_of_jaxpr(jaxpr.jaxpr) - ours + dense) / 1e9


def flops_executed(module, variables, image_size: int) -> float:
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  compiled = (
    jax.jit(lambda v, x: module.apply(v, x, train=False)).lower(variables, images).compile()
  )
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis.get("flops", float("nan")))


def summarize(config, image_size: int = 256, compile_flops: bool = True) -> dict[str, Any]:
  """The summary record of `config.model` at batch 1 and `image_size` squared."""
  if compile_flops:
    compilation_cache.enable(config.compilation_cache_dir)
  module = models.build(config.model)
  variables = abstract_variables(module, image_size)
  params = variables["params"]
  result = {
    "variant": config.model.variant,
    "num_classes": config.model.num_classes,
    "image_size": image_size,
    "trainable_params": count(params),
    "batch_stats": count(variables.get("batch_stats", {})),
    "modules": {name: count(tree) for name, tree in params.items()},
    "constants": {
      "sobel_kernels": "2 fixed 3x3 kernels (Sobel x, y), not parameters"
      if config.model.edge_branch != "none"
      else "none"
    },
    "gmacs_paper": gmacs_paper(module, variables, config.model, image_size),
  }
  if compile_flops:
    result["flops_executed"] = flops_executed(module, variables, image_size)
  paper = PAPER_GMACS.get(config.model.variant)
  if paper:
    result["gmacs_paper_reported"] = paper
  return result


def print_table(result: dict[str, Any]):
  print(
    f"variant {result['variant']}  num_classes {result['num_classes']}  "
    f"input 1x{result['image_size']}x{result['image_size']}x3"
  )
  print(f"{'module':<16}{'trainable params':>18}")
  for name, value in sorted(result["modules"].items()):
    print(f"{name:<16}{value:>18,}")
  print(f"{'total':<16}{result['trainable_params']:>18,}")
  print(f"BatchNorm statistics: {result['batch_stats']:,} values")
  print(f"constants: {result['constants']['sobel_kernels']}")
  reported = result.get("gmacs_paper_reported")
  suffix = f" (paper reports {reported})" if reported else ""
  print(f"GMACs (paper convention): {result['gmacs_paper']:.3f}{suffix}")
  if "flops_executed" in result:
    print(f"executed GFLOPs (XLA cost analysis): {result['flops_executed'] / 1e9:.3f}")
