# openmm_flowplugin: the two commands a newcomer needs.
#   make demo   set up .venv if missing, install, run the main job on built-in defaults
#   make test   set up .venv if missing, install with test extras, run the fast test suite
#   make docs   also install the docs extra, build the HTML documentation into docs/_build/html (warnings are errors)
#
# CPU machines get torch==2.13.0 (CPU build). On a GPU machine: make demo TORCH=torch EXTRAS=test,ani,solvation,cuda12
# The solvation extra (AmberTools + RDKit, ~120 MB of wheels, ~470 MB installed) builds small molecules in water.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
EXTRAS ?= test,ani,solvation
PYTEST_ARGS ?= -m "not slow" -q

.PHONY: demo test test-slow docs install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when the package metadata changes.
$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/openmm-flowplugin demo

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS) tests openmm_flowplugin --doctest-modules

test-slow: install
	$(BIN)/python -m pytest -m slow -q tests

# The API pages in docs/api/generated are written by autosummary; removing them first drops pages of removed modules.
$(VENV)/.docs-installed: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS),docs]"
	touch $@

docs: $(VENV)/.docs-installed
	rm -rf docs/api/generated
	$(BIN)/python -m sphinx -W --keep-going -q -b html docs docs/_build/html
	@echo "documentation: docs/_build/html/index.html"

clean:
	rm -rf $(VENV) build *.egg-info out
