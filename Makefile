# The two commands of the README: `make demo` (set up, run the main job) and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint redis browser clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job on the embedded default: synthetic data + real samples -> train -> ingest -> evaluate -> search.
demo: setup
	$(BIN)/histocli demo

test: setup redis browser lint
	$(BIN)/python -m pytest -q

# Integration tests start their own redis-server on a free loopback port; install it if missing.
redis:
	command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }

# The page's browser test drives Debian's headless chromium through chromium-driver; install them if missing.
browser:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; }

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy histo cli services workers benchmarks

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
