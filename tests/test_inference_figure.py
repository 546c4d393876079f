"""`figure` (the paper's Figure 2) on tiny trained workdirs: the panel's size by columns, the
guidance column of a model with SGE against one without, the boundary column of a model with an
edge output against one without, PNG and PDF, and a wrong case id."""

import numpy as np
import pytest
from PIL import Image

from sgdnet_jax import main
from sgdnet_jax.core import config_utils
from sgdnet_jax.inference import figure
from sgdnet_jax.train import loop
from tests import train_helpers

SIZE = train_helpers.IMAGE_SIZE
TILE = SIZE * -(-figure.MIN_TILE // SIZE)  # tiles enlarged by an integer factor to >= MIN_TILE


def spec(variant: str) -> str:
  return f"configs/test.py:variant={variant}"


@pytest.fixture(scope="module")
def workdirs(reference_training, tmp_path_factory):
  """Two tiny trained workdirs on the same 32 px data: the reference baseline (no SGE, no edge
  branch) and SGD-Net (SGE and an edge output) trained one step, without validation (its latest
  checkpoint holds the weights)."""
  workdir = tmp_path_factory.mktemp("figure") / "sgdnet"
  more = train_helpers.overrides(reference_training.data_dir, total_steps=1, eval_every_epochs=0)
  loop.train_and_evaluate(config_utils.load_config(spec("sgdnet"), more), workdir)
  return {"baseline": str(reference_training.workdir), "sgdnet": str(workdir)}


def argv(reference_training) -> list[str]:
  return train_helpers.overrides(reference_training.data_dir)


def draw(reference_training, workdirs, a, b, out, *more) -> int:
  return main.main(
    [
      "figure", "--config", spec(a), "--workdir", workdirs[a], "--config-b", spec(b),
      "--workdir-b", workdirs[b], "--out", str(out), *more, *argv(reference_training),
    ]
  )  # fmt: skip


def column(path, index: int) -> np.ndarray:
  """Column `index`'s first row (below the header) of a panel, box pixels included."""
  with Image.open(path) as image:
    pixels = np.asarray(image.convert("RGB"))
  return pixels[figure.HEADER : figure.HEADER + TILE, index * TILE : (index + 1) * TILE]


GUIDANCE, BOUNDARY = 4, 5  # image, truth, A, B, A's guidance, B's boundary


def is_empty(tile: np.ndarray) -> bool:
  """The grey of a model without that map, outside the zoom box."""
  return bool(np.all(tile[np.any(tile != figure.BOX_COLOR, axis=-1)] == figure.EMPTY))


def levels(tile: np.ndarray) -> int:
  """How many levels a map shows outside the zoom box (a missing map: one)."""
  return np.unique(tile[np.any(tile != figure.BOX_COLOR, axis=-1)]).size


def test_figure_draws_six_columns_the_guidance_of_sge_and_the_boundary_of_an_edge_output(
  reference_training, workdirs, tmp_path
):
  with_sge, without = tmp_path / "with_sge", tmp_path / "without"
  assert draw(reference_training, workdirs, "sgdnet", "baseline", with_sge, "--channels") == 0
  assert draw(reference_training, workdirs, "baseline", "sgdnet", without, "--limit", "1") == 0
  cases = sorted(p.stem for p in with_sge.glob("*.pdf") if p.stem != "figure")
  assert len(cases) == 2
  for name in cases:
    with Image.open(with_sge / f"{name}.png") as panel:  # image, truth, A, B, guidance, boundary
      assert panel.size == (6 * TILE, figure.HEADER + 2 * TILE)  # the row and its zoom row
    assert (with_sge / f"{name}.pdf").read_bytes().startswith(b"%PDF")
    with Image.open(with_sge / f"{name}_guidance.png") as channels:  # one tile per channel
      assert channels.size == (8 * TILE, TILE)  # configs/test.py: 8 guidance channels
  with Image.open(with_sge / "figure.png") as whole:
    assert whole.size == (6 * TILE, figure.HEADER + 4 * TILE)
  # A: SGD-Net's guidance against the baseline's none; B: the baseline's missing edge output
  # against SGD-Net's boundary map.
  # The guidance is min-max normalised; the boundary map is the edge probability, near 0.5
  # everywhere after one step.
  assert levels(column(with_sge / f"{cases[0]}.png", GUIDANCE)) > 10
  assert is_empty(column(without / f"{cases[0]}.png", GUIDANCE))
  assert is_empty(column(with_sge / f"{cases[0]}.png", BOUNDARY))
  assert levels(column(without / f"{cases[0]}.png", BOUNDARY)) > 1
  assert not list(without.glob("*_guidance.png"))


def test_guidance_rules_and_the_zoom_box():
  guidance = np.random.default_rng(0).normal(size=(8, 8, 4))
  l2 = figure.render_guidance(guidance, "l2")
  assert l2 == pytest.approx(
    np.linalg.norm(guidance, axis=-1) / np.linalg.norm(guidance, axis=-1).max()
  )
  pca = figure.render_guidance(guidance, "pca")
  assert pca.min() == 0.0 and pca.max() == pytest.approx(1.0)
  a, b = np.zeros((16, 16), bool), np.zeros((16, 16), bool)
  a[9:13, 2:6] = True  # the masks differ in a 4x4 block at row 9, column 2
  assert figure.zoom_box(a, b, 4) == (9, 2)


def test_a_case_not_in_the_split_is_one_line_and_nothing_is_written(
  reference_training, workdirs, tmp_path, capsys
):
  out = tmp_path / "out"
  assert draw(reference_training, workdirs, "sgdnet", "baseline", out, "--cases", "nope") == 2
  error = capsys.readouterr().err
  assert error.startswith("error: --cases nope: not in split test") and error.count("\n") == 1
  assert not out.exists()
