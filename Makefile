# Two commands for a newcomer: `make demo` runs the main job, `make test` the tests.
# Both create .venv and install what they need on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test check docs bench lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/python -m functional_bp demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest

# The quick tier for the edit loop: lint, then the tests not marked slow.
check: lint
	$(BIN)/python -m pytest -m "not slow"

# The documentation site, in strict mode: a broken link, a missing reference or a public
# name without a docstring fails the build. The site goes to site/ (ignored).
docs: $(BIN)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(BIN)/.installed
	$(BIN)/python scripts/bench.py

lint: $(BIN)/.installed
	$(BIN)/ruff check functional_bp tests scripts
	$(BIN)/ruff format --check functional_bp tests scripts

clean:
	rm -rf $(VENV) out bench-results functional_bp-demo site
