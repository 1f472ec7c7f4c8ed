# radlake: `make demo` and `make test` are the two set-up commands (see README.md).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export LAKE_HOME ?= $(CURDIR)/lakehouse
export DAGSTER_HOME ?= $(LAKE_HOME)/dagster_home
export GX_ANALYTICS_ENABLED := false
export DAGSTER_DISABLE_TELEMETRY := 1
export MPLBACKEND := Agg

.PHONY: install browser postgres demo test ui serve lint format bench clean-lake

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "radlake needs Python 3.11"'
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: install
	$(BIN)/radlake init
	@if [ -z "$$(find "$(LAKE_HOME)/landing" -type f -print -quit 2>/dev/null)" ]; then \
		$(BIN)/radlake demo-data; \
	else echo "landing zone in $(LAKE_HOME)/landing already has files: not generating demo data"; fi
	$(BIN)/radlake materialize --select '*'
	@echo
	@echo "radlake demo is ready. Where to look:"
	@$(BIN)/radlake paths
	@echo
	@echo "Example: $(BIN)/radlake sql \"select model, cohort, ... from model_metrics where metric = 'auc'\""
	@$(BIN)/radlake sql "select study, model, cohort, printf('%.3f [%.3f-%.3f]', value, ci_low, ci_high) as auc_95ci from model_metrics where metric = 'auc' order by study, model, cohort" --max-rows 20
	@echo "Reports: $(LAKE_HOME)/reports/ (open gist_mitotic_index/report.html)"
	@echo "Lineage, metadata, checks, schedules: make ui  ->  http://127.0.0.1:3000"

# The UI test drives Debian's headless Chromium; installed here when missing (needs root or sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian's chromium for the UI test"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The daemon test starts a throwaway PostgreSQL server (Debian's postgresql; initdb/pg_ctl in
# /usr/lib/postgresql/<version>/bin); installed here when missing (needs root or sudo).
postgres:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1 || { \
		echo "installing Debian's postgresql for the daemon test"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

test: install browser postgres
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

ui: install
	$(BIN)/radlake init
	$(BIN)/dagster dev -w workspace.yaml

# A lab server: the webserver and the daemon (landing sensor, nightly schedule, run queue) on one
# instance; with DAGSTER_PG_URL set, runs and events live in PostgreSQL (README: a lab server).
SERVE_HOST ?= 127.0.0.1
SERVE_PORT ?= 3000
serve: install
	$(BIN)/radlake serve --host $(SERVE_HOST) --port $(SERVE_PORT)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python bench/run_all.py

clean-lake:
	rm -rf "$(LAKE_HOME)"
