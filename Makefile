# Conveyor's one way to set up, run and check. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
# Use the machine's Python; never download one.
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)
# Quiet the theme's notice on every build.
export NO_MKDOCS_2_WARNING := 1

.PHONY: help
help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

# The environment is rebuilt from the lock file whenever a project file changes.
$(VENV)/.synced: $(UV) uv.lock pyproject.toml services/*/pyproject.toml
	$(UV) sync --frozen
	@touch $@

.PHONY: install
install: $(VENV)/.synced ## create .venv from uv.lock

.PHONY: run
run: $(VENV)/.synced ## start Redis, the api and a worker (REDIS_URL to use your own Redis)
	@$(BIN)/python -m conveyor_core.local.run

# Debian packages that test suites drive for real. Each suite adds its own line.
TEST_DEBS :=
TEST_DEBS += redis-tools
TEST_DEBS += prometheus
TEST_DEBS += redis-server
TEST_DEBS += chromium chromium-driver

.PHONY: test-deps
test-deps: ## install the Debian packages the tests drive (apt-get, as root)
	@missing=$$(for p in $(TEST_DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages for the tests:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

.PHONY: test
test: $(VENV)/.synced test-deps ## run every test suite against real Redis and real processes
	$(BIN)/pytest -n auto --dist loadgroup

.PHONY: bench
bench: $(VENV)/.synced ## Conveyor vs bare arq, flow control, the api vs bare FastAPI + arq, a queue over 3 cluster shards; writes docs/benchmarks.md
	$(BIN)/python -m bench.report

.PHONY: dashboard
dashboard: $(VENV)/.synced ## regenerate the Grafana dashboard JSON from tools/dashboard.py
	$(BIN)/python -m tools.dashboard

# Debian packages that `make check` drives: luacheck, for the Lua scripts.
CHECK_DEBS := lua-check

.PHONY: check-deps
check-deps: ## install the Debian packages make check drives (apt-get, as root)
	@missing=$$(for p in $(CHECK_DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages for the checks:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

.PHONY: check
check: $(VENV)/.synced check-deps ## ruff format --check, ruff check, mypy --strict, luacheck, docs current and building
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m tools.lua_lint
	$(BIN)/python -m tools.docs_reference --check
	@site=$$(mktemp -d) && trap 'rm -rf "$$site"' EXIT && \
		$(BIN)/mkdocs build --strict --site-dir "$$site"

.PHONY: docs-reference
docs-reference: $(VENV)/.synced ## regenerate docs/reference/ (HTTP api, settings, metrics, chart values)
	$(BIN)/python -m tools.docs_reference

.PHONY: docs
docs: $(VENV)/.synced ## build the documentation site into site/ (mkdocs --strict)
	$(BIN)/mkdocs build --strict

.PHONY: fmt
fmt: $(VENV)/.synced ## format and fix what ruff can
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

.PHONY: chart-lint
chart-lint: $(VENV)/.synced ## helm lint the chart (in-process Helm) with every values set in charts/conveyor/ci
	$(BIN)/python -m tests.charts.lint

.PHONY: chart-test
chart-test: $(VENV)/.synced ## render, validate, scan and run the chart's pods as local processes
	$(BIN)/pytest tests/charts -n auto --dist loadgroup

.PHONY: manifests
manifests: $(VENV)/.synced ## regenerate k8s/ (plain manifests) from the chart
	$(BIN)/python -m tests.charts.manifests

# Images are tagged with the chart's appVersion unless IMAGE_TAG says otherwise.
IMAGE_TAG ?= $(shell sed -n 's/^appVersion: "\(.*\)"/\1/p' charts/conveyor/Chart.yaml)
IMAGE_PREFIX ?= conveyor

.PHONY: images
images: ## build both images where a Docker engine answers (IMAGE_PREFIX, IMAGE_TAG)
	@if docker info >/dev/null 2>&1; then \
		docker build -f services/api/Dockerfile -t $(IMAGE_PREFIX)/conveyor-api:$(IMAGE_TAG) . && \
		docker build -f services/worker/Dockerfile -t $(IMAGE_PREFIX)/conveyor-worker:$(IMAGE_TAG) . ; \
	else \
		echo "make images: no Docker engine answers here, so no image was built."; \
	fi

.PHONY: lock
lock: $(UV) ## update uv.lock after a dependency change
	$(UV) lock

.PHONY: clean
clean: ## remove the environments
	rm -rf $(VENV) $(TOOLS) .mypy_cache .pytest_cache .ruff_cache
