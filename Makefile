# Two commands do all the set-up on a fresh machine:
#   make demo   the whole pipeline on the embedded tiny world (runs/tiny)
#   make test   the test suite (installs Debian's chromium for the browser tests)
# On a GPU machine, install the CUDA build of torch that matches your driver first, then
# `make setup TORCH=`, which keeps it (an empty TORCH skips the torch install).
VENV ?= .venv
PYTHON ?= python3
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
RUN_DIR ?= runs/tiny

# the browser tests drive Debian's chromium through Playwright (not a browser Playwright downloads)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup browser demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(if $(TORCH),$(PY) -m pip install --quiet "$(TORCH)")
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

demo: setup
	$(VENV)/bin/rlhf run --run-dir $(RUN_DIR) --resume

browser:
	@command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null)

test: setup browser
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs
