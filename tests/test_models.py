"""Model structure: exact parameter counts, GMACs, variant shapes, SGDC implementations, Sobel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common, default
from sgdnet_jax import models
from sgdnet_jax.models import cto, layers, res2net, sgdc, sge, summary
from sgdnet_jax.train import losses
from tests import tolerances


def _params(module, *shapes, **kwargs):
  args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
  return jax.eval_shape(lambda *a: module.init(jax.random.PRNGKey(0), *a, **kwargs), *args)


@pytest.mark.parametrize("variant,expected", [("sgdnet", 74_006_043), ("cto", 59_773_848)])
def test_full_model_parameter_counts_match_spec(variant, expected):
  variables = summary.abstract_variables(models.build(common.model_config(variant, 2)), 256)
  assert summary.count(variables["params"]) == expected


def test_one_class_head_has_65_fewer_parameters_per_predictor():
  two = summary.abstract_variables(models.build(common.model_config("sgdnet", 2)), 256)
  one = summary.abstract_variables(models.build(common.model_config("sgdnet", 1)), 256)
  assert summary.count(two["params"]) - summary.count(one["params"]) == 3 * 65


def test_submodule_parameter_counts_match_spec():
  variables = summary.abstract_variables(models.build(common.model_config("sgdnet", 2)), 256)
  counts = {name: summary.count(tree) for name, tree in variables["params"].items()}
  assert counts["resnet"] == 23_669_352
  assert summary.count(variables["batch_stats"]["resnet"]) == 59_620
  assert counts["sge"] == 1_916_160
  assert counts["multi_trans"] == 1_969_152
  assert counts["head"] == 31_461_586
  sgdc_counts = {k: summary.count(v) for k, v in variables["params"]["sgdc"].items()}
  assert sgdc_counts == {"x1": 715_972, "x2": 2_742_468, "x3": 10_727_620}
  assert [counts[f"dm{i}"] for i in (1, 2, 3)] == [185_605] * 3
  assert [counts[f"reduce{i}"] for i in (1, 2, 3, 4)] == [16_576, 32_960, 65_728, 131_264]


def test_sgdc_standalone_counts():
  for dim, expected in ((256, 715_972), (512, 2_742_468), (1024, 10_727_620)):
    variables = _params(sgdc.SGDC(), (1, 8, 8, dim), (1, 8, 8, 16), train=False)
    assert summary.count(variables["params"]) == expected


def test_res2net101_option_builds():
  config = common.model_config("baseline", 1)
  config.backbone_depth = 101
  variables = _params(res2net.Res2Net(101), (1, 64, 64, 3), train=False)
  # Res2Net-50 plus 17 more layer3 blocks of 1,147,504 parameters each.
  assert summary.count(variables["params"]) == 23_669_352 + 17 * 1_147_504


@pytest.mark.parametrize("variant,paper,tolerance", [("sgdnet", 36.23, 0.01), ("cto", 22.70, 0.02)])
def test_paper_convention_gmacs(variant, paper, tolerance):
  module = models.build(common.model_config(variant, 2))
  variables = summary.abstract_variables(module, 256)
  gmacs = summary.gmacs_paper(
    module, variables, module_config := common.model_config(variant, 2), 256
  )
  assert abs(gmacs - paper) / paper < tolerance, (variant, gmacs, module_config.variant)


@pytest.mark.parametrize("variant", sorted(default.VARIANTS))
@pytest.mark.parametrize("num_classes", [1, 2])
def test_every_variant_output_shapes(variant, num_classes):
  config = common.tiny_model_config(variant, num_classes)
  config.backbone_depth = 14  # one block a stage: the same stage shapes, a third of the tracing
  module = models.build(config)
  images = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x), images)
  for train in (False, True):
    out = jax.eval_shape(
      lambda v, x: module.apply(
        v,
        x,
        train=train,
        mutable=["batch_stats"] if train else False,
        rngs={"dropout": jax.random.PRNGKey(1)},
      ),
      variables,
      images,
    )
    out = out[0] if train else out
    for key in ("o1", "o2", "o3"):
      assert out[key].shape == (2, 64, 64, num_classes) and out[key].dtype == jnp.float32
    has_edge = default.VARIANTS[variant].get("edge_branch", "sge") != "none"
    assert ("edge" in out) == has_edge
    if has_edge:
      assert out["edge"].shape == (2, 64, 64, 1)
    assert out["aux"]["x1"].shape == (2, 16, 16, 64) and out["aux"]["x4"].shape == (2, 2, 2, 512)
    assert ("guidance" in out["aux"]) == (variant not in ("cto", "baseline"))


@pytest.mark.parametrize("variant", ["sgdnet", "cto"])
def test_float64_model_computes_everything_in_float64(variant, x64):
  """Parameters, BN statistics, outputs, the loss and its gradient: no float32 on the way (the
  float32 input image is the only float32 value in the traced train step)."""
  config = common.tiny_model_config(variant, 1)
  config.dtype = "float64"
  config.backbone_depth = 14  # every kind of layer, a third of the tracing
  module = models.build(config)
  images = jnp.zeros((2, 32, 32, 3), jnp.float32)
  mask = jnp.zeros((2, 32, 32), jnp.uint8)
  variables = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), images))
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)} == {jnp.dtype("float64")}

  def loss(params, batch_stats):
    outputs, _ = module.apply(
      {"params": params, "batch_stats": batch_stats},
      images,
      train=True,
      mutable=["batch_stats"],
      rngs={"dropout": jax.random.PRNGKey(1)},
    )
    assert outputs["o1"].dtype == jnp.float64
    return losses.total_loss(outputs, mask, default.get_config().loss)[0]

  jaxpr = jax.make_jaxpr(jax.value_and_grad(loss))(variables["params"], variables["batch_stats"])
  assert jaxpr.out_avals[0].dtype == jnp.float64
  assert _float32_results(jaxpr.jaxpr) == [], "an operation computes in float32"


def _float32_results(jaxpr) -> list[str]:
  """Primitives with a float32 result anywhere in `jaxpr`, nested jaxprs (loops, jit) included."""
  found = []
  for eqn in jaxpr.eqns:
    if any(getattr(v.aval, "dtype", None) == jnp.float32 for v in eqn.outvars):
      found.append(str(eqn.primitive))
    for param in eqn.params.values():
      for inner in param if isinstance(param, (tuple, list)) else [param]:
        inner = getattr(inner, "jaxpr", inner)
        if hasattr(inner, "eqns"):
          found += _float32_results(inner)
  return found


def test_float64_needs_64_bit_jax():
  config = common.tiny_model_config("baseline", 1)
  config.dtype = "float64"
  with pytest.raises(ValueError, match="jax_enable_x64"):
    models.build(config)


def test_build_rejects_inconsistent_configs():
  config = common.tiny_model_config("sgdnet", 1)
  config.edge_branch = "none"
  with pytest.raises(ValueError, match="skip_fusion='sgdc' needs model.edge_branch='sge'"):
    models.build(config)
  config = common.tiny_model_config("sgdnet", 3)
  with pytest.raises(ValueError, match="num_classes"):
    models.build(config)
  with pytest.raises(ValueError, match="model.variant"):
    common.model_config("sgdc_everything", 1)


def test_patch_sizes_must_divide_the_transformer_input():
  config = common.tiny_model_config("baseline", 1)
  config.trans_patch_sizes = (32, 16, 8, 4)
  module = models.build(config)
  with pytest.raises(ValueError, match="trans_patch_sizes"):
    jax.eval_shape(
      lambda x: module.init(jax.random.PRNGKey(0), x),
      jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32),
    )


@pytest.mark.parametrize("heads,kernel", [(4, 7), (2, 3)])
def test_sgdc_dynamic_implementations_agree_in_values_and_gradients(heads, kernel):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 9, 7, 16)), jnp.float32)
  logits = jnp.asarray(rng.normal(size=(2, 9, 7, heads, kernel * kernel)), jnp.float32)
  kernels = jax.nn.softmax(logits, -1)
  weights = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  a, patches_vjp = jax.vjp(sgdc.dynamic_conv_patches, x, kernels)
  b, shifted_vjp = jax.vjp(sgdc.dynamic_conv_shifted, x, kernels)
  # float32 sums of products on both sides (kernel^2 taps, or C / heads channels for the kernel
  # gradient); the same maps on absolute values bound the products' sizes.
  terms = max(kernel * kernel, x.shape[-1] // heads)
  sizes = [sgdc.dynamic_conv_patches(jnp.abs(x), kernels)]
  sizes += jax.vjp(sgdc.dynamic_conv_patches, jnp.abs(x), kernels)[1](jnp.abs(weights))
  for u, v, size in zip([a, *patches_vjp(weights)], [b, *shifted_vjp(weights)], sizes):
    bound = 2 * tolerances.rounding(np.float32, terms, np.asarray(size))
    np.testing.assert_array_less(np.abs(np.asarray(u) - np.asarray(v)), bound + 1e-38)


def test_sgdc_module_implementations_agree_end_to_end(x64):
  # float64 through LayerNorms, a softmax and the MLP: the two implementations agree to the
  # float64 bound of tests/conftest.py, relative to the O(1) outputs and gradients.
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 16)), jnp.float64)
  g = jnp.asarray(rng.normal(size=(2, 16, 16, 4)), jnp.float64)
  shifted, patches = (
    sgdc.SGDC(kernel_size=5, impl="shifted", dtype=jnp.float64),
    sgdc.SGDC(kernel_size=5, impl="patches", dtype=jnp.float64),
  )
  variables = shifted.init(jax.random.PRNGKey(0), x, g, train=False)
  # Large layer scales so the dynamic branch dominates the output.
  variables = jax.tree_util.tree_map_with_path(
    lambda path, v: jnp.ones_like(v) if path[-1].key in ("ls1", "ls2") else v, variables
  )
  loss = lambda m: lambda v, x: jnp.sum(jnp.sin(m.apply(v, x, g, train=False)))
  forward = lambda m: jax.jit(lambda v, x: m.apply(v, x, g, train=False))
  out = forward(shifted)(variables, x)
  assert out.dtype == jnp.float64
  np.testing.assert_allclose(
    out, forward(patches)(variables, x), rtol=0, atol=tolerances.FLOAT64_AGREEMENT
  )
  for u, v in zip(
    jax.tree_util.tree_leaves(jax.jit(jax.grad(loss(shifted), (0, 1)))(variables, x)),
    jax.tree_util.tree_leaves(jax.jit(jax.grad(loss(patches), (0, 1)))(variables, x)),
  ):
    scale = max(1.0, float(np.max(np.abs(v))))
    np.testing.assert_allclose(u, v, rtol=0, atol=tolerances.FLOAT64_AGREEMENT * scale)


def test_sgdc_ablation_switches_change_the_parameter_head():
  x, g = (1, 8, 8, 32), (1, 8, 8, 16)
  attn = lambda **kw: _params(sgdc.SGDC(**kw), x, g, train=False)["params"]
  full = attn()
  assert full["attn"]["kernel"].shape == (1, 1, 32, 2 * 32 + 4 * 49)
  assert attn(local_branch=False)["attn"]["kernel"].shape[-1] == 32 + 4 * 49
  no_dynamic = attn(dynamic_branch=False)
  assert no_dynamic["attn"]["kernel"].shape[-1] == 32 and "norm1" not in no_dynamic
  assert "proj_guidance" not in attn(guidance="self")
  paper = attn(form="paper")
  assert "ls1" not in paper and "ls2" not in paper
  with pytest.raises(ValueError, match="cannot both be off"):
    attn(local_branch=False, dynamic_branch=False)


def test_sobel_kernels_are_constants_and_gradients_stay_finite_on_flat_maps():
  module = sge.StructureGuidanceExtractor(mid_channels=16, guide_channels=4)
  x4 = jnp.zeros((1, 2, 2, 32))
  x1 = jnp.zeros((1, 8, 8, 32))
  variables = module.init(jax.random.PRNGKey(0), x4, x1, train=False)
  names = {
    "/".join(str(k.key) for k in path)
    for path, _ in jax.tree_util.tree_flatten_with_path(variables["params"])[0]
  }
  assert not any("sobel" in n for n in names)
  # Every parameter is a learned layer of the official SGE; nothing 3x3 with C->C Sobel shape.
  assert sorted({n.split("/")[0] for n in names}) == [
    "fuse",
    "out_edge_map",
    "out_guidance",
    "refine1",
    "refine4",
    "s1_proj",
    "s4_proj",
  ]

  def loss(params, x4, x1):
    out = module.apply(
      {"params": params, "batch_stats": variables["batch_stats"]}, x4, x1, train=False
    )
    return jnp.sum(out["edge_logits"]) + jnp.sum(out["guidance"])

  # Flat input: magnitude exactly 0.
  grads = jax.jit(jax.grad(loss, (0, 1, 2)))(variables["params"], x4, x1)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
  gate = lambda s: jnp.sum(layers.sobel_gate(s, *layers.sobel_of_channel_sum(s)))
  gate_grad = jax.jit(jax.grad(gate))(jnp.ones((1, 5, 5, 3)))
  assert bool(jnp.all(jnp.isfinite(gate_grad)))


def test_channel_sum_sobel_equals_dense_sobel_convolution():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(2, 6, 7, 5)), jnp.float32)
  gx, gy = layers.sobel_of_channel_sum(x)
  for kernel, ours in ((layers.SOBEL_X, gx), (layers.SOBEL_Y, gy)):
    dense = jnp.broadcast_to(jnp.asarray(kernel)[:, :, None, None], (3, 3, 5, 5))
    ref = jax.lax.conv_general_dilated(
      x, dense, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    # float32: the dense convolution sums 9 x 5 products, ours 5 channels then 9 taps.
    size = jax.lax.conv_general_dilated(
      jnp.abs(x),
      jnp.abs(dense),
      (1, 1),
      ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    bound = 2 * tolerances.rounding(np.float32, 9 * 5, np.asarray(size))
    np.testing.assert_array_less(np.abs(jnp.broadcast_to(ours, ref.shape) - ref), bound + 1e-38)


def test_patch_tokens_round_trip():
  x = jnp.arange(2 * 8 * 8 * 3, dtype=jnp.float32).reshape(2, 8, 8, 3)
  tokens = cto._to_tokens(x, 4)
  assert tokens.shape == (2, 4, 48)
  np.testing.assert_array_equal(cto._from_tokens(tokens, 4, 8, 8), x)
