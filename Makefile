# Two entry points for a fresh machine: `make train` and `make test` (see README).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

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
	$(PY) -m pytest -q --durations=15

format: $(VENV)/.installed
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .
