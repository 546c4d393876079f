"""Parity of the surface-distance and overlap metrics with medpy and scipy (METRICS.md)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from medpy.metric import binary as medpy_binary
from scipy import ndimage

from sgdnet_jax import metrics
from sgdnet_jax.metrics import surface

RTOL = 1e-6  # METRICS.md: agreement to 1e-6 relative, on the host and on the accelerator path
SHAPE = (64, 80)  # not square, so both orientations of the EDT's quadratic pass are used


def _smooth_blobs(seed, shape, sigma, level):
  field = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sigma)
  return field > level * field.std()


def _disk(shape, center, radius):
  rows, cols = np.ogrid[: shape[0], : shape[1]]
  return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2


def _non_empty_pairs():
  """Named (pred, gt) fixtures of SHAPE, none of them empty."""
  h, w = SHAPE
  blobs_gt = _smooth_blobs(0, SHAPE, 4, 0.5)
  speckled_gt = _smooth_blobs(1, SHAPE, 3, 0.8)
  border_gt = np.zeros(SHAPE, bool)
  border_gt[:30, :25] = True  # touches the top and left borders
  border_pred = np.zeros(SHAPE, bool)
  border_pred[10:, 15:] = True  # touches the bottom and right borders
  ring_gt = _disk(SHAPE, (32, 40), 20) & ~_disk(SHAPE, (32, 40), 8)  # a hole
  one_pixel = np.zeros(SHAPE, bool)
  one_pixel[5, 70] = True
  other_pixel = np.zeros(SHAPE, bool)
  other_pixel[60, 3] = True
  return {
    "random_blobs": (_smooth_blobs(0, SHAPE, 4, 0.7) ^ _smooth_blobs(2, SHAPE, 1.5, 1.5), blobs_gt),
    "speckled_blobs": (speckled_gt ^ _smooth_blobs(3, SHAPE, 1, 1.8), speckled_gt),
    "touching_border": (border_pred, border_gt),
    "holes": (_disk(SHAPE, (35, 44), 18), ring_gt),
    "one_pixel_vs_blob": (one_pixel, blobs_gt),
    "one_pixel_vs_one_pixel": (one_pixel, other_pixel),
    "identical": (blobs_gt, blobs_gt),
    "full_image": (np.ones(SHAPE, bool), ring_gt),
  }


def _far_blob_pair():
  """A 40 px-radius disk, predicted exactly plus a 6x6 false-positive blob ~108 px away."""
  shape = (192, 192)
  gt = _disk(shape, (48, 48), 40)
  pred = gt.copy()
  pred[150:156, 150:156] = True
  return pred, gt


PAIRS = _non_empty_pairs()
NAMES = sorted(PAIRS)
PRED = np.stack([PAIRS[n][0] for n in NAMES])
GT = np.stack([PAIRS[n][1] for n in NAMES])
SPACINGS = (None, (0.7, 1.3))


def _medpy_reference(pred, gt, spacing):
  directed = getattr(medpy_binary, "__surface_distances")
  d_pg = directed(pred, gt, spacing)
  d_gp = directed(gt, pred, spacing)
  return {
    "dice": medpy_binary.dc(pred, gt),
    "iou": medpy_binary.jc(pred, gt),
    "hd": medpy_binary.hd(pred, gt, spacing),
    "hd95_pooled": medpy_binary.hd95(pred, gt, spacing),
    "hd95_max_directed": max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)),
    "assd": medpy_binary.assd(pred, gt, spacing),
    "asd": medpy_binary.asd(pred, gt, spacing),
  }


@pytest.fixture(scope="module", params=SPACINGS, ids=["unit_spacing", "anisotropic"])
def medpy_values(request):
  spacing = request.param
  per_fixture = [_medpy_reference(p, g, spacing) for p, g in zip(PRED, GT)]
  return spacing, {k: np.array([v[k] for v in per_fixture]) for k in per_fixture[0]}


def test_host_metrics_match_medpy(medpy_values):
  spacing, reference = medpy_values
  record = metrics.per_image_metrics(PRED, GT, spacing=spacing)
  for key, expected in reference.items():
    np.testing.assert_allclose(record[key], expected, rtol=RTOL, atol=0, err_msg=key)


def test_jax_metrics_match_medpy(medpy_values):
  spacing, reference = medpy_values
  record = jax.device_get(
    metrics.per_image_metrics_jax(jnp.asarray(PRED), jnp.asarray(GT), spacing=spacing)
  )
  for key, expected in reference.items():
    np.testing.assert_allclose(record[key], expected, rtol=RTOL, atol=0, err_msg=key)


@pytest.mark.parametrize("name", NAMES)
def test_binary_metrics_matches_medpy(name):
  pred, gt = PAIRS[name]
  reference = _medpy_reference(pred, gt, None)
  for hd95 in ("pooled", "max_directed"):
    result = metrics.binary_metrics(pred, gt, hd95=hd95)
    assert set(result) == {"dice", "iou", "hd", "hd95", "assd", "asd"}
    for key in ("dice", "iou", "hd", "assd", "asd"):
      assert result[key] == pytest.approx(reference[key], rel=RTOL, abs=0), key
    assert result["hd95"] == pytest.approx(reference[f"hd95_{hd95}"], rel=RTOL, abs=0)


def test_directed_distances_equal_medpy_order_and_values():
  directed = getattr(medpy_binary, "__surface_distances")
  for pred, gt in zip(PRED, GT):
    np.testing.assert_allclose(
      metrics.directed_surface_distances(pred, gt, (0.7, 1.3)),
      directed(pred, gt, (0.7, 1.3)),
      rtol=1e-12,
      atol=0,
    )


def test_directed_distances_of_empty_masks():
  blob = PAIRS["random_blobs"][1]
  empty = np.zeros(SHAPE, bool)
  assert metrics.directed_surface_distances(empty, blob).shape == (0,)
  to_nothing = metrics.directed_surface_distances(blob, empty)
  assert to_nothing.shape == (surface.surface(blob).sum(),) and np.isinf(to_nothing).all()


def test_surface_is_xor_with_cross_erosion_and_border_as_background():
  cross = ndimage.generate_binary_structure(2, 1)
  for mask in np.concatenate([PRED, GT]):
    expected = mask ^ ndimage.binary_erosion(mask, structure=cross, border_value=0)
    np.testing.assert_array_equal(surface.surface(mask), expected)
    np.testing.assert_array_equal(np.asarray(surface.surface(jnp.asarray(mask))), expected)


@pytest.mark.parametrize("shape", [(37, 23), (23, 37)])
@pytest.mark.parametrize("spacing", [None, (1.7, 0.4)])
def test_squared_edt_jax_matches_scipy(shape, spacing):
  rng = np.random.default_rng(sum(shape))
  features = np.stack([rng.random(shape) < 0.03, rng.random(shape) < 0.3, np.zeros(shape, bool)])
  features[0, 0, 0] = True  # at least one feature in the sparse image
  result = np.asarray(surface.squared_edt_jax(features, spacing))
  for image, edt in zip(features[:2], result[:2]):
    expected = ndimage.distance_transform_edt(~image, sampling=spacing) ** 2
    np.testing.assert_allclose(edt, expected, rtol=RTOL, atol=0)
  assert np.isinf(result[2]).all()  # no feature at all


def test_squared_edt_jax_blocking_does_not_change_values():
  features = jnp.asarray(np.random.default_rng(7).random((2, 19, 13)) < 0.05)
  unblocked = surface.squared_edt_jax(features)
  blocked = surface.squared_edt_jax(features, max_block_elements=1)  # one row at a time
  np.testing.assert_array_equal(np.asarray(blocked), np.asarray(unblocked))


def test_far_false_positive_blob_pooled_zero_max_directed_large():
  pred, gt = _far_blob_pair()
  # Independent reference for the blob's distances: scipy's EDT of the disk's surface.
  cross = ndimage.generate_binary_structure(2, 1)
  disk_surface = gt ^ ndimage.binary_erosion(gt, cross)
  blob = np.zeros_like(gt)
  blob[150:156, 150:156] = True
  blob_surface = blob ^ ndimage.binary_erosion(blob, cross)
  blob_distances = ndimage.distance_transform_edt(~disk_surface)[blob_surface]
  assert 100 < blob_distances.min() < blob_distances.max() < 120

  assert medpy_binary.hd95(pred, gt) == 0.0
  host = metrics.distance_metrics(pred[None], gt[None])
  device = jax.device_get(
    metrics.distance_metrics_jax(jnp.asarray(pred[None]), jnp.asarray(gt[None]))
  )
  d_pg = getattr(medpy_binary, "__surface_distances")(pred, gt)
  expected_max_directed = np.percentile(d_pg, 95)  # d(G->P) is all zeros
  assert blob_distances.min() <= expected_max_directed <= blob_distances.max()
  for record in (host, device):
    assert record["hd95_pooled"][0] == 0.0
    assert record["hd95_max_directed"][0] == pytest.approx(expected_max_directed, rel=RTOL)
    assert record["hd"][0] == pytest.approx(medpy_binary.hd(pred, gt), rel=RTOL)
  assert metrics.binary_metrics(pred, gt)["hd95"] == 0.0
  assert metrics.binary_metrics(pred, gt, hd95="max_directed")["hd95"] > 100


@pytest.mark.parametrize("one_empty", ["diagonal", "nan"])
def test_empty_policies_on_both_backends(one_empty):
  blob = PAIRS["random_blobs"][1]
  empty = np.zeros(SHAPE, bool)
  pred = np.stack([empty, blob, empty, blob])
  gt = np.stack([empty, empty, blob, blob])
  spacing = (0.5, 2.0)
  diagonal = math.hypot(SHAPE[0] * 0.5, SHAPE[1] * 2.0)
  expected_one = diagonal if one_empty == "diagonal" else np.nan
  host = metrics.distance_metrics(pred, gt, spacing, one_empty)
  device = jax.device_get(
    metrics.distance_metrics_jax(jnp.asarray(pred), jnp.asarray(gt), spacing, one_empty)
  )
  for record in (host, device):
    for key in surface.DISTANCE_KEYS:
      np.testing.assert_allclose(
        record[key][:3], [np.nan, expected_one, expected_one], rtol=RTOL, err_msg=key
      )
      assert record[key][3] == 0.0
  # medpy cannot score these cases at all; our policy replaces its error.
  for p, g in zip(pred[:3], gt[:3]):
    with pytest.raises(RuntimeError):
      medpy_binary.hd95(p, g)


def test_overlap_empty_combinations():
  blob = PAIRS["random_blobs"][1]
  empty = np.zeros(SHAPE, bool)
  for pred, gt in ((blob, empty), (empty, blob)):
    result = metrics.binary_metrics(pred, gt)
    assert result["dice"] == medpy_binary.dc(pred, gt) == 0.0
    assert result["iou"] == medpy_binary.jc(pred, gt) == 0.0
  both_empty = metrics.binary_metrics(empty, empty)
  assert (both_empty["dice"], both_empty["iou"]) == (1.0, 1.0)  # the documented policy
  assert medpy_binary.jc(empty, empty) == 1.0
  with np.errstate(invalid="ignore"):
    assert math.isnan(medpy_binary.dc(empty, empty))  # medpy's 0/0, replaced by the policy
  assert all(math.isnan(both_empty[k]) for k in ("hd", "hd95", "assd", "asd"))
  assert metrics.binary_metrics(blob, empty)["hd95"] == pytest.approx(math.hypot(*SHAPE))


def test_bad_inputs_raise_clear_errors():
  blob = PAIRS["random_blobs"][1]
  with pytest.raises(TypeError, match="`pred` must be a boolean mask"):
    metrics.binary_metrics(blob.astype(np.uint8), blob)
  with pytest.raises(ValueError, match="differs from `gt` shape"):
    metrics.binary_metrics(blob, blob[:10])
  with pytest.raises(ValueError, match=r"expected \(B, H, W\) masks"):
    metrics.distance_metrics(blob, blob)
  with pytest.raises(ValueError, match="hd95='mean'"):
    metrics.binary_metrics(blob, blob, hd95="mean")
  with pytest.raises(ValueError, match="spacing"):
    metrics.binary_metrics(blob, blob, spacing=(1.0, -1.0))
  with pytest.raises(ValueError, match="one_empty='skip'"):
    metrics.distance_metrics(blob[None], blob[None], one_empty="skip")
