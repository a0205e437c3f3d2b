# `make test` is the one test command: installs what the tests need, lints, type-checks,
# and runs the suite against real Redis, PostgreSQL and a Kafka-protocol broker.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: test deps lint
test: deps lint
	$(BIN)/python -m pytest -q -ra --durations=15

deps:
	bash scripts/install-test-deps.sh

lint:
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src
