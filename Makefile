# Fugou — `make run` (embedded, Python only) and `make test` (real Kafka + PostgreSQL).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
HOST ?= 127.0.0.1
RUN_DIR ?= $(CURDIR)/.run

.PHONY: help venv run demo lint test test-unit bench up down migrate clean

help:
	@echo "make run    - the whole system in one process on http://$(HOST):$(PORT) (SQLite under ./data)"
	@echo "make demo   - make run, filled with a synthetic shop (10,000 customers, six months) through the event API"
	@echo "make lint   - ruff (lint and format) and mypy, as CI runs them first"
	@echo "make test   - unit, integration and end-to-end tests against real Kafka and PostgreSQL"
	@echo "make test-unit - the unit tier alone: no Kafka, PostgreSQL or browser, a few minutes"
	@echo "make bench  - benchmarks (starts Kafka and PostgreSQL), figures with their peers"
	@echo "make up     - distributed mode: Kafka, PostgreSQL and one process per service; make down stops it"

# The virtualenv is rebuilt only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test,lint]'
	touch $@

venv: $(VENV)/.installed

run: venv
	PORT=$(PORT) HOST=$(HOST) $(PY) -m services.embedded

demo: venv
	PORT=$(PORT) HOST=$(HOST) $(PY) -m demo --start

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The tiers: tests/unit needs nothing but Python (no Kafka, PostgreSQL, browser or network) and
# runs on every core; tests/integration, tests/e2e and tests/browser share one Kafka broker and one
# PostgreSQL cluster that the session starts, so they run in one process.
UNIT := -m pytest -p no:cacheprovider tests/unit -n auto --dist loadfile
REAL := -m pytest -p no:cacheprovider tests/integration tests/e2e tests/browser

test: venv
	$(PY) $(UNIT) $(PYTEST_ARGS)
	$(PY) $(REAL) $(PYTEST_ARGS)

test-unit: venv
	$(PY) $(UNIT) $(PYTEST_ARGS)

bench: venv
	$(PY) -m bench $(BENCH_ARGS)

up: venv
	RUN_DIR=$(RUN_DIR) PY=$(PY) deploy/local/up.sh

down:
	RUN_DIR=$(RUN_DIR) deploy/local/down.sh

clean:
	rm -rf $(VENV) .run *.egg-info
