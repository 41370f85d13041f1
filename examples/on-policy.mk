# On-policy distillation (METHOD.md section 5) in rounds, as plain dasd pipelines.
#
#   make -f examples/on-policy.mk STUDENT=runs/full/ckpt/das-s2 \
#     PROMPTS=runs/full/train.prompts.jsonl HELDOUT=runs/full/heldout.prompts.jsonl \
#     WORK=runs/full/on-policy ROUNDS=2 STEPS=4
#
# Round K (1..ROUNDS) starts from the model of round K-1 (round 0's is STUDENT):
#   1. the student samples the training prompts at temperature 1, top_p 1, recording its
#      raw log-prob and id of every token (`sampler`); SHARDS shards, each resumable;
#   2. the teacher scores every sampled token teacher-forced (`dasd score --role
#      teacher`: `teacher_scores`, and the teacher tokens spent in the --stats);
#   3. `dasd pack` carries both log-probs into the packed sequences, on the sampled tokens;
#   4. `dasd train --objective reverse-kl`: one pass over the round's samples in STEPS
#      optimizer steps at a constant LR, from the last round's model, with a checkpoint
#      every SAVE_EVERY steps (a killed round resumes from the newest);
#   5. the round's model samples the held-out prompts and the teacher scores them: its
#      reverse KL to the teacher per token -> WORK/round-K/heldout-kl.json.
# WORK/round-0/heldout-kl.json measures STUDENT the same way (same held-out seed every
# round), WORK/round-K/round.json holds the round's training numbers, and
# WORK/summary.json every round's (python examples/on_policy.py documents the fields).
#
# Every target is a file, so re-running resumes where a killed run stopped. The trained
# model of the last round is WORK/round-ROUNDS/model.
#
# On a cluster (examples/multinode/README.md, "On-policy rounds"): run the shards of
# steps 1-2 as array tasks (targets WORK/round-K/scored.shard-J.jsonl.zst with SHARDS=N),
# then training under torchrun with TRAIN and TRAIN_FLAGS set, round by round.

BIN ?= .venv/bin
DASD := $(BIN)/dasd
PY := $(BIN)/python

# ---- what to distill (STUDENT, PROMPTS and HELDOUT are required)
# STUDENT: the start checkpoint, a transformers model folder. TEACHER: a model folder or
# .gguf file sharing the student's tokenizer and chat template (empty: the embedded
# default). PROMPTS: training prompt records. HELDOUT: held-out prompt records for the
# per-round reverse-KL measurement. SYSTEM: a system turn for prompts without one.
STUDENT ?=
TEACHER ?=
PROMPTS ?=
HELDOUT ?=
WORK ?= runs/on-policy
SYSTEM ?=

# ---- sizes
# ROUNDS: sample -> score -> pack -> train rounds. STEPS: optimizer steps per round (one
# pass over the round's samples, in at most STEPS steps). SAMPLES, HELDOUT_SAMPLES:
# student samples per prompt and round. MAX_TOKENS: generation cap per sample. CUTOFF:
# the longest training sequence (a prompt and MAX_TOKENS must fit). LR: constant
# learning rate (no warmup, no decay). The importance ratio is clipped to
# [1 - CLIP_LOW, 1 + CLIP_HIGH]. Round K samples with seed SEED + K, the held-out
# prompts always with SEED. SHARDS: sampling and scoring shards per round. SAVE_EVERY:
# a checkpoint every N optimizer steps (where a killed round resumes). PACK_FLAGS:
# --no-pack trains one sample per sequence, so a round takes STEPS steps whenever it
# has at least STEPS samples; --pack packs several per sequence (fewer forward passes,
# fewer steps).
ROUNDS ?= 2
STEPS ?= 4
SAMPLES ?= 2
HELDOUT_SAMPLES ?= $(SAMPLES)
MAX_TOKENS ?= 256
CUTOFF ?= 2048
LR ?= 1e-5
CLIP_LOW ?= 0.2
CLIP_HIGH ?= 0.2
SEED ?= 42
SHARDS ?= 1
SAVE_EVERY ?= 1
PACK_FLAGS ?= --no-pack

# ---- commands: override to sample or score on vLLM (SAMPLER=".venv-vllm/bin/dasd sample
# --backend vllm --enforce-eager", SCORER="$(DASD) score --backend vllm") or to train under
# torchrun (TRAIN="torchrun --nnodes 2 --nproc-per-node 8 ... -m dasd_cli.cli train",
# TRAIN_FLAGS="--deepspeed configs/zero3.json").
SAMPLER ?= $(DASD) sample
SCORER ?= $(DASD) score
TRAIN ?= $(DASD) train
TRAIN_FLAGS ?=
COMMON ?= --quiet

ifeq ($(strip $(STUDENT)),)
$(error set STUDENT to the start checkpoint (a model folder))
endif
ifeq ($(strip $(PROMPTS)),)
$(error set PROMPTS to the training prompts (prompt records))
endif
ifeq ($(strip $(HELDOUT)),)
$(error set HELDOUT to the held-out prompts (prompt records))
endif

SHARD_IDS := $(shell seq 0 $$(( $(SHARDS) - 1 )))
ROUND_IDS := $(shell seq 1 $(ROUNDS))
TEACHER_ARG := $(if $(strip $(TEACHER)),--model $(strip $(TEACHER)))
SYSTEM_ARG := $(if $(strip $(SYSTEM)),--system-prompt "$(strip $(SYSTEM))")
ON_POLICY := $(PY) examples/on_policy.py
FINAL := $(WORK)/round-$(ROUNDS)/model

model_of = $(if $(filter 0,$(1)),$(strip $(STUDENT)),$(WORK)/round-$(1)/model)
model_dep = $(if $(filter 0,$(1)),$(strip $(STUDENT))/config.json,$(WORK)/round-$(1)/model/config.json)
prev = $(shell echo $$(( $(1) - 1 )))
round_seed = $(shell echo $$(( $(SEED) + $(1) )))

.PHONY: all
all: $(WORK)/summary.json

$(WORK)/round-%/.dir:
	mkdir -p $(WORK)/round-$*/stats
	touch $@

# ---- held-out measurement of round K's model (K = 0: STUDENT)
define HELDOUT_RULES
$(WORK)/round-$(1)/heldout.samples.jsonl.zst: $(HELDOUT) $(call model_dep,$(1)) | $(WORK)/round-$(1)/.dir
	$(SAMPLER) --model $(call model_of,$(1)) --temperature 1.0 --top-p 1.0 --token-ids -n $(HELDOUT_SAMPLES) \
	  --max-tokens $(MAX_TOKENS) --seed $(SEED) $(SYSTEM_ARG) $(COMMON) \
	  --stats $(WORK)/round-$(1)/stats/heldout-sample.json -o $$@ $(HELDOUT)

$(WORK)/round-$(1)/heldout.scored.jsonl.zst: $(WORK)/round-$(1)/heldout.samples.jsonl.zst
	$(SCORER) --role teacher $(TEACHER_ARG) $(COMMON) \
	  --stats $(WORK)/round-$(1)/stats/heldout-score.json -o $$@ $$<

$(WORK)/round-$(1)/heldout-kl.json: $(WORK)/round-$(1)/heldout.scored.jsonl.zst
	$(ON_POLICY) heldout $(WORK)/round-$(1)/stats/heldout-score.json $(1) $(call model_of,$(1)) $$@
endef

# ---- one training round: K = $(1), from the model of round K - 1
define ROUND_RULES
$(WORK)/round-$(1)/samples.shard-%.jsonl.done: $(PROMPTS) $(call model_dep,$(call prev,$(1))) | $(WORK)/round-$(1)/.dir
	$(SAMPLER) --model $(call model_of,$(call prev,$(1))) --temperature 1.0 --top-p 1.0 --token-ids -n $(SAMPLES) \
	  --max-tokens $(MAX_TOKENS) --seed $(call round_seed,$(1)) --shard $$*/$(SHARDS) $(SYSTEM_ARG) \
	  $(COMMON) --resume --stats $(WORK)/round-$(1)/stats/sample.shard-$$*.json \
	  -o $(WORK)/round-$(1)/samples.shard-$$*.jsonl $(PROMPTS)
	touch $$@

$(WORK)/round-$(1)/scored.shard-%.jsonl.zst: $(WORK)/round-$(1)/samples.shard-%.jsonl.done
	$(SCORER) --role teacher $(TEACHER_ARG) $(COMMON) \
	  --stats $(WORK)/round-$(1)/stats/score.shard-$$*.json -o $$@ $(WORK)/round-$(1)/samples.shard-$$*.jsonl

$(WORK)/round-$(1)/packed.jsonl.zst: $(foreach j,$(SHARD_IDS),$(WORK)/round-$(1)/scored.shard-$(j).jsonl.zst)
	$(DASD) pack --tokenizer $(strip $(STUDENT)) --cutoff-len $(CUTOFF) $(PACK_FLAGS) $(COMMON) \
	  --stats $(WORK)/round-$(1)/stats/pack.json -o $$@ $$^

# --init-from the last round's model on a fresh start, --resume once a checkpoint exists
$(WORK)/round-$(1)/model/config.json: $(WORK)/round-$(1)/packed.jsonl.zst $(call model_dep,$(call prev,$(1)))
	$(TRAIN) --objective reverse-kl --clip-low $(CLIP_LOW) --clip-high $(CLIP_HIGH) \
	  $$(if $$(wildcard $(WORK)/round-$(1)/model/checkpoint-*),--resume,--init-from $(call model_of,$(call prev,$(1)))) \
	  --epochs 1 --global-batch-size $$$$($(ON_POLICY) batch $(WORK)/round-$(1)/stats/pack.json $(STEPS)) \
	  --lr $(LR) --min-lr $(LR) --warmup-ratio 0 --seed $(SEED) --save-every $(SAVE_EVERY) \
	  --keep-checkpoints 1 --delete-checkpoints --compress none $(TRAIN_FLAGS) $(COMMON) \
	  --stats $(WORK)/round-$(1)/stats/train.json --data $(WORK)/round-$(1)/packed.jsonl.zst \
	  --out $(WORK)/round-$(1)/model >> $(WORK)/round-$(1)/train.metrics.jsonl

$(WORK)/round-$(1)/round.json: $(WORK)/round-$(1)/model/config.json
	$(ON_POLICY) round $(WORK) $(1)
endef

$(foreach k,0 $(ROUND_IDS),$(eval $(call HELDOUT_RULES,$(k))))
$(foreach k,$(ROUND_IDS),$(eval $(call ROUND_RULES,$(k))))

$(WORK)/summary.json: $(foreach k,$(ROUND_IDS),$(WORK)/round-$(k)/round.json) \
    $(foreach k,0 $(ROUND_IDS),$(WORK)/round-$(k)/heldout-kl.json)
	$(ON_POLICY) summary $(WORK) $(ROUNDS)

# Keep the sampling shards' marks, which only pattern rules name: each is a step a re-run
# resumes from. Every other file is an explicit target, so a missing one is made again (a
# round whose training stopped before its final model resumes from its checkpoint).
.SECONDARY: $(foreach k,$(ROUND_IDS),$(foreach j,$(SHARD_IDS),$(WORK)/round-$(k)/samples.shard-$(j).jsonl.done))
