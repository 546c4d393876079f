"""Inference: the one probability function (TTA, ensembles) that evaluate, predict and the
export share; tiling, saved probabilities, post-processing, shares, `predict`."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from sgdnet_jax import models
from sgdnet_jax.cli import predict as predict_cli
from sgdnet_jax.core import config_utils, errors, sharding
from sgdnet_jax.data import augment
from sgdnet_jax.inference import ensemble, evaluate, postprocessing, predict, stablehlo, tiling
from sgdnet_jax.workdir import variables_io
from tests import train_helpers

EPS = float(np.finfo(np.float32).eps)
SIZE = train_helpers.IMAGE_SIZE


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """The baseline tiny model at 32 px, random variables, and a variables folder holding them."""
  config = config_utils.load_config(train_helpers.TRAIN_CONFIG, train_helpers.overrides(""))
  model = models.build(config.model)
  init = jax.jit(lambda key: model.init(key, jnp.zeros((1, SIZE, SIZE, 3)), train=False))
  variables = jax.tree_util.tree_map(np.asarray, init(jax.random.PRNGKey(0)))
  other = jax.tree_util.tree_map(np.asarray, init(jax.random.PRNGKey(1)))
  workdir = tmp_path_factory.mktemp("model")
  variables_io.save_variables(str(workdir), variables)
  twin = tmp_path_factory.mktemp("twin")
  variables_io.save_variables(str(twin), variables)
  images = np.random.default_rng(0).normal(size=(4, SIZE, SIZE, 3)).astype(np.float32)
  return dict(
    config=config,
    model=model,
    variables=variables,
    other=other,
    workdir=workdir,
    twin=twin,
    images=jnp.asarray(images),
  )


def test_tta_none_is_bit_identical_to_the_evaluate_forward(tiny):
  model, variables, x = tiny["model"], tiny["variables"], tiny["images"]
  # evaluate.make_probability_fn before TTA existed; predict now uses the same (the old predict
  # compiled the variables in as constants, which rounds differently by up to ~1e-6).
  evaluate_forward = jax.jit(
    lambda v, x: models.foreground_probability(model.apply(v, x, train=False)["o1"])
  )
  expected = np.asarray(evaluate_forward(variables, x))
  np.testing.assert_array_equal(
    np.asarray(ensemble.probability_fn(model, "none")([variables], x)["probability"]), expected
  )
  maps = ensemble.probability_fn(model, "none", edge=True)([variables], x)
  np.testing.assert_array_equal(np.asarray(maps["probability"]), expected)
  np.testing.assert_array_equal(np.asarray(maps["edge"]), 0)  # the baseline has no edge map


def test_evaluate_predict_and_the_export_compute_one_probability(tiny):
  """Evaluate's jitted step, predict's forward and the exported function give the same bits.

  Flip TTA of one model and of a two-model ensemble (every TTA mode goes through the same
  `probability_maps`; the plain forward is checked bit for bit in
  `test_tta_none_is_bit_identical_to_the_evaluate_forward`).
  """
  model, variables, other = tiny["model"], tiny["variables"], tiny["other"]
  pixels = np.random.default_rng(5).integers(0, 256, (4, SIZE, SIZE, 3), np.uint8)
  x = jnp.asarray(augment.normalize(pixels))
  masks = jnp.zeros(x.shape[:3], jnp.int32)
  mesh = sharding.make_mesh(tiny["config"].mesh)
  for tta, variable_sets in (
    ("flip", [variables]),
    ("flip", [variables, other]),
  ):
    step = evaluate.make_eval_step(
      model, mesh, device_metrics=False, distances=False, one_empty="nan", tta=tta
    )
    evaluated = np.asarray(step(variable_sets, x, masks)["probability"])
    predicted = ensemble.probability_fn(model, tta, edge=True)(variable_sets, x)
    np.testing.assert_array_equal(np.asarray(predicted["probability"]), evaluated, err_msg=tta)
    if len(variable_sets) == 1:
      # The variables as arguments (as constants XLA would fold them and round anew); the export
      # normalises its uint8 input inside the program, where XLA fuses it into the first
      # convolution: a few float32 ulps of a probability.
      export = lambda v, images: stablehlo.probability_function(model, v, tta)(images)
      exported = np.asarray(jax.jit(export)(variables, pixels))[..., 0]
      np.testing.assert_allclose(exported, evaluated, rtol=0, atol=4 * EPS, err_msg=tta)
  # The ensemble is the mean of its members, not the first one.
  assert np.abs(evaluated - np.asarray(step([variables], x, masks)["probability"])).max() > 1e-4


def _hand_tta(run, x: np.ndarray, tta: str) -> np.ndarray:
  """The mean of `run` over the mirrored / rotated batches, each mapped back by hand."""
  if tta == "flip":
    predictions = [
      run(x),
      run(x[:, :, ::-1])[:, :, ::-1],
      run(x[:, ::-1])[:, ::-1],
      run(x[:, ::-1, ::-1])[:, ::-1, ::-1],
    ]
  else:
    predictions = [np.rot90(run(np.rot90(x, k, (1, 2))), -k, (1, 2)) for k in range(4)]
    mirrored = x[:, :, ::-1]
    predictions += [
      np.rot90(run(np.rot90(mirrored, k, (1, 2))), -k, (1, 2))[:, :, ::-1] for k in range(4)
    ]
  return np.mean(predictions, axis=0)


def test_tta_flip_of_the_model_is_the_mean_of_flipped_back_predictions(tiny):
  model, variables, x = tiny["model"], tiny["variables"], np.asarray(tiny["images"])
  plain = ensemble.probability_fn(model, "none")
  run = lambda images: np.asarray(plain([variables], jnp.asarray(images))["probability"])
  flip = ensemble.probability_fn(model, "flip")
  flipped = np.asarray(flip([variables], jnp.asarray(x))["probability"])
  # A mean of 4 values in [0, 1]: each addition and the division round by at most eps.
  np.testing.assert_allclose(flipped, _hand_tta(run, x, "flip"), rtol=0, atol=5 * EPS)
  assert np.abs(flipped - run(x)).max() > 100 * EPS  # the flips do change the prediction


@pytest.mark.parametrize("tta", ["flip", "flip_rot"])
def test_tta_maps_every_output_back_before_averaging(tta):
  """A cheap model without symmetry (a 3x3 convolution plus a position ramp), two outputs."""
  rng = np.random.default_rng(4)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 3, 2)), jnp.float32)
  ramp = jnp.asarray(np.add.outer(np.arange(16) * 0.2, np.arange(16) * 0.07), jnp.float32)

  def forward(x):
    y = jax.lax.conv_general_dilated(
      x, kernel, (1, 1), "SAME", None, None, ("NHWC", "HWIO", "NHWC")
    )
    return {"probability": jax.nn.sigmoid(y[..., 0] + ramp), "edge": y[..., 1] * ramp}

  x = rng.normal(size=(2, 16, 16, 3)).astype(np.float32)
  averaged = jax.jit(lambda x: ensemble.with_tta(forward, x, tta))(jnp.asarray(x))
  terms = {"flip": 5, "flip_rot": 9}[tta]  # additions and the division, each within eps
  for name in ("probability", "edge"):
    run = lambda images: np.asarray(jax.jit(forward)(jnp.asarray(images))[name])
    expected = _hand_tta(run, x, tta)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(averaged[name], expected, rtol=0, atol=terms * EPS * scale)


def test_ensemble_averages_the_models_probabilities(tiny):
  model, x = tiny["model"], tiny["images"]
  fn = lambda variable_sets: np.asarray(
    ensemble.probability_fn(model)(variable_sets, x)["probability"]
  )
  single = fn([tiny["variables"]])
  twins = fn([tiny["variables"], tiny["variables"]])
  np.testing.assert_array_equal(twins, single)  # (p + p) / 2 == p exactly
  pair = fn([tiny["variables"], tiny["other"]])
  expected = (single + fn([tiny["other"]])) / 2
  np.testing.assert_allclose(pair, expected, rtol=0, atol=EPS)
  assert np.abs(pair - single).max() > 100 * EPS
  wrong = jax.tree_util.tree_map(lambda a: a[..., :1], tiny["other"])
  with pytest.raises(errors.UserError, match="--workdir b: its model differs"):
    ensemble.check_same_structure([tiny["variables"], wrong], ["a", "b"])


def _per_pixel(windows: np.ndarray) -> dict[str, np.ndarray]:
  """A model whose output at a pixel depends on that pixel only."""
  return {
    "probability": 1 / (1 + np.exp(-windows.sum(-1))),
    "edge": np.tanh(windows[..., 0] * windows[..., 1]),
  }


@pytest.mark.parametrize("shape", [(70, 45), (20, 50), (32, 32), (33, 97)])
def test_tiles_of_a_per_pixel_model_blend_to_its_untiled_map(shape):
  image = np.random.default_rng(1).normal(size=(*shape, 3)).astype(np.float32)
  expected = _per_pixel(image[None])
  tiled = tiling.predict_tiled(_per_pixel, image, 32, 0.5, 3)
  for name in ("probability", "edge"):
    assert tiled[name].shape == shape and np.all(np.isfinite(tiled[name]))
    # A weighted mean of equal float32 values, accumulated in float64: exact after rounding.
    np.testing.assert_allclose(tiled[name], expected[name][0], rtol=EPS, atol=0)


def test_windows_cover_the_axis_with_the_requested_overlap():
  for length in (32, 33, 63, 64, 100, 257):
    for overlap in (0.0, 0.25, 0.5, 0.9):
      starts = tiling.window_starts(length, 32, overlap)
      assert starts[0] == 0 and starts[-1] == length - 32
      assert all(0 < b - a <= 32 * (1 - overlap) + 1 for a, b in zip(starts, starts[1:]))
  weights = tiling.gaussian_weights(32)
  assert weights.min() > 0 and weights[0, 0] < weights[0, 16] < weights[16, 16]
  np.testing.assert_array_equal(weights, weights[::-1, ::-1])


def test_tiled_prediction_of_the_model(tiny):
  model, variables, x = tiny["model"], tiny["variables"], np.asarray(tiny["images"])
  forward = ensemble.probability_fn(model, "none", edge=True)
  batch_fn = lambda w: {k: np.asarray(v) for k, v in forward([variables], jnp.asarray(w)).items()}
  untiled = batch_fn(x)["probability"][0]
  one_window = tiling.predict_tiled(batch_fn, x[0], SIZE, 0.5, 4)["probability"]
  # One window: (w * p) / w per pixel in float64, then rounded to float32.
  np.testing.assert_allclose(one_window, untiled, rtol=EPS, atol=0)
  large = np.random.default_rng(2).normal(size=(80, 56, 3)).astype(np.float32)
  maps = tiling.predict_tiled(batch_fn, large, SIZE, 0.5, 4)
  assert maps["probability"].shape == (80, 56)
  assert np.all(np.isfinite(maps["probability"])) and np.all(np.isfinite(maps["edge"]))
  assert maps["probability"].min() >= 0 and maps["probability"].max() <= 1


def test_float16_probabilities_threshold_to_the_float32_mask():
  rng = np.random.default_rng(3)
  probability = rng.random(10_000).astype(np.float32)
  probability[:6] = [0.5, 0.50001, 0.5001, 0.49999, np.nextafter(np.float32(0.5), 1), 1.0]
  half = postprocessing.float16_probability(probability)
  assert half.dtype == np.float16
  np.testing.assert_array_equal(half > 0.5, probability > 0.5)
  assert np.abs(half.astype(np.float32) - probability).max() <= 2**-11


def _mask(rows: str) -> np.ndarray:
  return np.array([[c == "#" for c in row] for row in rows.split()], bool)


def test_post_processing_steps_on_hand_made_masks():
  blobs = _mask(
    """
    ##.....
    ##.....
    ..#..##
    .....##
    .....##
    """
  )
  largest = postprocessing.postprocess(blobs, postprocessing.parse_post("largest"))
  # The diagonal neighbour joins the 2x2 square (8-connected): 5 pixels against 6.
  np.testing.assert_array_equal(largest, blobs & (np.arange(7) >= 5)[None])
  np.testing.assert_array_equal(
    postprocessing.postprocess(blobs, postprocessing.parse_post("min_size=6")), largest
  )
  np.testing.assert_array_equal(
    postprocessing.postprocess(blobs, postprocessing.parse_post("min_size=5")), blobs
  )
  ring = _mask(
    """
    .......
    .###...
    .#.#..#
    .###.#.
    .....#.
    """
  )
  filled = ring.copy()
  filled[2, 2] = True  # the enclosed pixel; the open corner at the right is not a hole
  np.testing.assert_array_equal(
    postprocessing.postprocess(ring, postprocessing.parse_post("fill_holes")), filled
  )
  empty = np.zeros((4, 4), bool)
  steps = postprocessing.parse_post("fill_holes, largest,min_size=3")
  assert steps == (("fill_holes", 0), ("largest", 0), ("min_size", 3))
  np.testing.assert_array_equal(postprocessing.postprocess(empty, steps), empty)
  np.testing.assert_array_equal(
    postprocessing.postprocess(ring, steps), filled & (np.arange(7) < 4)
  )
  for spec in ("blur", "min_size=0", "min_size=x", "largest=2", "min_size"):
    with pytest.raises(errors.UserError, match="--post"):
      postprocessing.parse_post(spec)


def test_shares_are_disjoint_and_cover_the_list():
  for count in range(0, 11):
    items = list(range(count))
    for parts in range(1, 5):
      shares = [predict.share(items, parts, i) for i in range(parts)]
      assert sorted(sum(shares, [])) == items
  for parts, part in ((0, 0), (2, 2), (2, -1)):
    with pytest.raises(errors.UserError, match="--num-parts"):
      predict.share([1], parts, part)


def _image(path: pathlib.Path, height: int, width: int, seed: int):
  pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)
  Image.fromarray(pixels).save(path)


def _cli(tiny, *args) -> int:
  argv = ["--config", train_helpers.TRAIN_CONFIG, *train_helpers.overrides("")]
  return predict_cli.main([*argv, "--workdir", str(tiny["workdir"]), *args])


def test_predict_skips_unreadable_images_and_refuses_same_stems(tiny, tmp_path, capsys):
  folder = tmp_path / "images"
  folder.mkdir()
  _image(folder / "a.png", 40, 48, 0)
  _image(folder / "b.jpg", 20, 30, 1)
  _image(folder / "c.png", 32, 32, 2)
  (folder / "broken.png").write_bytes(b"not an image")
  out = tmp_path / "out"
  assert _cli(tiny, "--images", str(folder), "--out", str(out), "--save-probabilities") == 1
  captured = capsys.readouterr()
  assert "wrote 3 masks" in captured.out
  assert "skipped 1 unreadable images" in captured.err and "broken.png" in captured.err
  for name, shape in (("a", (40, 48)), ("b", (20, 30)), ("c", (32, 32))):
    mask = np.asarray(Image.open(out / "masks" / f"{name}.png"))
    probability = np.load(out / "probabilities" / f"{name}.npy")
    assert mask.shape == probability.shape == shape and probability.dtype == np.float16
    np.testing.assert_array_equal(mask, (probability > 0.5) * 255)
  assert not (out / "masks" / "broken.png").exists()
  # A second run predicts only what is missing: the broken image, which fails again.
  assert _cli(tiny, "--images", str(folder), "--out", str(out), "--save-probabilities") == 1
  assert "skipped 3 images whose outputs exist" in capsys.readouterr().out

  _image(folder / "a.jpg", 40, 48, 3)
  fresh = tmp_path / "fresh"
  with pytest.raises(errors.UserError, match=r"a\.jpg and .*a\.png would both be written"):
    _cli(tiny, "--images", str(folder), "--out", str(fresh))
  assert not fresh.exists()


def test_predict_options_end_to_end(tiny, tmp_path):
  folder = tmp_path / "images"
  folder.mkdir()
  for i in range(5):
    _image(folder / f"im{i}.png", 40 + 8 * i, 56, i)
  config, workdir, twin = tiny["config"], str(tiny["workdir"]), str(tiny["twin"])
  options = dict(inputs=[str(folder)], save_probabilities=True, progress=False)
  single = predict.predict(config, workdir, str(tmp_path / "single"), **options)
  assert single.written == 5 and not single.unreadable
  # Two shares into one folder: disjoint, together the whole folder, the same files.
  parts = [
    predict.predict(config, workdir, str(tmp_path / "parts"), num_parts=2, part_id=i, **options)
    for i in range(2)
  ]
  assert [p.written for p in parts] == [3, 2]
  for sub in ("masks", "probabilities"):
    names = sorted(p.name for p in (tmp_path / "single" / sub).iterdir())
    assert sorted(p.name for p in (tmp_path / "parts" / sub).iterdir()) == names
  twins = predict.predict(config, [workdir, twin], str(tmp_path / "twins"), **options)
  assert twins.written == 5
  for name in (f"im{i}" for i in range(5)):
    expected = np.load(tmp_path / "single" / "probabilities" / f"{name}.npy")
    for other in ("parts", "twins"):
      np.testing.assert_array_equal(
        np.load(tmp_path / other / "probabilities" / f"{name}.npy"), expected
      )
  tiled = predict.predict(
    config,
    workdir,
    str(tmp_path / "tiled"),
    tile="auto",
    post="largest,fill_holes",
    overwrite=True,
    **options,
  )
  assert tiled.written == 5
  for i in range(5):
    mask = np.asarray(Image.open(tmp_path / "tiled" / "masks" / f"im{i}.png")) > 0
    probability = np.load(tmp_path / "tiled" / "probabilities" / f"im{i}.npy")
    assert mask.shape == probability.shape == (40 + 8 * i, 56)
    assert np.all(np.isfinite(probability))
    np.testing.assert_array_equal(
      mask,
      postprocessing.postprocess(
        probability > 0.5, postprocessing.parse_post("largest,fill_holes")
      ),
    )
  with pytest.raises(errors.UserError, match="--tta"):
    predict.predict(config, workdir, str(tmp_path / "x"), tta="mirror", **options)
  with pytest.raises(errors.UserError, match="--tile"):
    predict.predict(config, workdir, str(tmp_path / "x"), tile="big", **options)
  assert not (tmp_path / "x").exists()


def test_predict_unknown_split_creates_no_folder(tmp_path):
  data_dir = train_helpers.tiny_dataset(tmp_path / "data")
  config = config_utils.load_config(train_helpers.TRAIN_CONFIG, train_helpers.overrides(data_dir))
  with pytest.raises(errors.UserError, match="--split nosuch"):
    predict.predict(config, "unused", str(tmp_path / "out"), split="nosuch")
  assert not (tmp_path / "out").exists()
