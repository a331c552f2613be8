# The project's commands. `make train` and `make test` build a fresh virtual environment (.venv) when
# setup.cfg changes, installs the package with its test extra, and runs the default tests.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
WORKDIR ?= workdirs/default

.PHONY: train test test-slow test-latest test-tpu pi-env test-pi bench results results-deep clean

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# The main job: prepare the embedded data, train the default model, print its perplexity.
train: $(BIN)/.installed
	$(BIN)/aero-train --config=configs/default.py --workdir=$(WORKDIR)

test: $(BIN)/.installed
	$(BIN)/python -m pytest -m "not slow" tests

test-slow: $(BIN)/.installed
	$(BIN)/python -m pytest -m slow tests

# The newest JAX (0.11 and newer need Python 3.12, from pyenv where there is one) in its own environment: every default
# test; the export's skip there, since torch's Python 3.12 wheel is a CUDA build of several GB.
PYTHON_LATEST ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) python3.12)
LATEST_BIN := .venv-latest/bin
$(LATEST_BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON_LATEST) -m venv .venv-latest
	$(LATEST_BIN)/pip install --quiet --upgrade pip
	$(LATEST_BIN)/pip install --quiet --upgrade -e '.[test-core]'
	touch $@

test-latest: $(LATEST_BIN)/.installed
	$(LATEST_BIN)/python -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__)"
	$(LATEST_BIN)/python -m pytest -m "not slow" -n 2 tests

# aero-compile against libtpu (about 700 MB, so its own environment): TPU topologies compiled on this machine.
TPU_BIN := .venv-tpu/bin
$(TPU_BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv .venv-tpu
	$(TPU_BIN)/pip install --quiet --upgrade pip
	$(TPU_BIN)/pip install --quiet -e '.[tpu]' pytest
	touch $@

test-tpu: $(TPU_BIN)/.installed
	JAX_PLATFORMS=cpu $(TPU_BIN)/python -m pytest tests/tpu

# Measured private inference (aero-pi-measure): SecretFlow SPU pins jax 0.4.34 and numpy 1.26, so it has its own
# environment (about 1 GB); the code that runs there (aero_jax/pi/private_forward.py) imports nothing of aero_jax.
PI_BIN := .venv-pi/bin
$(PI_BIN)/.installed:
	$(PYTHON) -m venv .venv-pi
	$(PI_BIN)/pip install --quiet --upgrade pip
	$(PI_BIN)/pip install --quiet spu==0.9.5 safetensors
	touch $@

pi-env: $(PI_BIN)/.installed

test-pi: $(BIN)/.installed $(PI_BIN)/.installed
	AERO_PI_TESTS=1 $(BIN)/python -m pytest tests/pi

# The reproduction study (studies/paper_claims.py): its runs, resumed where they stopped, then docs/results.md.
results: $(BIN)/.installed
	$(BIN)/aero-study --spec studies/paper_claims.py --out docs/results

# The same claims at the papers' depth (L=12), where their failure modes can appear: docs/results_deep.md.
results-deep: $(BIN)/.installed
	$(BIN)/aero-study --spec studies/paper_claims.py:deep --out docs/results_deep

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/step_throughput.py
	$(BIN)/python benchmarks/train_loop_overhead.py
	$(BIN)/python benchmarks/checkpoint_save.py
	$(BIN)/python benchmarks/decode.py

clean:
	rm -rf $(VENV) .venv-latest .venv-tpu .venv-pi build *.egg-info
