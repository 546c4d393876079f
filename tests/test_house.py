"""The shape of the house: import layers without cycles, a documented config, every experiment.

Each package (and top-level module) of `sgdnet_jax` has a floor (`FLOORS`, CONTRIBUTING.md's
layer order); a module imports only from packages on its own floor or lower ones
(function-level imports included), no two modules import each other, and a package or
top-level module missing from the table fails the test.
"""

import ast
import pathlib
import re
import subprocess
import sys

import pytest

from sgdnet_jax import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sgdnet_jax"
# Lowest first. Same floor: neither may import the other (checked below).
FLOORS = {
  "core": 0,  # errors, paths, distributed, compilation cache, config loading, sharding
  "models": 1,
  "data": 1,
  "metrics": 1,
  "porting": 2,  # PyTorch state dicts both ways (models' key tables)
  "workdir": 2,  # what a workdir holds: names, variables, checkpoints, the config guard
  "inference": 3,  # the probability function, evaluate, predict, exports, serving
  "train": 4,
  "study": 5,  # sweeps, functional ablations, reports
  "demo": 6,  # the main job on the embedded data
  "cli": 7,  # one module per command: argument parsing
  "main": 8,
}


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> set[str]:
  """Every sgdnet_jax module `path` imports, at any depth of the file."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      found.add(node.module)
      found.update(f"{node.module}.{alias.name}" for alias in node.names)
  modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
  return {name for name in found if name in modules and name.startswith("sgdnet_jax")}


def _graph() -> dict[str, set[str]]:
  return {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _package(module: str) -> str:
  """`sgdnet_jax.models.sge` -> `models`; the package itself (`sgdnet_jax`) -> ''."""
  return module.split(".")[1] if "." in module else ""


def test_every_package_and_top_level_module_has_a_floor():
  units = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
  units |= {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
  assert units == set(FLOORS), (
    f"missing from FLOORS: {sorted(units - set(FLOORS))}; gone: {sorted(set(FLOORS) - units)}"
  )


def test_no_module_imports_from_a_higher_floor_or_a_sibling_package():
  for module, imported in _graph().items():
    package = _package(module)
    if not package:
      continue
    for name in imported:
      target = _package(name)
      if not target or target == package:
        continue
      assert FLOORS[target] < FLOORS[package], (
        f"{module} (floor {FLOORS[package]}) imports {name} (floor {FLOORS[target]})"
      )


def test_no_import_cycles():
  graph = _graph()
  # A package imports its own modules from __init__; that is containment, not a cycle.
  edges = {
    m: {n for n in targets if n != m and not m.startswith(n + ".")} for m, targets in graph.items()
  }
  state: dict[str, int] = {}

  def visit(node, path):
    state[node] = 1
    for target in edges.get(node, ()):
      if state.get(target) == 1:
        cycle = path[path.index(target) :] + [target] if target in path else [node, target]
        pytest.fail(f"import cycle: {' -> '.join(cycle)}")
      if target not in state:
        visit(target, [*path, target])
    state[node] = 2

  for node in sorted(edges):
    if node not in state:
      visit(node, [node])


def test_every_default_field_has_a_comment():
  text = (ROOT / "configs" / "default.py").read_text()
  assignments = re.findall(
    r"^\s+(\w+)\.(\w+) = (?!\w+ = ml_collections\.ConfigDict\(\))(.*)$", text, re.M
  )
  assert len(assignments) > 60
  for block, field, rest in assignments:
    commented = "  # " in rest
    if not commented:  # a comment on the line(s) right above also documents the field
      lines = text.splitlines()
      at = next(i for i, line in enumerate(lines) if f"{block}.{field} = " in line)
      commented = lines[at - 1].strip().startswith("#")
    assert commented, f"configs/default.py: {block}.{field} has no comment"


@pytest.mark.parametrize(
  "spec",
  [
    "configs/default.py",
    "configs/isic2018.py:variant=cto,fold=3",
    "configs/isic2016_ph2.py",
    "configs/conic.py",
    "configs/folder.py:data=data/mine",
    "configs/demo.py",
    "configs/test.py",
  ],
)
def test_config_command_prints_every_experiment_without_jax(spec):
  code = (
    f"import sys; from sgdnet_jax import main; rc = main.main(['config', '--config', {spec!r},"
    " '--json']); assert 'jax' not in sys.modules and 'flax' not in sys.modules; sys.exit(rc)"
  )
  result = subprocess.run(
    [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert '"model": {' in result.stdout and '"optimizer": {' in result.stdout


def test_config_command_user_errors_are_one_line(capsys):
  assert main.main(["config", "--config", "configs/nope.py"]) == 2
  assert main.main(["config", "--config", "configs/test.py", "--config.model.nope=1"]) == 2
  assert main.main(["config", "--config", "configs/isic2018.py:fold=x"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 3 and all(line.startswith("error: ") for line in err), err
  assert "Traceback" not in "\n".join(err)


def _requirement_lines(path: pathlib.Path) -> list[str]:
  lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
  return [line for line in lines if line]


def test_pyproject_declares_requirements_txt_and_the_python_the_pins_need():
  import tomllib

  project = tomllib.loads((ROOT / "pyproject.toml").read_text())
  assert project["project"]["dependencies"] == _requirement_lines(ROOT / "requirements.txt")
  assert project["project"]["requires-python"] == ">=3.11"
  assert project["tool"]["ruff"]["target-version"] == "py311"
  assert "Python 3.11+" in (ROOT / "README.md").read_text()
  # The accelerator builds add jax's extra at requirements.txt's jax version.
  jax = next(line for line in _requirement_lines(ROOT / "requirements.txt") if "jax==" in line)
  for platform, extra in (("cuda", "cuda12"), ("tpu", "tpu")):
    assert _requirement_lines(ROOT / f"requirements-{platform}.txt") == [
      "-r requirements.txt",
      jax.replace("jax==", f"jax[{extra}]=="),
    ]
