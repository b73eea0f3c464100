# Shipyard — two commands on a fresh machine: `make up` and `make test`.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")
RUN := $(UV) run --frozen

.PHONY: bootstrap npm-deps up test lint typecheck unit bench bench-tools clean

# Install uv with pip when missing, then sync the locked environment (all extras, dev + bench).
bootstrap:
	@command -v uv >/dev/null 2>&1 || test -x "$(HOME)/.local/bin/uv" || python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv
	@$(UV) sync --frozen --all-extras --quiet
	@$(MAKE) --no-print-directory npm-deps

# npm packages the tests use: the npm consul client (run against our registry) and
# playwright-core (drives Debian's Chromium in the dashboard test).
NPM_DIRS := tests/discovery/registry/npm tests/dashboard/browser
npm-deps:
	@for dir in $(NPM_DIRS); do \
		test -d $$dir/node_modules || npm ci --silent --no-audit --no-fund --prefix $$dir || \
			echo "bootstrap: npm ci failed in $$dir (is Node.js installed?)"; \
	done

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

# Peers that are programs, not Python packages (nginx for the gateway, wrk for load).
bench-tools:
	@command -v wrk >/dev/null 2>&1 && command -v nginx >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk nginx-light; } || \
		echo "bench: could not install wrk/nginx; the gateway benchmark will say what is missing"

bench: bootstrap bench-tools
	$(RUN) python -m bench $(BENCH)

clean:
	rm -rf .venv .mypy_cache .pytest_cache .ruff_cache
