# `make test` is the README's test command: fresh virtual environment, install, whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test test-fast lint install benchmark demo gpu-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"

test: install
	$(BIN)/python -m pytest

# The edit-test loop: everything but the tests marked slow (services, jobs, training), in a few minutes.
test-fast: install
	$(BIN)/python -m pytest -m "not slow" -q

# The lint gate (ruff, configured in pyproject.toml); .ci/run runs it before the suite.
lint: install
	$(BIN)/ruff check .

benchmark: install
	$(BIN)/python benchmarks/octconv.py

# The GPU acceptance run (benchmarks/gpu_acceptance.sh): on a machine with a GPU, after
# `bash benchmarks/gpu_wheels.sh` prepared the wheels it lacks; results in $(OUT) (default gpu-results).
gpu-check:
	bash benchmarks/gpu_acceptance.sh

# The CPU demo on a local stack (cluster/local/demo.sh; it installs first). KEEP_STACK=1 keeps the
# stack up; DEMO_CLASSES, DEMO_VIDEOS_PER_CLASS, ... size the dataset.
demo:
	cluster/local/demo.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
