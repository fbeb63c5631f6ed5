# `make test` is the README's test command: fresh virtual environment, install, whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test install benchmark clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"

test: install
	$(BIN)/python -m pytest

benchmark: install
	$(BIN)/python benchmarks/octconv.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
