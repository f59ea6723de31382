# The two front doors: `make demo` and `make test`. Both build everything they need on a fresh
# machine: the virtualenv, the Python packages, and the Kafka jars (from Maven Central).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
# Re-install only when the dependency list changes.
INSTALLED := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
JARS := .cache/kafka-jars/.resolved.json
PYTEST_ARGS ?=

.PHONY: help install jars demo lint test bench clean

help:
	@echo "make demo   - set up, start the local stack, run the main flow, stop cleanly"
	@echo "make lint   - set up, then ruff and mypy (make test runs it first)"
	@echo "make test   - set up, then lint and run the whole test suite"
	@echo "make bench  - set up, then run the benchmarks in bench/"
	@echo "make browser - install Debian's Chromium for the console's browser tests (make test does)"
	@echo "make conformance - build the Java wire-contract conformance program (make test does)"
	@echo "make clean  - remove the virtualenv and caches"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel

$(INSTALLED): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $@

install: $(INSTALLED)

$(JARS): devstack/pom.xml | $(INSTALLED)
	$(PY) -m devstack.kafka --resolve-jars

jars: $(JARS)

demo: install jars
	$(VENV)/bin/computectl demo

# The rules are in pyproject.toml ([tool.ruff], [tool.mypy]); docs/DECISIONS.md says why.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: lint jars
	$(PY) -m pytest $(PYTEST_ARGS)

bench: bench-deps jars
	$(PY) bench/bench_submit.py
	$(PY) bench/bench_peer.py

# The peer benchmark's Celery + Redis (bench/bench_peer.py): the bench extra and Debian's
# redis-server when none is on PATH. Not part of `make install` (the services do not need them);
# `make test` installs them for the bench's short form (tests/bench/test_bench_peer.py).
BENCH_INSTALLED := $(VENV)/.bench-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
$(BENCH_INSTALLED): pyproject.toml | $(INSTALLED)
	$(PY) -m pip install --quiet -e ".[dev,bench]"
	rm -f $(VENV)/.bench-*
	touch $@
.PHONY: bench-deps
bench-deps: $(BENCH_INSTALLED)
	@command -v redis-server >/dev/null || $(SUDO) apt-get install -y -qq redis-server \
		|| { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server; }
test: bench-deps

clean:
	rm -rf $(VENV) .cache .pytest_cache .hypothesis

# The console's browser tests (tests/console) drive Debian's Chromium through Playwright, which
# cannot download a browser of its own here: install the distribution's package when missing.
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
.PHONY: browser
browser:
	@test -x $(CHROMIUM) || $(SUDO) apt-get install -y chromium \
		|| { $(SUDO) apt-get update && $(SUDO) apt-get install -y chromium; }
test: browser

# The wire-contract conformance program (tests/conformance/java, docs/WIRE_FORMAT.md): Java,
# Apache Avro and the plain Kafka client from Maven Central, built into .cache/conformance-java.
# Rebuilt only when its sources change; once Maven's cache holds the jars it needs no network.
CONFORMANCE_JAR := .cache/conformance-java/wire-conformance-1.jar
CONFORMANCE_SRC := tests/conformance/java/pom.xml $(shell find tests/conformance/java/src -name '*.java' 2>/dev/null)
.PHONY: conformance
$(CONFORMANCE_JAR): $(CONFORMANCE_SRC)
	@command -v mvn >/dev/null || { echo "make conformance: install Maven 3 and a JDK 17 (apt-get install maven openjdk-17-jdk-headless)"; exit 1; }
	@mkdir -p .cache && mvn -q -B -f tests/conformance/java/pom.xml package > .cache/conformance-java.log 2>&1 \
		|| { cat .cache/conformance-java.log; exit 1; }
	@touch $@
conformance: $(CONFORMANCE_JAR)
test: conformance
