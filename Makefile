# The project's commands. `make test` builds a fresh virtual environment (.venv) when
# setup.cfg changes, installs the package with its test extra, and runs the default tests.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: test test-slow bench clean

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

test: $(BIN)/.installed
	$(BIN)/python -m pytest -m "not slow" tests

test-slow: $(BIN)/.installed
	$(BIN)/python -m pytest -m slow tests

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/step_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info
