#!/usr/bin/env bash
# The installs the README describes resolve, and `pip install .` gives a working package.
#   bash .ci/check_install.sh          (make check-requirements)
# (a) pip's resolver (metadata only, nothing installed) accepts requirements-cuda.txt and
#     requirements-tpu.txt beside requirements.txt, and the dependencies pyproject.toml declares.
# (b) `pip install --no-deps --no-build-isolation .` into a fresh venv that sees the main venv's
#     packages through a .pth file (no 600 MB download), then `import sgdnet_jax` and
#     `python -m sgdnet_jax.main --help` from another folder: the installed copy, with its package
#     data (requirements-serving.txt, the export's serving requirements), not this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}  # the main venv
PYTHON=${PYTHON:-python3}  # makes the fresh venv
work=$(mktemp -d -t sgdnet_jax-install-check.XXXXXX)
trap 'rm -rf "$work"' EXIT

for requirements in requirements-cuda.txt requirements-tpu.txt; do
  "$PY" -m pip install --dry-run --ignore-installed --quiet --report "$work/report.json" \
    -r "$requirements"
  echo "check-requirements: $requirements resolves with requirements.txt"
done
# pip builds in the folder it installs from: a copy of the checkout's files, not the checkout.
mkdir "$work/src"
git ls-files -co --exclude-standard | tar -cf - -T - | tar -xf - -C "$work/src"
"$PY" -m pip install --dry-run --ignore-installed --quiet --no-build-isolation "$work/src"
echo "check-requirements: pyproject.toml's dependencies resolve"

"$PYTHON" -m venv "$work/venv"
site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
fresh=$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$site" >"$fresh/main-venv.pth"
"$work/venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation "$work/src"
cd "$work"
"$work/venv/bin/python" - <<'PYTHON'
import pathlib

import sgdnet_jax
from sgdnet_jax.inference import stablehlo

where = pathlib.Path(sgdnet_jax.__file__).resolve()
assert "site-packages" in where.parts, f"imported {where}, not the installed copy"
assert stablehlo.serving_requirements(), "requirements-serving.txt is not in the installed package"
PYTHON
"$work/venv/bin/python" -m sgdnet_jax.main --help >/dev/null
echo "check-requirements: pip install . imports sgdnet_jax and runs main --help"
