# Two commands matter: `make run` and `make test`. Everything else is a helper for them.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= examples/newsletter.toml
# Test processes: most tests wait on subprocesses, servers and sockets, so two workers cut the
# suite's time by a third even on two cores (8 min to 5.5). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2

.PHONY: run test lint typecheck bench clean help postgresql

help:
	@echo "make run   - set up .venv, import the example subscribers, run one gather/feeds/digest cycle"
	@echo "make test  - set up .venv with the test extras and run the whole test suite"
	@echo "make lint  - ruff check and format check; make typecheck - mypy --strict"
	@echo "make bench - the render, send and nodes benchmarks (figures, no pass/fail)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when the dependency list changes; the package itself is editable.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(VENV)/.installed $@

run: $(VENV)/.installed
	$(BIN)/newsletter --config $(CONFIG) subscribers import examples/subscribers.csv
	$(BIN)/newsletter --config $(CONFIG) run --once

# The browser tests drive Debian's chromium (Playwright never downloads a browser here).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
/usr/bin/chromium:
	$(SUDO) apt-get update
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium

# The PostgreSQL tests start a throwaway server (tests/_postgres.py) from Debian's postgresql
# package, whose binaries live in /usr/lib/postgresql/<version>/bin. Its default cluster is
# never used.
POSTGRES_INITDB := $(wildcard /usr/lib/postgresql/*/bin/initdb)
postgresql:
ifeq ($(POSTGRES_INITDB),)
	$(SUDO) apt-get update
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql
endif

test: $(VENV)/.installed-test /usr/bin/chromium postgresql
	$(BIN)/ruff check newsletter tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

bench: $(VENV)/.installed-test postgresql
	$(BIN)/python benchmarks/render.py
	$(BIN)/python benchmarks/send.py --subscribers 20000
	$(BIN)/python benchmarks/nodes.py --subscribers 20000

clean:
	find feeds -mindepth 1 ! -name README.md -exec rm -rf {} +
	rm -rf $(VENV) outbox examples/*.db* .pytest_cache .mypy_cache
