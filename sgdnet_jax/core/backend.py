"""Which JAX backend this Python runs on, checked against the one a launcher or install is for.

  python -m sgdnet_jax.core.backend {cpu|cuda|tpu}

prints what JAX got (`jax 0.10.2, jaxlib 0.10.2: backend gpu, 8 devices [cuda:0, ...]`) and exits
0 when the backend is the expected one. Otherwise it prints one line naming the interpreter, the
backend it has and the install that gives the expected one, and exits 2: a GPU job on a CPU
jaxlib (the plain requirements.txt) would otherwise train on the CPU with nothing but `(cpu)` in
its start-up line to show it. The SLURM launcher runs it before srun, `make venv PLATFORM=...`
after installing; the TPU launchers set PLATFORM_ENV, which `train` and `evaluate` check once
JAX is initialised (`check_expected`, from `distributed.initialize`).
"""

import os
import sys
from collections.abc import Sequence

from sgdnet_jax.core import errors

# Set by a launcher: the platform its processes must run on.
PLATFORM_ENV = "SGDNET_JAX_PLATFORM"
# Install target (requirements-<name>.txt, make venv PLATFORM=<name>) -> jax.default_backend().
BACKENDS = {"cpu": "cpu", "cuda": "gpu", "tpu": "tpu"}
INSTALLS = {
  "cpu": "pip install -r requirements.txt (make venv)",
  "cuda": "pip install -r requirements-cuda.txt (make venv PLATFORM=cuda)",
  "tpu": "pip install -r requirements-tpu.txt (make venv PLATFORM=tpu)",
}


def describe() -> str:
  """What JAX got: versions, backend, devices."""
  import jax
  import jaxlib

  devices = jax.devices()
  names = ", ".join(f"{d.platform}:{d.id}" for d in devices[:4]) + (", ..." * (len(devices) > 4))
  return (
    f"jax {jax.__version__}, jaxlib {jaxlib.__version__}: backend {jax.default_backend()}, "
    f"{len(devices)} devices [{names}]"
  )


def check(platform: str) -> str:
  """`describe()` when JAX's backend is the one `platform` installs; else a UserError."""
  import jax

  if platform not in BACKENDS:
    raise errors.UserError(
      f"platform {platform!r}: expected one of {', '.join(BACKENDS)}; e.g. "
      "python -m sgdnet_jax.core.backend cuda"
    )
  backend, expected = jax.default_backend(), BACKENDS[platform]
  if backend != expected:
    named = expected if expected == platform else f"{expected} ({platform})"
    raise errors.UserError(
      f"JAX's backend is {backend}, not {named}, in {sys.executable} "
      f"(jax {jax.__version__}); install the {platform} build there: {INSTALLS[platform]}"
    )
  return describe()


def check_expected() -> None:
  """`check` of the platform PLATFORM_ENV names, when it names one (a launcher set it)."""
  platform = os.environ.get(PLATFORM_ENV, "")
  if platform:
    check(platform)


def main(argv: Sequence[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if len(argv) != 1 or argv[0] in ("-h", "--help"):
    print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
    return 0 if argv and argv[0] in ("-h", "--help") else 2
  try:
    print(check(argv[0]))
  except errors.UserError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
