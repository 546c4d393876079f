"""Every command that compiles enables the persistent compilation cache of its config first.

Each command runs in this process through `sgdnet_jax.main.main` with
`compilation_cache.enable` replaced by a function that raises: the command stops right there,
before it reads data, loads variables or compiles, and the test sees the folder it was given.
"""

import pytest

from sgdnet_jax import main
from sgdnet_jax.core import compilation_cache

CONFIG = "configs/test.py"


class CacheEnabled(BaseException):
  """Raised by the stand-in `enable`; a BaseException, so that no `except Exception` keeps it."""


@pytest.fixture
def enable_raises(monkeypatch):
  def enable(directory, min_compile_time_secs=1.0):
    del min_compile_time_secs
    raise CacheEnabled(directory)

  monkeypatch.setattr(compilation_cache, "enable", enable)


@pytest.mark.parametrize(
  "command, arguments",
  [
    ("train", ["--workdir", "{tmp}/w"]),
    ("evaluate", ["--workdir", "{tmp}/w"]),
    ("predict", ["--workdir", "{tmp}/w", "--images", "{tmp}/x.png"]),
    ("export", ["--workdir", "{tmp}/w", "--out", "{tmp}/out"]),
    ("ablate", ["--workdir", "{tmp}/w"]),
    ("summary", []),
    ("demo", ["--workdir", "{tmp}/w"]),
    ("sweep", ["--root", "{tmp}/r", "--local"]),
    ("convert", ["--torch", "{tmp}/weights.pth", "--layout", "sgdnet", "--out", "{tmp}/out"]),
  ],
)
@pytest.mark.usefixtures("enable_raises")
def test_each_command_enables_the_configs_cache(tmp_path, command, arguments):
  config = f"{CONFIG}:sweep=tiny" if command == "sweep" else CONFIG
  folder = str(tmp_path / "xla")
  argv = [command, "--config", config, f"--config.compilation_cache_dir={folder}"]
  with pytest.raises(CacheEnabled) as raised:
    main.main([*argv, *(a.format(tmp=tmp_path) for a in arguments)])
  assert raised.value.args == (folder,)
