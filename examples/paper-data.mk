# The paper's two training stages on the authors' released data, for your own student.
#
#   make -f examples/paper-data.mk STUDENT=/models/Qwen3-4B-Thinking-2507 \
#        DATA_DIR=/data/superior-reasoning WORK=/shared/dasd/paper
#
# DATA_DIR holds the released files of Alibaba-Apsara/Superior-Reasoning-SFT-gpt-oss-120b
# (JSONL as published, or the hub's Parquet; set STAGE1_DATA / STAGE2_DATA to the paths):
# stage 1 (105K low-temperature responses) and stage 2 (330K high-temperature ones),
# already filtered and DAS-selected by the authors. Per stage this runs
#
#   dasd import -> dasd filter --cutoff-len -> dasd pack -> dasd train (multi-node)
#
# with the released training YAMLs' settings: lr 5e-5 cosine to 1e-5, 10% warmup,
# 6 epochs, global batch 64 packed sequences, cutoff 65536, DeepSpeed ZeRO-3 and Liger
# kernels (examples/multinode/train.sbatch sets them; its defaults are these numbers).
# Stage 2 starts from stage 1's final model. The system turn the released models were
# trained with ("You are a helpful assistant.") is added to every prompt.
#
# RESCORE=1 instead re-scores the released responses against your student with DAS
# (their teacher log-probs come from the ...-Logprob files, LOGPROBS1/LOGPROBS2, decoded
# with gpt-oss's tokenizer: the folder GPT_OSS_TOKENIZER, or, when it is unset, the
# o200k_harmony folder examples/paper_tokenizers.py builds from quicktok-v1 into
# WORK/tokenizers/gpt-oss, no download) and keeps, per prompt, the response with the
# most Teacher sentences: `dasd score --model STUDENT --accept-logprobs unknown`, then
# `dasd mix --select das --per-prompt 1` (the release does not say whether its log-probs
# are raw, so import records them as unknown).
#
# LAUNCH=sbatch (default) submits examples/multinode/train.sbatch on NODES nodes and
# waits for it; LAUNCH=torchrun runs examples/multinode/train-torchrun.sh on this node
# (start it on every node with NNODES, NODE_RANK and MASTER_ADDR set).

STUDENT ?= $(error set STUDENT to your student model folder)
DATA_DIR ?= .
WORK ?= runs/paper-data
DASD ?= dasd
CUTOFF ?= 65536
SYSTEM_PROMPT ?= You are a helpful assistant.
NODES ?= 2
LAUNCH ?= sbatch
RESCORE ?=
GPT_OSS_TOKENIZER ?=
PYTHON ?= python3
# gpt-oss's tokenizer for RESCORE=1: the given folder, or one built here from quicktok-v1
BUILT_TOKENIZER := $(WORK)/tokenizers/gpt-oss/tokenizer.json
TEACHER_TOKENIZER := $(or $(GPT_OSS_TOKENIZER),$(WORK)/tokenizers/gpt-oss)
STAGE1_DATA ?= $(DATA_DIR)/Superior-Reasoning-SFT-gpt-oss-120b-stage1-train-data.jsonl
STAGE2_DATA ?= $(DATA_DIR)/Superior-Reasoning-SFT-gpt-oss-120b-stage2-train-data.jsonl
LOGPROBS1 ?= $(DATA_DIR)/logprob-stage1.jsonl
LOGPROBS2 ?= $(DATA_DIR)/logprob-stage2.jsonl

SYS := --system-prompt "$(SYSTEM_PROMPT)"
STATS := $(WORK)/stats

.PHONY: all stage1 stage2 packed
.DELETE_ON_ERROR:

all: stage2
packed: $(WORK)/stage1.packed.jsonl.zst $(WORK)/stage2.packed.jsonl.zst
stage1: $(WORK)/ckpt/stage1/config.json
stage2: $(WORK)/ckpt/stage2/config.json

$(BUILT_TOKENIZER):
	$(PYTHON) examples/paper_tokenizers.py --out $(WORK)/tokenizers

# import | filter (| score | mix) | pack, one pipe per stage
$(WORK)/stage%.packed.jsonl.zst: $(if $(RESCORE),$(if $(GPT_OSS_TOKENIZER),,$(BUILT_TOKENIZER)))
	mkdir -p $(STATS)
	$(DASD) import --stats $(STATS)/import$*.json \
	    $(if $(RESCORE),--logprobs $(LOGPROBS$*) --tokenizer $(TEACHER_TOKENIZER)) $(STAGE$*_DATA) \
	  | $(DASD) filter --cutoff-len $(CUTOFF) --tokenizer $(STUDENT) $(SYS) --stats $(STATS)/filter$*.json \
	  $(if $(RESCORE),| $(DASD) score --model $(STUDENT) --backend vllm --accept-logprobs unknown $(SYS) --stats $(STATS)/score$*.json \
	  | $(DASD) mix --select das --per-prompt 1 --stats $(STATS)/mix$*.json) \
	  | $(DASD) pack --tokenizer $(STUDENT) --cutoff-len $(CUTOFF) $(SYS) --stats $(STATS)/pack$*.json \
	    -o $@

TRAIN_ENV = STUDENT=$(STUDENT) WORK=$(WORK)
ifeq ($(LAUNCH),sbatch)
TRAIN = mkdir -p logs && env $(TRAIN_ENV) $(1) sbatch --wait --nodes=$(NODES) examples/multinode/train.sbatch
else
TRAIN = env $(TRAIN_ENV) $(1) bash examples/multinode/train-torchrun.sh
endif

# stage 1: from the student; stage 2: from stage 1's final model
$(WORK)/ckpt/stage1/config.json: $(WORK)/stage1.packed.jsonl.zst
	$(call TRAIN,DATA=$< OUT=$(WORK)/ckpt/stage1 INIT_FROM=)
$(WORK)/ckpt/stage2/config.json: $(WORK)/stage2.packed.jsonl.zst $(WORK)/ckpt/stage1/config.json
	$(call TRAIN,DATA=$< OUT=$(WORK)/ckpt/stage2 INIT_FROM=$(WORK)/ckpt/stage1)
