# modelbus: `make run` starts everything, `make test` runs the whole suite.
# Both work on a fresh machine with only python3, pip and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-unit install lint docs clean latency bench bench-peers-test bench-governance chaos chaos-short e2e

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/modelbus up --demo

test: $(STAMP)
	$(BIN)/python -m pytest

# The slow tests `make test` leaves out: nodes and servers killed under load, whole benchmark runs
# (about 2.5 minutes; CI runs them after make test).
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

# Only tests/unit (marked `unit` by tests/conftest.py): one module's logic at a time, no stack, seconds.
test-unit: $(STAMP)
	$(BIN)/python -m pytest -m unit

lint: $(STAMP)
	$(BIN)/ruff check shared services tests bench scripts
	$(BIN)/ruff format --check shared services tests bench scripts
	$(BIN)/mypy

docs: $(STAMP)
	$(BIN)/python -m scripts.gen_asyncapi

# Claude Code (npm, pinned) in print mode against real stacks, answered by the mock
# and by llm-katan (tests/e2e). Needs node and npm besides python3; not part of
# `make test`. The install into .e2e/ happens once (a stamp file there).
e2e: $(STAMP)
	bash scripts/install_claude_code.sh .e2e
	$(BIN)/python -m pytest -m e2e tests/e2e

latency: $(STAMP)
	$(BIN)/python scripts/latency.py

# modelbus against direct calls and the peer gateways (vllm-router, sglang-router,
# Envoy, TensorZero, Portkey, LiteLLM: each installed into bench/.envs/ on first
# use), one client, one upstream; e.g. make bench BENCH_ARGS="--quick --peers none"
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# Each peer gateway of the benchmark installed into bench/.envs/ and run once in
# front of llm-katan (slow: every install is minutes the first time).
bench-peers-test: $(STAMP)
	$(BIN)/python -m pytest -m peers tests/bench

# Governance on versus off on the mock path (ledger, metrics, prices, and the budgets or
# rate limits of GOV_EXTRA), interleaved rounds in one run: docs/perf/runs/<date>-governance.md
GOV_ARGS ?= --rounds 3 --requests 500
bench-governance: $(STAMP)
	$(BIN)/python -m bench.scenarios.governance $(GOV_ARGS) $(if $(GOV_EXTRA),--on-extra $(GOV_EXTRA))

# Fault injection under load, counted at the wire (docs/reliability.md): every
# scenario in under 5 minutes; e.g. make chaos CHAOS_ARGS="--scenario nats-restart"
chaos: $(STAMP)
	$(BIN)/python -m bench.chaos $(CHAOS_ARGS)

# The CI subset (< 90 s); exits non-zero if a request is never answered or answered twice
chaos-short: $(STAMP)
	$(BIN)/python -m bench.chaos --short $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
