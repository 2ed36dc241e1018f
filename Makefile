# The README's set-up: `make run` and `make test` work on a fresh machine with
# python3 and make (scripts/ensure-node installs Node.js for the dashboard's
# build when it is missing).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench clean venv dashboard

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP) dashboard
	$(BIN)/crossway up --demo

test: $(STAMP) dashboard
	scripts/ensure-etcd
	scripts/ensure-prometheus
	scripts/ensure-chromium
	$(BIN)/python -m pytest -q

# The web dashboard (dashboard/, Node.js + npm) built into the Python package;
# rebuilt only when its sources, lock file or build config change.
DASHBOARD_STAMP := dashboard/.built
DASHBOARD_INDEX := src/crossway/dashboard/static/index.html
DASHBOARD_SRC   := $(shell find dashboard/src -type f 2>/dev/null) dashboard/index.html \
                   dashboard/package.json dashboard/package-lock.json dashboard/vite.config.ts dashboard/tsconfig.json

dashboard: $(DASHBOARD_STAMP)
	@test -f $(DASHBOARD_INDEX) || { rm -f $(DASHBOARD_STAMP); $(MAKE) --no-print-directory $(DASHBOARD_STAMP); }

$(DASHBOARD_STAMP): $(DASHBOARD_SRC)
	scripts/ensure-node
	cd dashboard && npm ci --no-audit --no-fund && npm run build
	@touch $@

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy --strict src/

bench: $(STAMP)
	scripts/ensure-etcd
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist
