# The README's two commands: `make run` and `make test`. Each creates .venv when
# needed and installs what it needs; nothing else has to be on the machine but Python.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench

# The PostgreSQL half of the tests runs where TEST_DATABASE_URL is set, or where a
# local server answers for a database named `test`; elsewhere it is skipped.
TEST_DATABASE_URL ?= $(shell psql -h 127.0.0.1 -d test -Atqc 'select 1' 2>/dev/null | grep -qx 1 \
	&& echo "postgresql://$$(id -un)@127.0.0.1:5432/test")
export TEST_DATABASE_URL

.PHONY: run test lint typecheck unit bench clean test-minimums

# Checked while make reads the recipe, before anything runs: an older Python stops
# with one line and leaves no half-made .venv behind. (No commas in the message:
# it is an argument of $(if).)
PYTHON_VERSION = $(shell $(PYTHON) -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null)
PYTHON_OK = $(shell $(PYTHON) -c 'import sys; print(int(sys.version_info >= (3, 11)))' 2>/dev/null)
PYTHON_TOO_OLD = imagebot needs Python 3.11 or newer but $(PYTHON) is $(or $(PYTHON_VERSION),not found). \
	Install a newer one and run: make $(MAKECMDGOALS) PYTHON=python3.11

$(BIN)/python:
	$(if $(filter 1,$(PYTHON_OK)),,$(error $(PYTHON_TOO_OLD)))
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@ $(RUN_STAMP)

$(BENCH_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	touch $@ $(DEV_STAMP) $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/python -m bot run

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint Dockerfile

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

# The suite mostly waits (emulators on loopback, bot processes, lease and grace
# timers) rather than computes, so it runs on more workers than there are cores;
# `make test PYTEST_WORKERS=0` runs it in one process, as plain `pytest` does.
# worksteal: a worker that runs out of tests takes some of a busy one's, so a few
# long tests (the Docker build, the chaos run) do not leave the end on one worker.
PYTEST_WORKERS ?= 4

unit: $(DEV_STAMP)
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist worksteal

test: lint typecheck unit

# The declared minimum of discord.py and aiohttp, installed over the dev tools:
# a ">=" admitting a release that lacks what the bot uses fails here.
test-minimums: pyproject.toml
	$(PYTHON) -m venv .venv-min
	.venv-min/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	.venv-min/bin/python -m pip install --quiet --disable-pip-version-check \
		$$(.venv-min/bin/python tests/minimums.py discord.py aiohttp)
	.venv-min/bin/mypy
	.venv-min/bin/pytest -q -p no:cacheprovider tests/e2e/test_generation.py

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .venv-min .pytest_cache .mypy_cache .ruff_cache .hypothesis
