"""Functional knockouts (docs/ablations.md): each equals a network built without the component.

The knocked-out SGD-Net is compared with the variant that lacks the component, given the trained
parameters mapped onto it (shared ones copied, a 1x1 conv that also fed the removed branch sliced,
a bias folded); `guidance=shuffle`, which no network reproduces, against a forward pass assembled
by hand. Then `ablate` end to end on a tiny dataset.
"""

import json
import pathlib

import flax
import flax.linen as nn
import jax
import numpy as np
import pytest

from configs import common
from sgdnet_jax import main, models
from sgdnet_jax.core import config_utils, errors
from sgdnet_jax.inference import evaluate
from sgdnet_jax.models import knockouts, sge
from sgdnet_jax.study import ablate
from sgdnet_jax.workdir import guard, layout, variables_io
from tests import train_helpers

BATCH = 3
SIZE = train_helpers.IMAGE_SIZE
SKIPS = ("x1", "x2", "x3")
# float32 rounding of a reordered reduction, relative to the logits' scale: the sliced or
# re-biased 1x1 convolutions sum the same products in a possibly different order; the difference
# then passes through the decoder's convolutions (reductions of up to 9 * 64 terms).
RELATIVE_TOLERANCE = 9 * 64 * np.finfo(np.float32).eps


def model_config(variant: str, knockout_names=(), **fields):
  """The tiny model of `variant`; layer scales 1 so that the SGDC branches weigh in the output."""
  config = common.tiny_model_config(variant, 1)
  config.backbone_depth = 14  # one encoder block a stage: the knockouts act after the encoder
  config.trans_patch_sizes = (8, 4, 2, 1)
  config.sgdc.layer_scale_init = 1.0
  config.knockouts = tuple(knockout_names)
  for dotted, value in fields.items():
    config_utils.set_path(config, dotted, value)
  return config


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(1).normal(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32)


def random_variables(config, images, seed: int) -> dict:
  """Variables of `config`'s network drawn with numpy (no compiled init: tracing only).

  Kernels ~ N(0, 1 / fan_in), biases and scalar gains small, scales near 1 (layer scales 1, so
  that the SGDC branches weigh in the output), BN statistics near (0, 1).
  """
  network = models.build(config)
  shapes = jax.eval_shape(lambda k: network.init(k, images, train=False), jax.random.key(0))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name == "kernel":
      value = rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))
    elif name in ("scale", "ls1", "ls2"):
      value = 1 + 0.1 * rng.normal(size=shape)
    elif name == "var":
      value = rng.uniform(0.5, 1.5, size=shape)
    else:  # biases, BN means, the attention gains
      value = 0.1 * rng.normal(size=shape)
    return value.astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, flax.core.unfreeze(shapes))


@pytest.fixture(scope="module")
def sgdnet_variables(images):
  return random_variables(model_config("sgdnet"), images, seed=0)


def outputs(config, variables, images) -> np.ndarray:
  """o1, o2, o3 logits stacked (3, B, H, W, 1); op by op (a compile costs more than a pass)."""
  result = models.build(config).apply(variables, images, train=False)
  return np.stack([np.asarray(result[k]) for k in ("o1", "o2", "o3")])


def assert_same_network(knocked_out, reference):
  scale = np.abs(reference).max()
  np.testing.assert_allclose(knocked_out, reference, rtol=0, atol=RELATIVE_TOLERANCE * scale)


def assert_fits(config, variables, images):
  """`variables` have exactly the tree and shapes `config`'s network initialises."""
  network = models.build(config)
  expected = jax.eval_shape(lambda k: network.init(k, images, train=False), jax.random.key(0))
  shapes = lambda tree: jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)
  assert shapes(flax.core.unfreeze(expected)) == shapes(variables)


def copied(variables) -> dict:
  """A deep copy of a variables tree as nested dicts of numpy arrays (free to edit)."""
  return jax.tree_util.tree_map(np.array, flax.core.unfreeze(variables))


def mapped(variables, edit) -> dict:
  """A copy of `variables` with `edit(block_params, channels)` applied to each SGDC block."""
  copy = copied(variables)
  for name in SKIPS:
    block = copy["params"]["sgdc"][name]
    edit(block, block["ls1"].shape[0])
  return copy


def test_which_knockouts_act_on_which_variant():
  every = set(knockouts.KNOCKOUTS)
  guidance = {knockouts.GUIDANCE_ZERO, knockouts.GUIDANCE_SHUFFLE}
  sgdc = {knockouts.SGDC_DYNAMIC_OFF, knockouts.SGDC_LOCAL_OFF, knockouts.SGDC_IDENTITY}
  expected = {
    "sgdnet": guidance | sgdc,
    "sgdc_paper_eq": guidance | sgdc,
    "cto": {knockouts.EDGE_OFF},
    "baseline": set(),
    "sge_add": guidance,
    "sge_contmix": guidance,
    "sgdc_self_guidance": sgdc,
    "sgdc_no_local": guidance | sgdc - {knockouts.SGDC_LOCAL_OFF},
    "sgdc_no_dynamic": guidance | sgdc - {knockouts.SGDC_DYNAMIC_OFF},
  }
  for variant, acting in expected.items():
    assert set(knockouts.applicable(model_config(variant))) == acting, variant
    for knockout in every - acting:  # refused with the reason, never a silent no-op
      with pytest.raises(errors.ConfigError, match=f"{knockout} does not apply to variant"):
        models.build(model_config(variant, (knockout,)))
  with pytest.raises(errors.ConfigError, match="unknown knockout 'sgdc=off'"):
    models.build(model_config("sgdnet", ("sgdc=off",)))


def test_shuffle_is_one_seeded_cycle_through_the_batch():
  for batch in range(2, 9):
    sources = knockouts.shuffle_sources(batch)
    assert sorted(sources) == list(range(batch))
    assert not np.any(sources == np.arange(batch)), "an image kept its own guidance"
    order, seen = [0], {0}
    while sources[order[-1]] not in seen:  # following the sources visits every image once
      seen.add(int(sources[order[-1]]))
      order.append(int(sources[order[-1]]))
    assert len(order) == batch
    np.testing.assert_array_equal(sources, knockouts.shuffle_sources(batch))


def test_sgdc_dynamic_off_is_the_network_without_dynamic_branch(sgdnet_variables, images):
  def drop_dynamic(block, channels):  # attn = [gate1 | gate2 | kernel logits]; keep gate1
    block["attn"]["kernel"] = block["attn"]["kernel"][..., :channels]
    block["attn"]["bias"] = block["attn"]["bias"][:channels]
    del block["norm1"]  # LN(x) fed only the dynamic branch (official form)

  reference_config = model_config("sgdc_no_dynamic")
  variables = mapped(sgdnet_variables, drop_dynamic)
  assert_fits(reference_config, variables, images)
  knocked_out = outputs(
    model_config("sgdnet", [knockouts.SGDC_DYNAMIC_OFF]), sgdnet_variables, images
  )
  assert_same_network(knocked_out, outputs(reference_config, variables, images))


def test_sgdc_local_off_is_the_network_without_local_branch(sgdnet_variables, images):
  def drop_local(block, channels):  # keep gate2 and the kernel logits
    block["attn"]["kernel"] = block["attn"]["kernel"][..., channels:]
    block["attn"]["bias"] = block["attn"]["bias"][channels:]
    del block["dwconv"]

  reference_config = model_config("sgdc_no_local")
  variables = mapped(sgdnet_variables, drop_local)
  assert_fits(reference_config, variables, images)
  knocked_out = outputs(
    model_config("sgdnet", [knockouts.SGDC_LOCAL_OFF]), sgdnet_variables, images
  )
  assert_same_network(knocked_out, outputs(reference_config, variables, images))


def test_sgdc_identity_is_the_network_without_skip_fusion(sgdnet_variables, images):
  reference_config = model_config("sgdnet", skip_fusion="none")
  variables = copied(sgdnet_variables)
  del variables["params"]["sgdc"]
  assert_fits(reference_config, variables, images)
  knocked_out = outputs(model_config("sgdnet", [knockouts.SGDC_IDENTITY]), sgdnet_variables, images)
  np.testing.assert_array_equal(knocked_out, outputs(reference_config, variables, images))


def test_guidance_zero_is_self_guidance_with_the_projection_bias_folded(sgdnet_variables, images):
  def fold_projection(block, channels):  # attn(x + b) = W x + (W b + c)
    bias = block.pop("proj_guidance")["bias"]
    kernel = block["attn"]["kernel"][0, 0]
    block["attn"]["bias"] = block["attn"]["bias"] + bias @ kernel

  reference_config = model_config("sgdc_self_guidance")
  variables = mapped(sgdnet_variables, fold_projection)
  assert_fits(reference_config, variables, images)
  knocked_out = outputs(model_config("sgdnet", [knockouts.GUIDANCE_ZERO]), sgdnet_variables, images)
  assert_same_network(knocked_out, outputs(reference_config, variables, images))
  intact = outputs(model_config("sgdnet"), sgdnet_variables, images)
  assert np.abs(knocked_out - intact).max() > 1e3 * RELATIVE_TOLERANCE * np.abs(intact).max()


def test_guidance_shuffle_is_the_intact_network_fed_permuted_guidance(sgdnet_variables, images):
  # No parameters make an image's skips read another image's guidance, so the reference puts
  # the intact guidance maps, permuted as defined, in place of the SGE's output.
  intact = models.build(model_config("sgdnet"))
  intact_outputs = intact.apply(sgdnet_variables, images, train=False)
  permuted = intact_outputs["aux"]["guidance"][knockouts.shuffle_sources(BATCH)]

  def swap_guidance(method, args, kwargs, context):
    result = method(*args, **kwargs)
    if isinstance(context.module, sge.StructureGuidanceExtractor):
      return {**result, "guidance": permuted}
    return result

  with nn.intercept_methods(swap_guidance):
    by_hand = intact.apply(sgdnet_variables, images, train=False)
  knocked_out = models.build(model_config("sgdnet", [knockouts.GUIDANCE_SHUFFLE]))
  result = knocked_out.apply(sgdnet_variables, images, train=False)
  for key in ("o1", "o2", "o3"):
    np.testing.assert_array_equal(np.asarray(result[key]), np.asarray(by_hand[key]))
  assert not np.array_equal(np.asarray(result["o1"]), np.asarray(intact_outputs["o1"]))


def test_edge_off_is_the_baseline_network(images):
  variables = random_variables(model_config("cto"), images, seed=2)
  reference_config = model_config("baseline")
  stripped = copied(variables)
  for collection in ("params", "batch_stats"):  # the EAM and the Sobel gates feeding it
    for name in [n for n in stripped[collection] if n == "eam" or n.startswith("sobel_")]:
      del stripped[collection][name]
  assert_fits(reference_config, stripped, images)
  knocked_out = outputs(model_config("cto", [knockouts.EDGE_OFF]), variables, images)
  np.testing.assert_array_equal(knocked_out, outputs(reference_config, stripped, images))


def test_ablate_writes_the_report_with_the_intact_evaluation_as_plain_evaluate(images, tmp_path):
  data_dir = train_helpers.tiny_dataset(tmp_path / "data")
  config = config_utils.load_config(
    "configs/test.py:variant=cto", train_helpers.overrides(data_dir, eval_batch_size=4)
  )
  variables = random_variables(config.model, images, seed=3)
  workdir = str(tmp_path / "converted")
  variables_io.save_variables(workdir, variables, config.to_dict())

  summary = ablate.ablate(config, workdir, "test", ablate.parse_knockouts("edge=off"))
  plain = tmp_path / "plain"
  evaluate.evaluate(config, workdir, "test", out_dir=str(plain))
  ablated = pathlib.Path(workdir, "ablate")
  for name in ("test.json", "test_cases.csv"):  # the intact evaluation is the plain one
    assert (plain / name).read_bytes() == (ablated / "intact/fold0/eval" / name).read_bytes()
  assert (ablated / "edge=off/fold0/eval/test_cases.csv").is_file()
  written = json.loads((ablated / "test.json").read_text())
  assert written["knockouts"] == {"edge=off": [knockouts.KNOCKOUTS["edge=off"]]}
  assert set(written["values"]) == {"intact", "edge=off"} == set(summary["values"])
  table = (ablated / "test/report.md").read_text()
  assert "baseline `intact`" in table and "| edge=off |" in table
  for metric in ("dice", "hd95"):
    assert (ablated / f"test/report_{metric}.png").is_file()
  with pytest.raises(errors.ConfigError, match="guidance=zero does not apply to variant 'cto'"):
    ablate.ablate(config, workdir, "test", ablate.parse_knockouts("guidance=zero"))


# --- The former name `lesions`: refused when given, mapped in a recorded config -----------------


def test_the_former_ablate_flag_is_refused_with_the_new_one(capsys, tmp_path):
  argv = ["ablate", "--config", "configs/test.py", "--workdir", str(tmp_path / "w")]
  assert main.main([*argv, "--lesions", "guidance=zero"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: --lesions is now --knockouts; run ablate with --knockouts")
  assert err.count("\n") == 1 and "guidance=zero" in err
  assert not (tmp_path / "w").exists()


def test_the_former_config_field_is_refused_naming_the_new_one(tmp_path):
  with pytest.raises(
    errors.ConfigError, match=r"^--config.model.lesions is now .*model\.knockouts"
  ):
    config_utils.load_config("configs/test.py", ["--config.model.lesions=('guidance=zero',)"])
  config_file = tmp_path / "old.py"
  config_file.write_text(
    "from configs import test\n\n\ndef get_config(arg=None):\n"
    "  config = test.get_config(arg)\n"
    "  config.model.lesions = ('guidance=zero',)\n"
    "  return config\n"
  )
  with pytest.raises(errors.ConfigError, match="sets config.model.lesions, which is now") as error:
    config_utils.load_config(str(config_file))
  assert "config.model.knockouts" in str(error.value) and "\n" not in str(error.value)


def test_a_workdir_recorded_with_the_former_field_stays_usable(tmp_path):
  """config.json written before the rename: its `model.lesions` reads as `model.knockouts`."""
  config = config_utils.load_config("configs/test.py")
  recorded = config.to_dict()
  recorded["model"]["lesions"] = list(recorded["model"].pop("knockouts"))
  workdir = tmp_path / "w"
  workdir.mkdir()
  layout.config_file(workdir).write_text(json.dumps(recorded))

  loaded = variables_io.load_config_dict(workdir)
  assert "lesions" not in loaded["model"] and loaded["model"]["knockouts"] == []
  assert guard.config_changes(loaded, config.to_dict()) == ([], [])
  guard.check_model_fits(config, [workdir])  # the same model: accepted
  config.model.knockouts = ("guidance=zero",)
  guard.check_and_record_config(workdir, config, write=True)  # a non-structural change
  assert json.loads(layout.config_file(workdir).read_text())["model"]["knockouts"] == [
    "guidance=zero"
  ]
  config.model.decoder_channels += 1
  with pytest.raises(errors.UserError, match="holds a different model"):
    guard.check_model_fits(config, [workdir])
