# ftbench — set-up and everyday commands. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Which torch to install first. On a machine without nvidia-smi we pin the CPU build's
# version so pip never pulls several GB of CUDA wheels; override with TORCH=<pip spec>.
TORCH ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch" || echo "torch==2.13.0")
STAMP := $(VENV)/.installed-$(shell echo '$(TORCH)' | tr -c 'a-zA-Z0-9.=' '_')
# Benchmark shape for `make bench` (CPU-sized by default; see README for the 7B setting).
BENCH_ARGS ?= model=tiny-llama profile.batch_size=4 profile.seq_len=128

.PHONY: help install demo test bench lint clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test,dev]"
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP) ## create .venv and install ftbench with its test extra (TORCH=<pip spec> picks torch)

demo: $(STAMP) ## the embedded default: every method on the synthetic task with a tiny model, then the table
	HF_HUB_OFFLINE=1 $(VENV)/bin/ftbench -m 'method=glob(*)' task=synthetic model=tiny-llama

test: $(STAMP) ## run the test suite (CPU, tiny models)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest tests

bench: $(STAMP) ## profile every method (memory and speed) on synthetic batches; BENCH_ARGS sets the shape
	$(VENV)/bin/ftbench -m mode=profile 'method=glob(*)' $(BENCH_ARGS)

lint: $(STAMP) ## ruff over the sources and tests
	$(VENV)/bin/ruff check src tests

clean: ## remove run outputs (never .venv)
	rm -rf outputs multirun .pytest_cache
