# openmm_flowplugin: the two commands a newcomer needs.
#   make demo   set up .venv if missing, install, run the main job on built-in defaults
#   make test   set up .venv if missing, install with test extras, run the fast test suite
#
# CPU machines get torch==2.13.0 (CPU build). On a GPU machine: make demo TORCH=torch EXTRAS=test,ani,cuda12

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
EXTRAS ?= test,ani
PYTEST_ARGS ?= -m "not slow" -q

.PHONY: demo test test-slow install clean

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

clean:
	rm -rf $(VENV) build *.egg-info out
