# storestream: `make demo` sets everything up and runs the demo; `make test` runs every test.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install browser java kafka kstreams demo test lint unit integration bench reliability reliability-quick devstack worker clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@echo "==> creating $(VENV) with pinned dependencies ($(PYTHON))"
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

# Headless Chromium (Debian's package) for the live page's browser test.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "==> installing Debian's chromium for the browser test"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# Java 17 and Maven (Debian's packages) for the Apache Kafka broker of the tests.
java:
	@{ command -v java >/dev/null 2>&1 && command -v mvn >/dev/null 2>&1; } || { \
	  echo "==> installing Debian's JDK 17 and Maven for the Apache Kafka broker"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	    openjdk-17-jdk-headless maven >/dev/null; }

# Apache Kafka's jars from Maven Central (kafka/pom.xml) into .cache/kafka (first run only).
kafka: install java
	$(BIN)/python app/dev/kafka_broker.py

# The Kafka Streams peer of the bench (bench/kstreams, Maven) into bench/kstreams/target.
kstreams: install java
	$(BIN)/python -m bench.kstreams_peer build

demo: install
	$(BIN)/python -m app.dev.demo

# Two pytest processes (pytest-xdist; an idle one takes tests queued for the busy one), each
# with its own broker and redis (the integration tier's session fixture): the tier's tests
# mostly wait on brokers and worker processes, so the suite takes ~18 min instead of ~37 on
# the 2-core VM. Three took 15-16 min but starved the host (load ~6: worker groups lost,
# start-up bounds missed) for one or two minutes saved. TEST_JOBS=0: one process.
TEST_JOBS ?= 2
TEST_DIST := $(if $(filter 0,$(TEST_JOBS)),,--dist worksteal)

test: install browser kafka lint
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) $(TEST_DIST)

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy app tables agents core

unit: install
	$(BIN)/python -m pytest -q tests/unit

integration: install browser kafka
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) $(TEST_DIST) tests/integration

BENCH_STAMP := $(VENV)/.installed-bench-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	@touch $@

# Throughput against peers (on Apache Kafka: its jars and the Kafka Streams peer's are built
# first), latency, recovery, memory and geo -> bench/results/latest.json and bench/RESULTS.md;
# BENCH_ARGS=--broker tansu: on the embedded broker, BENCH_ARGS=--quick: small.
bench: $(BENCH_STAMP) kafka kstreams
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# Fault injection: 2 workers, SIGKILL/SIGTERM, poison pills, offers, web load (~6-10 min),
# on Apache Kafka; BROKER=tansu runs it on the embedded broker (BROKER's default of devstack
# does not apply here: only a BROKER given to make does).
# CLUSTER=3: three KRaft nodes, three workers (one in a network namespace: needs root),
# leader/controller SIGKILLs, broker SIGSTOPs and network cuts (bench/cluster_faults.py).
RELIABILITY_BROKER = $(if $(filter command line environment,$(origin BROKER)),$(BROKER),kafka)
CLUSTER ?=
reliability: install $(if $(filter kafka,$(RELIABILITY_BROKER)),kafka)
	$(BIN)/python -m bench.reliability --broker $(RELIABILITY_BROKER) \
		$(if $(CLUSTER),--cluster $(CLUSTER)) $(RELIABILITY_ARGS)

reliability-quick: install $(if $(filter kafka,$(RELIABILITY_BROKER)),kafka)
	$(BIN)/python -m bench.reliability --quick --broker $(RELIABILITY_BROKER)

# BROKER=kafka: Apache Kafka instead of Tansu; KAFKA_NODES=3: a three-node cluster.
BROKER ?= tansu
KAFKA_NODES ?= 1
devstack: install $(if $(filter kafka,$(BROKER)),kafka)
	DEVSTACK_BROKER=$(BROKER) DEVSTACK_KAFKA_NODES=$(KAFKA_NODES) $(BIN)/faust -A app devstack

# A worker for `make devstack`'s broker: on Tansu (BROKER's default) with the settings it needs
# (app/dev/devstack.py WORKER_ENV: FETCH_WAIT_MS=10 unless set); BROKER=kafka: faust.ini as is.
worker: install
	$(if $(filter tansu,$(BROKER)),FETCH_WAIT_MS=$${FETCH_WAIT_MS:-10} )$(BIN)/faust -A app worker -l info

clean:
	rm -rf $(VENV) data .cache .pytest_cache .mypy_cache .ruff_cache .hypothesis
