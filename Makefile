# tessera — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help setup system streaming broker-start broker-stop test test-slow test-stream lint fmt demo plan validate clean bench-kv bench-backfill bench-stream bench-serve kv-up kv-down test-deploy test-cluster bench-feast
BROKER_PORT ?= 9092

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

system: ## Install the system packages tessera needs (memcached, Java); apt-get, once
	@bash scripts/install-system.sh

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[main,dev]'
	@rm -f $(VENV)/.installed-* && touch $@

setup: system $(STAMP) ## Create the virtualenv and install tessera with everything it needs

streaming: $(STAMP) ## Fetch the broker binary and the Flink Kafka jars, create .venv-flink (idempotent)
	@bash scripts/setup-streaming.sh

broker-start: streaming ## Start the local Kafka-protocol broker on 127.0.0.1:$(BROKER_PORT)
	$(BIN)/python -m flink_jobs.broker start --port $(BROKER_PORT) --topics payments=4

broker-stop: ## Stop the local broker
	$(BIN)/python -m flink_jobs.broker stop

test: setup streaming ## Run the test suite (starts its own services)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-stream: setup streaming ## Streaming tests only (real broker + Flink mini-cluster)
	$(BIN)/python -m pytest tests/streaming $(PYTEST_ARGS)

test-deploy: setup streaming ## Static checks of docker/ (and local runs of the cluster CLIs)
	$(BIN)/python -m pytest tests/deploy $(PYTEST_ARGS)

test-cluster: setup ## Spark jobs via spark-submit on a real standalone Master + Worker on loopback (vs local mode)
	$(BIN)/python -m pytest tests/cluster $(PYTEST_ARGS)

test-slow: setup streaming ## Run the slow suites too (large data, long streams, the report in Chromium)
	@bash scripts/install-system.sh --browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup ## ruff, mypy and the import-layer contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy features kvstore flink_jobs spark_jobs serving tessera
	$(BIN)/lint-imports

fmt: setup ## Format the code
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

validate: setup ## Validate the fraud feature repo
	$(BIN)/tessera validate features/fraud

plan: setup ## Show what the fraud feature repo will run
	$(BIN)/tessera plan features/fraud

demo: setup streaming ## The whole story on embedded defaults
	$(BIN)/tessera demo

bench-kv: setup ## KV benchmark: bulk-load keys/s, multi-get p50/p99 per backend (1 M keys; BENCH_KV_ARGS="--keys 10000000 --engines")
	$(BIN)/python bench/bench_kv.py $(BENCH_KV_ARGS)

bench-backfill: setup ## Backfill benchmark: our Spark backfill vs DuckDB RANGE windows, 1 M events (BENCH_ARGS=--large: 10 M)
	$(BIN)/python bench/bench_backfill.py $(BENCH_ARGS)

bench-stream: setup streaming ## Stream benchmark: throughput and freshness p50/p99/p99.9 at fixed rates
	$(BIN)/python bench/bench_stream.py $(BENCH_ARGS)

bench-serve: setup ## Serving benchmark: HTTP p50/p99/p99.9 + throughput at fixed rates (server in its own process), in-process fetch
	$(BIN)/python bench/bench_serve.py $(BENCH_ARGS)
	$(BIN)/python bench/bench_fetch.py

bench-feast: setup ## Feast side by side: same fraud_v1 values, in-process and HTTP at the same rates (Feast in .venv-feast)
	@bash scripts/setup-feast.sh
	$(BIN)/python bench/bench_feast.py $(BENCH_ARGS)

kv-up: setup ## Start 3 memcached + a PostgreSQL on 127.0.0.1 (PIDs in .data/services)
	$(BIN)/python -m kvstore.services start memcached --nodes 3 --port 11311
	$(BIN)/python -m kvstore.services start postgres --port 55432

kv-down: ## Stop what kv-up started
	$(BIN)/python -m kvstore.services stop

clean: ## Remove the virtualenvs and generated data
	rm -rf $(VENV) .venv-flink .venv-feast .tools .data build *.egg-info
