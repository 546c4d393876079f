# The README's two commands: `make demo` and `make test` (plus `make lint`, run by CI first).
# Each creates .venv when needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?= -n 2 --dist loadfile --no-loadscope-reorder
export JAX_COMPILATION_CACHE_DIR ?= $(CURDIR)/.jax_cache

.PHONY: demo test test-durations serving-check check-requirements lint format venv venv-test clean

$(VENV)/.runtime-stamp: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.test-stamp: requirements.txt requirements-test.txt $(VENV)/.runtime-stamp
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $@

# PLATFORM=cuda or tpu adds the accelerator build of jaxlib (requirements-$(PLATFORM).txt) to the
# venv and checks that JAX then runs on that backend; cpu (the default) is requirements.txt alone.
PLATFORM ?= cpu
venv: $(VENV)/.runtime-stamp
ifneq ($(PLATFORM),cpu)
	$(PY) -m pip install --quiet -r requirements-$(PLATFORM).txt
endif
	$(PY) -m sgdnet_jax.core.backend $(PLATFORM)
venv-test: $(VENV)/.test-stamp

demo: $(VENV)/.runtime-stamp
	$(PY) -m sgdnet_jax.main demo --workdir runs/demo

test: $(VENV)/.test-stamp
	$(PY) -m pytest $(PYTEST_ARGS) tests

# The whole suite, recording each file's time in tests/durations.json (the order CI runs files in).
test-durations: $(VENV)/.test-stamp
	$(PY) -m pytest $(PYTEST_ARGS) --record-durations tests

# The exported serving.py in a fresh venv from requirements-serving.txt alone, against predict.
serving-check: $(VENV)/.runtime-stamp
	PY=$(PY) PYTHON=$(PYTHON) bash .ci/serving_check.sh

# requirements-cuda.txt / -tpu.txt and pyproject.toml resolve (metadata only), and `pip install .`
# into a fresh venv imports and runs.
check-requirements: $(VENV)/.runtime-stamp
	PY=$(PY) PYTHON=$(PYTHON) bash .ci/check_install.sh

lint: $(VENV)/.test-stamp
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

format: $(VENV)/.test-stamp
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) .jax_cache .pytest_cache runs
