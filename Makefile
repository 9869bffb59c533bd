# workpool: one Makefile that CI, developers and users share.
#   make demo   create .venv, install, run the main job on the embedded default
#   make test   install test needs (dev extras, Azurite via npm ci), then lint, types, tests
#   make bench  run the benchmarks in bench/ (not part of make test)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck unit bench install clean chromium

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
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test: lint typecheck unit

bench: $(STAMP) node_modules/.installed
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) node_modules .workpool .mypy_cache .ruff_cache .pytest_cache
