# workpool: one Makefile that CI, developers and users share.
#   make demo   create .venv, install, run the main job on the embedded default
#   make check  lint, types and the in-process tier of the tests: the inner loop (minutes)
#   make test   install test needs (dev extras, Azurite via npm ci), then lint, types and every
#               test, in parallel (pytest-xdist, an Azurite per worker): what CI runs
#   make inprocess / integration / system   one tier of the tests (see README "Tests")
#   make bench  run the benchmarks in bench/ (not part of make test)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=
PYTEST := $(BIN)/python -m pytest
# Most tests wait on processes, leases and emulated nodes, not on the CPU: 4 workers on 2 cores.
# worksteal: idle workers take queued tests from busy ones, so the long system tests spread out.
XDIST ?= -n 4 --dist worksteal
# The in-process tier is mostly CPU: one worker per core of this 2-core machine (measured
# faster than 1 or 4 here).
XDIST_INPROCESS ?= -n 2 --dist worksteal
# A tier that selects no tests (pytest exits 5) is not a failure.
tier = $(PYTEST) -m $(1) $(2) $(PYTEST_ARGS) || [ $$? -eq 5 ]

.PHONY: demo check test lint typecheck unit inprocess integration system bench install clean chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The dashboard's browser test drives Debian's Chromium through playwright-core (npm):
# installed only when missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@command -v chromium >/dev/null || \
		($(SUDO) apt-get update && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver)

demo: $(STAMP)
	$(BIN)/python -m orchestration.tools.demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) node_modules/.installed chromium
	$(PYTEST) $(XDIST) --durations=25 $(PYTEST_ARGS)

inprocess: $(STAMP)
	$(call tier,inprocess,$(XDIST_INPROCESS) --durations=10)

integration: $(STAMP) node_modules/.installed chromium
	$(call tier,integration,$(XDIST) --durations=25)

system: $(STAMP) node_modules/.installed chromium
	$(call tier,system,$(XDIST) --durations=25)

check: lint typecheck inprocess

test: lint typecheck unit

bench: $(STAMP) node_modules/.installed
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) node_modules .workpool .mypy_cache .ruff_cache .pytest_cache
