# Two entry points for a fresh machine: `make train` and `make test` (see README).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# pytest-xdist processes. The suite waits much of its time on subprocess start-ups and I/O:
# with 2 workers it ran in 12 min 35 s for 23 min of CPU time (2-core VM, 2026-12-02).
TEST_WORKERS ?= 2

$(VENV)/.installed: setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

.PHONY: install train test lint format
install: $(VENV)/.installed

train: $(VENV)/.installed
	$(PY) -m trainers.vae

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) --durations=15

format: $(VENV)/.installed
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .
