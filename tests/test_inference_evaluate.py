"""`evaluate` and `predict` on a trained workdir: every metric with its conventions, ensembles,
TTA and post-processing as `predict` computes them, masks at the original size and panels.

The workdir is the suite's reference run (`conftest.reference_training`), trained once.
"""

import json
import pathlib

import numpy as np
import pytest

from sgdnet_jax.inference import evaluate
from sgdnet_jax.workdir import variables_io
from tests import train_helpers


@pytest.fixture(scope="module")
def reference_run(reference_training):
  return reference_training.workdir, reference_training.config, reference_training.summary


@pytest.fixture(scope="module")
def data_dir(reference_training):
  return reference_training.data_dir


def test_evaluate_writes_every_metric_with_conventions(reference_run):
  workdir, config, _ = reference_run
  result = evaluate.evaluate(config, str(workdir), "test", "train")
  for name in ("dice", "iou", "hd95", "assd"):
    assert isinstance(result[name], float)
    assert set(result["conventions"][name]) == {"definition", "empty_policy", "per_case_column"}
  assert result["n_total"] == result["cases"]["dice"]["n_total"] > 0
  assert (workdir / "eval" / "test.json").exists()
  rows = (workdir / "eval" / "test_cases.csv").read_text().strip().splitlines()
  assert len(rows) == result["n_total"] + 1 and rows[0].startswith("case_id,")
  written = json.loads((workdir / "eval" / "test.json").read_text())["conventions"]
  columns = {m: written[m]["per_case_column"] for m in ("dice", "iou", "hd95", "assd")}
  hd95 = f"hd95_{config.metrics.hd95}"
  assert columns == {"dice": "dice", "iou": "iou", "hd95": hd95, "assd": "assd"}
  assert set(columns.values()) <= set(rows[0].split(","))
  native = evaluate.evaluate(config, str(workdir), "test", "native")
  assert native["resolution"] == "original" and native["n_total"] == result["n_total"]


def test_evaluate_ensembles_tta_and_post_processing_as_predict_does(reference_run, tmp_path):
  from sgdnet_jax import metrics, models
  from sgdnet_jax.data import pipeline
  from sgdnet_jax.inference import ensemble, postprocessing

  workdir, config, _ = reference_run
  single = evaluate.evaluate(config, str(workdir), "test", "train")
  # Two identical models: (p + p) / 2 == p exactly, so every number is the single model's.
  twins = evaluate.evaluate(config, [str(workdir)] * 2, "test", out_dir=str(tmp_path / "ens"))
  assert {k: twins[k] for k in ("dice", "iou", "hd95")} == {
    k: single[k] for k in ("dice", "iou", "hd95")
  }
  flipped = evaluate.evaluate(config, str(workdir), "test", tta="flip", post="largest")
  assert (workdir / "eval" / "test_tta-flip_post.json").exists()
  # By hand: predict's TTA forward, thresholded, largest component, per-image Dice.
  model, variables = models.build(config.model), variables_io.load_variables(str(workdir))
  forward = ensemble.probability_fn(model, "flip")
  dice = []
  for batch in pipeline.make_eval_iterator(config.data, "test", config.eval_batch_size):
    probability = np.asarray(forward([variables], batch["image"])["probability"])
    for p, mask, valid in zip(probability, batch["mask"], batch["valid"]):
      if valid:
        pred = postprocessing.postprocess(p > 0.5, postprocessing.parse_post("largest"))
        dice.append(metrics.per_image_metrics(pred[None], mask[None] > 0)["dice"][0])
  assert flipped["dice"] == pytest.approx(np.mean(dice), abs=1e-12)


def test_predict_writes_masks_at_original_size_and_panels(reference_run, data_dir, tmp_path):
  from PIL import Image

  from sgdnet_jax.inference import predict

  workdir, config, _ = reference_run
  result = predict.predict(config, str(workdir), str(tmp_path / "split"), split="test", limit=3)
  out, count = result.out, result.written
  assert count == 3 and (out / "overview.png").exists()
  panel = np.asarray(Image.open(next((out / "panels").iterdir())))
  assert panel.shape == (
    train_helpers.IMAGE_SIZE,
    3 * train_helpers.IMAGE_SIZE,
    3,
  )  # no edge: baseline
  source_images = sorted(pathlib.Path(data_dir).parent.glob("source/images/*"))[:2]
  result = predict.predict(
    config, str(workdir), str(tmp_path / "files"), inputs=[str(p) for p in source_images]
  )
  out, count = result.out, result.written
  assert count == 2
  for path in source_images:
    mask = np.asarray(Image.open(out / "masks" / f"{path.stem}.png"))
    assert mask.shape == np.asarray(Image.open(path)).shape[:2]
    assert set(np.unique(mask)) <= {0, 255}
  with pytest.raises(FileNotFoundError, match="no such file or folder"):
    predict.collect_images([str(tmp_path / "missing")])
