# Two commands do all the set-up on a fresh machine:
#   make demo   the whole pipeline on the embedded tiny world (runs/tiny)
#   make test   the test suite
# On a GPU machine, install the CUDA build of torch that matches your driver first, then
# `make setup TORCH=`, which keeps it (an empty TORCH skips the torch install).
VENV ?= .venv
PYTHON ?= python3
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
RUN_DIR ?= runs/tiny

.PHONY: setup demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(if $(TORCH),$(PY) -m pip install --quiet "$(TORCH)")
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

demo: setup
	$(VENV)/bin/rlhf run --run-dir $(RUN_DIR) --resume

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs
