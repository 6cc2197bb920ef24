# The two commands of the README: `make demo` (set up, run the main job) and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   := $(or $(HISTO_HOME),.histo)/demo

.PHONY: setup demo test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job on the embedded default. Grows with the project: train -> ingest -> evaluate -> search.
demo: setup
	$(BIN)/histocli data synth bach $(DEMO)/bach --slides 8 --tiles-per-slide 16 --seed 0
	$(BIN)/histocli data synth bracs $(DEMO)/bracs --slides 8 --tiles-per-slide 14 --seed 0
	$(BIN)/histocli data scan $(DEMO)/bach --dataset bach --decode
	$(BIN)/histocli data scan $(DEMO)/bracs --dataset bracs --decode
	$(BIN)/histocli data scan histo/data/samples --dataset folder --decode

test: setup lint
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy histo cli services workers benchmarks

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
