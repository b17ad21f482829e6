# Eva: the two commands are `make run` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup run test lint unit bench clean-data

setup:
	@bash scripts/setup

run: setup
	@$(VENV)/bin/eva run

lint: setup
	@echo "== ruff"; $(VENV)/bin/ruff check .
	@echo "== mypy"; $(VENV)/bin/mypy

test: setup lint
	@echo "== pytest"; $(PY) -m pytest $(PYTEST_ARGS)

unit: setup
	@$(PY) -m pytest -m "not asterisk and not slow" $(PYTEST_ARGS)

bench: setup
	@$(PY) bench/latency.py
	@$(PY) bench/rag.py
