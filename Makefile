# Eva: the two commands are `make run` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup run test lint unit fast bench clean-data

setup:
	@bash scripts/setup

run: setup
	@$(VENV)/bin/eva run

lint: setup
	@echo "== ruff"; $(VENV)/bin/ruff check .
	@echo "== mypy"; $(VENV)/bin/mypy

test: setup lint
	@echo "== pytest"; $(PY) -m pytest $(PYTEST_ARGS)

# Tiers come from marks derived from the fixtures a test uses (tests/conftest.py): asterisk, models (LLM, embedder,
# Whisper, Piper), servers (PostgreSQL, dovecot, Chroma), fuzz (hypothesis property tests).
# unit: everything that needs neither Asterisk nor a model (servers and property tests included).
unit: setup
	@$(PY) -m pytest -m "not asterisk and not models" $(PYTEST_ARGS)

# fast: the inner loop; no setup step, no Asterisk, no model, no server process, no database migration, no property
# test, no attack replayed at scale (marked long).  A test that would do one of them without its mark fails
# (tests/conftest.py tripwires), so this never does them.
fast:
	@$(PY) -m pytest -q -m "not asterisk and not models and not servers and not db and not fuzz and not long" $(PYTEST_ARGS)

bench: setup
	@$(PY) bench/latency.py
	@$(PY) bench/rag.py
