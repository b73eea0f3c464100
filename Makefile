# Shipyard — two commands on a fresh machine: `make up` and `make test`.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")
RUN := $(UV) run --frozen

.PHONY: bootstrap up test lint typecheck unit bench clean

# Install uv with pip when missing, then sync the locked environment (all extras, dev + bench).
bootstrap:
	@command -v uv >/dev/null 2>&1 || test -x "$(HOME)/.local/bin/uv" || python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv
	@$(UV) sync --frozen --all-extras --quiet

# Runs what exists of the reference system on embedded defaults (see README).
up: bootstrap
	$(RUN) shipyard up

lint: bootstrap
	$(RUN) ruff check src tests bench examples
	$(RUN) ruff format --check src tests bench examples

typecheck: bootstrap
	$(RUN) mypy --strict src

unit: bootstrap
	$(RUN) pytest $(PYTEST_ARGS)

test: lint typecheck unit

bench: bootstrap
	$(RUN) python -m bench

clean:
	rm -rf .venv .mypy_cache .pytest_cache .ruff_cache
