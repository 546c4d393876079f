"""The summary command and config loading."""

import json

import pytest

from sgdnet_jax import main
from sgdnet_jax.core import config_utils, errors


def test_summary_json_line(capsys):
  assert (
    main.main(["summary", "--config", "configs/test.py:variant=cto,num_classes=2", "--json"]) == 0
  )
  lines = capsys.readouterr().out.strip().splitlines()
  result = json.loads(lines[-1])
  assert result["trainable_params"] == sum(result["modules"].values())
  assert set(result["modules"]) >= {"resnet", "multi_trans", "head", "eam", "sobel_x1_1"}
  assert result["gmacs_paper"] > 0 and result["flops_executed"] > 1e6
  assert any("trainable params" in line for line in lines)


def test_config_overrides_and_errors():
  config = config_utils.load_config(
    "configs/isic2018.py:variant=cto,fold=3",
    ["--config.model.sgdc.kernel_size=5", "--config.model.dtype", "bfloat16"],
  )
  assert config.data.fold == 3 and config.model.skip_fusion == "edge_gate"
  assert config.model.sgdc.kernel_size == 5 and config.model.dtype == "bfloat16"
  with pytest.raises(ValueError, match="unknown config argument 'folds'"):
    config_utils.load_config("configs/isic2018.py:folds=3")
  with pytest.raises(errors.ConfigError, match="no field 'model.sgdc.kernel'"):
    config_utils.load_config("configs/isic2018.py", ["--config.model.sgdc.kernel=5"])
  with pytest.raises(errors.ConfigError, match="configs/nope.py"):
    config_utils.load_config("configs/nope.py")
  with pytest.raises(ValueError, match="expected an integer"):
    config_utils.load_config("configs/isic2018.py:fold=x")


def test_every_experiment_config_loads_with_its_protocol():
  ph2 = config_utils.load_config("configs/isic2016_ph2.py:variant=baseline,ph2=/d/ph2")
  assert ph2.data.protocol == "all900" and ph2.data.dir == "data/isic2016"
  assert ph2.eval_every_epochs == 0  # no validation split: the last epoch is evaluated
  assert ph2.data.extra_eval.ph2.dir == "/d/ph2" and ph2.data.extra_eval.ph2.protocol == "all"
  assert ph2.model.variant == "baseline" and ph2.model.skip_fusion == "none"
  conic = config_utils.load_config("configs/conic.py:protocol=random_712")
  assert conic.data.protocol == "random_712" and conic.data.dir == "data/conic"
  folder = config_utils.load_config("configs/folder.py:data=data/mine,variant=cto")
  assert folder.data.dir == "data/mine" and folder.data.protocol == "seeded_712"
  assert folder.global_batch_size == 8 and folder.model.skip_fusion == "edge_gate"
  with pytest.raises(ValueError, match="needs data=<prepared folder>"):
    config_utils.load_config("configs/folder.py")
