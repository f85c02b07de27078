# Developer entry points. Everything runs from the project virtualenv in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv native run demo test lint bench clean

venv: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install only when pyproject.toml is newer than the stamp.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

# The compiled engine (mypyc) in build/native; a no-op when it matches engine/*.py.
# Without a C compiler it says so and the pure-Python engine runs.
native: venv
	$(BIN)/exchange engine build

run: venv native
	$(BIN)/exchange db upgrade
	$(BIN)/exchange serve

# The server, a simulated oracle and a market maker quoting every market (Ctrl-C stops).
demo: venv native
	$(BIN)/exchange demo

test: venv native
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

# The engine benchmark with its peers (pyorderbook, fastlob, order-matching) installed.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): pyproject.toml | $(STAMP)
	$(BIN)/pip install -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: venv native $(BENCH_STAMP)
	$(BIN)/python loadtests/bench_engine.py

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
