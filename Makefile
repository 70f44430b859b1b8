# `make demo` meta-trains MAML on sine and prints a meta-test table; `make test` runs the tests.
# Both create or reuse .venv and install the package with everything it needs (setup.cfg).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: demo test test-fast test-slow test-all docs bench install clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	@run=runs/sine-demo-$$(date +%Y%m%d-%H%M%S); \
	$(BIN)/tfmeta train --config sine-cpu --run-dir $$run && \
	$(BIN)/tfmeta evaluate $$run --steps 10 --tasks 600

# Tests run on every core (pytest-xdist), a test file per worker so that its fixtures are built
# once; the 25 slowest are listed at the end.
TEST_ARGS := -n auto --dist loadfile -ra --durations=25

# Three tiers. test-fast: the numerics against their independent truths, without training or
# processes. test: adds the tests that train tiny models or start processes. test-slow: the
# end-to-end runs on real data (minutes each). test-all and .ci/run: every tier.
test: $(STAMP)
	$(BIN)/python -m pytest $(TEST_ARGS) -m "not slow"

test-fast: $(STAMP)
	$(BIN)/python -m pytest $(TEST_ARGS) -m "not slow and not trains"

test-slow: $(STAMP)
	$(BIN)/python -m pytest $(TEST_ARGS) -m slow

test-all: $(STAMP)
	$(BIN)/python -m pytest $(TEST_ARGS)

# The documentation site (mkdocs.yml): strict, so a broken link, a missing page or a docstring
# reference that does not resolve fails the build. Writes build/site/.
DOCS_STAMP := $(VENV)/.installed-docs

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python benchmarks/maml_tfmeta.py

clean:
	rm -rf $(VENV) build *.egg-info
