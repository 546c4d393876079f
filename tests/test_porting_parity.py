"""Parity of ported weights with the PyTorch reference (fp32, full width, 64x64 inputs).

One randomised upstream network per layout (SGD-Net candidate, CTO), every BatchNorm, LayerNorm,
PReLU, PAM alpha / CAM beta and SGDC layer scale set to non-trivial values. Each Flax network is
compiled once; every block (stem, stages x1..x4, transformer, DA head, SGE / EAM, SGDC x1..x3,
DM 1..3) is checked *in the network* (accumulated from the image) and *isolated* (the Flax block
fed the torch block's recorded input; the blocks CTO shares with SGD-Net in the SGD-Net case).
Logits must agree to 1e-4; block outputs, whose scale grows to tens, to 1e-4 relative to
max(1, max |torch|). Run with -s to see the tables.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn as torch_nn

from configs import common
from sgdnet_jax import models, porting
from sgdnet_jax.models import cto, res2net, sgdc, sge
from third_party.torch_reference import cto as torch_cto
from third_party.torch_reference import res2net as torch_res2net
from third_party.torch_reference import sgdnet as torch_sgdnet

PATCH_SIZES = (8, 4, 2, 1)  # x1 of a 64x64 input is 16x16
LOGIT_TOLERANCE = 1e-4
# Predictor weights are scaled so that the logits are O(1) (max |logit| about 2-3). The fp32 noise
# floor after ~70 layers is about 1e-5 relative: at the natural logit scale of about 10, torch fp32
# itself is 4e-5 to 9e-5 away from torch fp64 (and our fp32 as far), so 1e-4 would test rounding.
LOGIT_SCALE = 0.25
BLOCK_TOLERANCE = 1e-4  # relative to max(1, max |torch output|)
STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (planes, blocks, stride)


def _nhwc(t: torch.Tensor) -> jnp.ndarray:
  return jnp.asarray(t.detach().permute(0, 2, 3, 1).numpy())


def _figures(ours, theirs: torch.Tensor) -> tuple[float, float]:
  """(max abs error, max |torch|) of an NHWC Flax array against an NCHW torch tensor."""
  reference = theirs.detach().permute(0, 2, 3, 1).numpy()
  ours = np.asarray(ours)
  assert ours.shape == reference.shape, (ours.shape, reference.shape)
  return float(np.max(np.abs(ours - reference))), float(np.max(np.abs(reference)))


def _randomise(model: torch_nn.Module, x: torch.Tensor, seed: int) -> None:
  """Non-trivial weights everywhere, with activations kept at a moderate scale.

  BN running statistics are first calibrated on `x` (one train-mode pass, momentum 1) so that
  50 random layers do not blow up to 1e4, then perturbed per channel around the layer's mean
  variance; BN/LN affine, PReLU slopes, PAM alpha / CAM beta (0 at init) and SGDC layer scales
  (1e-6 at init) get values that make every branch count.
  """
  generator = torch.Generator().manual_seed(seed)
  uniform = lambda t, low, high: t.uniform_(low, high, generator=generator)
  batch_norms = [m for m in model.modules() if isinstance(m, torch_nn.BatchNorm2d)]
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, (torch_nn.BatchNorm2d, torch_nn.LayerNorm)):
        uniform(module.weight, 0.5, 1.5)
        module.bias.normal_(0.0, 0.1, generator=generator)
      elif isinstance(module, torch_nn.PReLU):
        uniform(module.weight, 0.05, 0.5)
    for name, parameter in model.named_parameters():
      if name.endswith(("pam.alpha", "cam.beta")):
        uniform(parameter, 0.3, 1.0)
      elif name.endswith(("ls1", "ls2")):
        uniform(parameter, 0.2, 1.0)
    for module in batch_norms:
      module.momentum = 1.0
    model.train()
    for module in model.modules():
      if isinstance(module, torch_nn.Dropout):
        module.eval()
    model(x)
    model.eval()
    for module in batch_norms:
      module.momentum = 0.1
      layer_var = module.running_var.mean()
      n = module.num_features
      module.running_mean.add_(0.2 * layer_var.sqrt() * torch.randn(n, generator=generator))
      module.running_var.copy_(layer_var * torch.empty(n).uniform_(0.5, 2.0, generator=generator))
    for index in (1, 2, 3):
      predictor = getattr(model, f"predictor{index}")
      predictor.weight.mul_(LOGIT_SCALE)
      predictor.bias.mul_(LOGIT_SCALE)


def _record(modules: dict[str, torch_nn.Module]):
  """Forward hooks keeping a copy of each module's inputs and output (ReLUs act in place)."""
  seen = {}

  def hook(name):
    def record(_, inputs, output):
      copy = lambda t: t.detach().clone()
      outputs = tuple(map(copy, output)) if isinstance(output, tuple) else copy(output)
      seen[name] = (tuple(map(copy, inputs)), outputs)

    return record

  handles = [module.register_forward_hook(hook(name)) for name, module in modules.items()]
  return seen, handles


class _Stage(nn.Module):
  """The Flax blocks `layer{index}_*` of one Res2Net stage (applied to the resnet variables)."""

  index: int
  planes: int
  blocks: int
  stride: int

  @nn.compact
  def __call__(self, x):
    for block in range(self.blocks):
      first = block == 0
      x = res2net.Bottle2neck(
        self.planes,
        self.stride if first else 1,
        stage=first,
        has_downsample=first,
        name=f"layer{self.index}_{block}",
      )(x, False)
    return x


class _CtoEdgeBranch(nn.Module):
  """CTO's Sobel gates on x1/x4 and the EAM, as `SGDNet` calls them (variant cto)."""

  @nn.compact
  def __call__(self, x4, x1):
    s1 = cto.sobel_gate(x1, False, 1)
    s4 = cto.sobel_gate(x4, False, 4)
    return cto.EdgeAttentionModule(64, name="eam")(s4, s1, False)


def _body_blocks(variables, inputs):
  """Isolated Flax blocks shared by SGD-Net and CTO, each on the torch block's input."""
  params, stats = variables["params"], variables["batch_stats"]
  sub = lambda name: {"params": params[name], "batch_stats": stats[name]}
  out = {}
  for index, (planes, blocks, stride) in enumerate(STAGES, start=1):
    stage = _Stage(index, planes, blocks, stride)
    out[f"x{index}"] = stage.apply(sub("resnet"), inputs[f"x{index}"])
  out["transformer"] = cto.PatchTransformer(PATCH_SIZES).apply(
    sub("multi_trans"), inputs["transformer"], train=False
  )
  out["da_head"] = cto.DualAttentionHead(2048).apply(sub("head"), inputs["da_head"], train=False)
  for level in (3, 2, 1):
    out[f"dm{level}"] = cto.DecoderModule(64).apply(
      sub(f"dm{level}"), *inputs[f"dm{level}"], train=False
    )
  return out


def _sgdnet_blocks(variables, inputs):
  out = _body_blocks(variables, inputs)
  params = variables["params"]
  sge_out = sge.StructureGuidanceExtractor().apply(
    {"params": params["sge"], "batch_stats": variables["batch_stats"]["sge"]},
    *inputs["sge"],
    train=False,
  )
  out["sge_edge"], out["sge_guidance"] = sge_out["edge_logits"], sge_out["guidance"]
  for name in ("x1", "x2", "x3"):
    out[f"sgdc_{name}"] = sgdc.SGDC().apply(
      {"params": params["sgdc"][name]}, *inputs[f"sgdc_{name}"], train=False
    )
  return out


def _cto_blocks(variables, inputs):
  """CTO's own block; its body blocks are SGD-Net's, checked isolated in the SGD-Net case."""
  return {"eam": _CtoEdgeBranch().apply(variables, *inputs["eam"])}


# Flax modules whose outputs the in-network comparison reads (besides outputs and aux).
CAPTURED = {
  ("resnet", "bn1"): "stem",
  ("multi_trans",): "transformer",
  ("head",): "da_head",
  ("sgdc",): "sgdc",
  ("dm1",): "dm1",
  ("dm2",): "dm2",
  ("dm3",): "dm3",
}


def _capture(module, method_name):
  return method_name == "__call__" and tuple(module.scope.path) in CAPTURED


def _run_case(variant: str, torch_class, seed: int):
  """Builds, randomises and runs the torch network and its Flax port; returns the figures."""
  torch.manual_seed(seed)
  reference = torch_class(2, patch_sizes=PATCH_SIZES)
  images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed + 1))
  _randomise(reference, images, seed + 2)
  resnet = reference.resnet
  recorded = {
    "stem": resnet.bn1,
    "transformer": reference.multi_trans,
    "da_head": reference.head,
    "edge": reference.eam,
  }
  recorded.update({f"x{i}": getattr(resnet, f"layer{i}") for i in (1, 2, 3, 4)})
  recorded.update({f"dm{i}": getattr(reference, f"dm{i}") for i in (1, 2, 3)})
  if variant == "sgdnet":
    recorded.update({f"sgdc_x{i}": reference.sgdc[f"x{i}"] for i in (1, 2, 3)})
  seen, handles = _record(recorded)
  with torch.no_grad():
    torch_outputs = dict(zip(("o3", "o2", "o1", "edge"), reference(images)))
  for handle in handles:
    handle.remove()

  config = common.model_config(variant, 2)
  config.trans_patch_sizes = PATCH_SIZES
  model = models.build(config)
  x = _nhwc(images)
  template = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)
  variables = porting.load_torch(reference.state_dict(), variant, template)
  audit = variables.audit
  apply = jax.jit(
    lambda v, x: model.apply(
      v, x, train=False, capture_intermediates=_capture, mutable=["intermediates"]
    )
  )
  outputs, state = apply(variables, x)
  captured = {
    CAPTURED[path]: value["__call__"][0]
    for path, value in _flat_intermediates(state["intermediates"]).items()
  }

  figures = {"network": {}, "isolated": {}}
  for name in ("o1", "o2", "o3", "edge"):
    figures["network"][name] = _figures(outputs[name], torch_outputs[name])
  for name in ("x1", "x2", "x3", "x4"):
    figures["network"][name] = _figures(outputs["aux"][name], seen[name][1])
  for name in ("stem", "transformer", "da_head", "dm1", "dm2", "dm3"):
    figures["network"][name] = _figures(captured[name], seen[name][1])
  inputs = {
    name: _nhwc(seen[name][0][0]) for name in ("x1", "x2", "x3", "x4", "transformer", "da_head")
  }
  inputs.update({f"dm{i}": tuple(map(_nhwc, seen[f"dm{i}"][0])) for i in (1, 2, 3)})
  if variant == "sgdnet":
    edge, guidance = seen["edge"][1]
    figures["network"]["sge_edge"] = _figures(outputs["aux"]["edge_logits"], edge)
    figures["network"]["sge_guidance"] = _figures(outputs["aux"]["guidance"], guidance)
    for i in (1, 2, 3):
      figures["network"][f"sgdc_x{i}"] = _figures(captured["sgdc"][i - 1], seen[f"sgdc_x{i}"][1])
      inputs[f"sgdc_x{i}"] = tuple(map(_nhwc, seen[f"sgdc_x{i}"][0]))
    inputs["sge"] = tuple(map(_nhwc, seen["edge"][0]))
    isolated = jax.jit(_sgdnet_blocks)(variables, inputs)
    torch_isolated = {"sge_edge": edge, "sge_guidance": guidance}
    torch_isolated.update({f"sgdc_x{i}": seen[f"sgdc_x{i}"][1] for i in (1, 2, 3)})
  else:
    figures["network"]["eam"] = _figures(outputs["aux"]["edge_logits"], seen["edge"][1])
    inputs["eam"] = (_nhwc(seen["x4"][1]), _nhwc(seen["x1"][1]))  # upstream gates raw x4, x1
    isolated = jax.jit(_cto_blocks)(variables, inputs)
    torch_isolated = {"eam": seen["edge"][1]}
  torch_isolated.update(
    {
      name: seen[name][1]
      for name in ("x1", "x2", "x3", "x4", "transformer", "da_head", "dm1", "dm2", "dm3")
      if name in isolated
    }
  )
  for name, value in isolated.items():
    figures["isolated"][name] = _figures(value, torch_isolated[name])
  figures["isolated"]["stem"] = figures["network"]["stem"]  # its input is the image
  _print_table(variant, figures)
  return {
    "reference": reference,
    "images": images,
    "torch_outputs": torch_outputs,
    "variables": variables,
    "audit": audit,
    "figures": figures,
  }


def _flat_intermediates(tree, prefix=()):
  flat = {}
  for name, value in tree.items():
    if name == "__call__":
      flat[prefix] = {"__call__": value}
    else:
      flat.update(_flat_intermediates(value, prefix + (name,)))
  return flat


def _print_table(variant, figures):
  print(f"\n{variant}: max abs error vs torch (fp32, 2x3x64x64)  [max |torch|]")
  print(f"{'block':<14}{'isolated':>12}{'in network':>14}{'scale':>10}")
  for name, (error, scale) in figures["network"].items():
    isolated = figures["isolated"].get(name)
    isolated_text = f"{isolated[0]:.2e}" if isolated else "-"
    print(f"{name:<14}{isolated_text:>12}{error:>14.2e}{scale:>10.2f}")


SGDNET_BLOCKS = (
  "stem",
  "x1",
  "x2",
  "x3",
  "x4",
  "transformer",
  "da_head",
  "sge_edge",
  "sge_guidance",
  "sgdc_x1",
  "sgdc_x2",
  "sgdc_x3",
  "dm3",
  "dm2",
  "dm1",
)
CTO_BLOCKS = ("stem", "x1", "x2", "x3", "x4", "transformer", "da_head", "eam", "dm3", "dm2", "dm1")


def _check_network(figures, blocks):
  """Every block within BLOCK_TOLERANCE (isolated where measured, and in the network), outputs
  within LOGIT_TOLERANCE; all failures reported at once."""
  failures = []
  for name in blocks:
    assert name in figures["network"], name
    for where in ("isolated", "network"):
      if name in figures[where]:
        error, scale = figures[where][name]
        if error > BLOCK_TOLERANCE * max(1.0, scale):
          failures.append(f"{name} ({where}): {error:.2e} at scale {scale:.2f}")
  for name in ("o1", "o2", "o3", "edge"):
    error, scale = figures["network"][name]
    if error > LOGIT_TOLERANCE:
      failures.append(f"{name}: {error:.2e}")
    assert scale > 0.3, name  # the outputs are not near-constant
  assert not failures, failures


def _check_round_trip(case, layout, torch_class):
  """torch -> flax -> torch is bit-exact on every key we hold, and loads with strict=True."""
  original = case["reference"].state_dict()
  exported, audit = porting.export_torch(case["variables"], layout)
  assert set(exported) == set(original)
  placeholders = set(audit.placeholders)
  for key, value in original.items():
    if key in placeholders or key.endswith("num_batches_tracked"):
      continue
    assert np.array_equal(exported[key], value.numpy()), key  # Sobel constants included
    assert exported[key].dtype == value.numpy().dtype, key
  assert audit.held == case["audit"].loaded

  rebuilt = torch_class(2, patch_sizes=PATCH_SIZES).eval()
  rebuilt.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
  with torch.no_grad():
    outputs = rebuilt(case["images"])
  for name, value in zip(("o3", "o2", "o1", "edge"), outputs):
    assert torch.equal(value, case["torch_outputs"][name]), name


# One test per network: each builds a full-width network pair, which must happen once per
# process (pytest-xdist would otherwise repeat a shared fixture on every worker).
def test_sgdnet_port_matches_torch():
  case = _run_case("sgdnet", torch_sgdnet.SGDNet, seed=0)
  _check_network(case["figures"], SGDNET_BLOCKS)
  _check_round_trip(case, "sgdnet", torch_sgdnet.SGDNet)
  audit = case["audit"]
  assert audit.layout == "sgdnet" and audit.loaded == 707 and audit.counters == 122
  assert set(audit.sobel_constants) == {
    "eam.sobel_x.weight",
    "eam.sobel_y.weight",
    "sobel_x2.0.weight",
    "sobel_y2.0.weight",
    "sobel_x3.0.weight",
    "sobel_y3.0.weight",
  }
  ignored_modules = {key.split(".")[0] for key in audit.ignored}
  assert ignored_modules == {
    "resnet",
    "fft",
    "sobel_x2",
    "sobel_y2",
    "sobel_x3",
    "sobel_y3",
    "erb_db_1",
    "erb_db_2",
    "erb_db_3",
    "erb_db_4",
    "reduce5",
    "dm4",
    "predictor4",
  }
  assert {k for k in audit.ignored if k.startswith("resnet.")} == {
    "resnet.fc.weight",
    "resnet.fc.bias",
  }
  assert audit.absent == () and audit.kept == ()


def test_cto_port_matches_torch():
  case = _run_case("cto", torch_cto.CTO, seed=10)
  _check_network(case["figures"], CTO_BLOCKS)
  _check_round_trip(case, "cto", torch_cto.CTO)
  assert len(case["audit"].sobel_constants) == 8  # sobel_{x,y}{1..4}.0.weight


# Train-mode BN normalises by statistics of few values (8 per channel at x4 here), which amplifies
# rounding: torch fp32 itself is 3e-4 (relative) from torch fp64 at x4, our fp32 2e-4.
TRAIN_TOLERANCE = 1e-3


def test_res2net_train_step_moves_batch_stats_like_torch():
  """One train-mode forward of the whole backbone: outputs and every running mean/var.

  Checks flax momentum 0.9 == torch momentum 0.1 and the unbiased running variance (at x4 the
  correction 8/7 is far above the tolerance)."""
  torch.manual_seed(20)
  reference = torch_res2net.res2net50_v1b_26w_4s()
  generator = torch.Generator().manual_seed(21)
  with torch.no_grad():
    for module in reference.modules():
      if isinstance(module, torch_nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5, generator=generator)
        module.bias.normal_(0.0, 0.1, generator=generator)
        module.running_mean.normal_(0.0, 0.5, generator=generator)
        module.running_var.uniform_(0.5, 2.0, generator=generator)
  images = torch.randn(2, 3, 64, 64, generator=generator)
  model = res2net.Res2Net(depth=50)
  x = _nhwc(images)
  template = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
  variables = porting.load_torch(reference.state_dict(), "res2net50_v1b", template).variables

  reference.train()
  with torch.no_grad():
    torch_features = reference(images)
  expected = porting.load_torch(reference.state_dict(), "res2net50_v1b", template).variables
  features, updates = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(
    variables, x
  )

  for name, value in zip(("x1", "x2", "x3", "x4"), torch_features):
    error, scale = _figures(features[name], value)
    assert error <= TRAIN_TOLERANCE * max(1.0, scale), (name, error, scale)
  errors = jax.tree.map(
    lambda a, b: float(np.max(np.abs(np.asarray(a) - b) / (1.0 + np.abs(b)))),
    updates["batch_stats"],
    expected["batch_stats"],
  )
  moved = jax.tree.map(
    lambda a, b: float(np.max(np.abs(a - b))), variables["batch_stats"], expected["batch_stats"]
  )
  leaves = jax.tree.leaves(errors)
  print(
    f"\nres2net train step: {len(leaves)} running statistics, max relative error {max(leaves):.2e}"
  )
  batch_norms = sum(isinstance(m, torch_nn.BatchNorm2d) for m in reference.modules())
  assert len(leaves) == 2 * batch_norms
  assert max(leaves) <= TRAIN_TOLERANCE
  assert min(jax.tree.leaves(moved)) > 1e-3  # every statistic did move
