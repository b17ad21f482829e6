# Eva: the two commands are `make run` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# Test workers.  Each is a whole private Eva (own Asterisk, data folder, port slot, servers, models), and most of a
# call test is real-time audio rather than CPU, so one more worker than cores keeps the CPUs busy.  Capped at 6, and
# by memory (each worker holds about 2.5 GB of models).  Worked out once; JOBS=0 (or empty) runs one process.
ifneq ($(origin JOBS),command line)
JOBS := $(shell n=$$(nproc 2>/dev/null || echo 1); m=$$(awk '/^MemAvailable:/ {print int($$2 / 2500000)}' /proc/meminfo 2>/dev/null); n=$$((n + 1)); [ $$n -gt 6 ] && n=6; [ -n "$$m" ] && [ $$n -gt $$m ] && n=$$m; [ $$n -lt 1 ] && n=1; echo $$n)
endif
XDIST = $(if $(filter-out 0,$(strip $(JOBS))),-n $(strip $(JOBS)) --dist loadfile)

.PHONY: setup browser run test lint unit fast bench clean-data

setup:
	@bash scripts/setup

run: setup
	@$(VENV)/bin/eva run

lint: setup
	@echo "== ruff"; $(VENV)/bin/ruff check .
	@echo "== mypy"; $(VENV)/bin/mypy

# The console's browser tests drive Debian's Chromium (a test tool's own browser download cannot be fetched here);
# only the test command installs it, so `make run` stays free of a browser.
browser:
	@command -v chromium >/dev/null 2>&1 || { echo "[setup] installing Debian's chromium for the console's browser tests"; \
	  apt-get install -y -qq --no-install-recommends chromium >/dev/null || { apt-get update -qq && \
	  apt-get install -y -qq --no-install-recommends chromium >/dev/null; }; }

test: setup browser lint
	@echo "== pytest ($(if $(XDIST),$(JOBS) workers,one process))"; $(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

# Tiers come from marks derived from the fixtures a test uses (tests/conftest.py): asterisk, models (LLM, embedder,
# Whisper, Piper), servers (PostgreSQL, dovecot, Chroma, Chromium), fuzz (hypothesis property tests).
# unit: everything that needs neither Asterisk nor a model (servers and property tests included).
unit: setup
	@$(PY) -m pytest $(XDIST) -m "not asterisk and not models" $(PYTEST_ARGS)

# fast: the inner loop; no setup step, no Asterisk, no model, no server process, no database migration, no property
# test, no attack replayed at scale (marked long).  A test that would do one of them without its mark fails
# (tests/conftest.py tripwires), so this never does them.
fast:
	@$(PY) -m pytest -q -m "not asterisk and not models and not servers and not db and not fuzz and not long" $(PYTEST_ARGS)

bench: setup
	@$(PY) bench/latency.py
	@$(PY) bench/rag.py
