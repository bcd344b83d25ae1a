# rlft: `make run` trains the default demo, `make test` runs the test suite. Both create the
# environment first (.venv, torch pinned to the local CPU wheel by constraints.txt).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
STAMP := $(VENV)/.installed
ARGS ?=
# 2-core machines: one torch thread pool, no oversubscription from tokenizers.
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_DISABLE_TELEMETRY ?= 1

.PHONY: install run test test-fast lint clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e ".[dev]"
	touch $(STAMP)

run: install
	$(PY) -m rlft $(ARGS)

test: install
	$(PY) -m pytest -q tests $(ARGS)

lint: install
	$(VENV)/bin/ruff check rlft tests launchers

clean:
	rm -rf $(VENV) outputs .pytest_cache
