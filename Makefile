# Two commands matter: `make run` and `make test`. Both set everything up from a fresh clone.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup sysdeps run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Real Prometheus and Alertmanager for the integration tests (Debian packages; needs root).
sysdeps:
	@if command -v prometheus >/dev/null && command -v prometheus-alertmanager >/dev/null; then :; else \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends prometheus prometheus-alertmanager >/dev/null; fi

run: setup
	$(BIN)/orderwatch run $(if $(CONFIG),--config $(CONFIG),)

test: setup sysdeps
	$(BIN)/ruff check orderwatch tests bench
	$(BIN)/mypy orderwatch tests bench
	$(BIN)/pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check orderwatch tests bench
	$(BIN)/ruff format --check orderwatch tests bench
	$(BIN)/mypy orderwatch tests bench

bench: setup
	$(BIN)/orderwatch bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
