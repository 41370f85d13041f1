#!/bin/bash
# Multi-node training with DeepSpeed ZeRO-3 without Slurm: run this script once on every
# node, each with its own NODE_RANK and the same MASTER_ADDR.
#
#   # on node 0 (its address is MASTER_ADDR):
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 STUDENT=/models/student WORK=/shared/dasd/stage2 \
#     bash examples/multinode/train-torchrun.sh
#   # on node 1:
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 STUDENT=/models/student WORK=/shared/dasd/stage2 \
#     bash examples/multinode/train-torchrun.sh
#
# The same run as train.sbatch (see there): the paper's stage-2 settings by default, INIT_FROM=
# (empty) for stage 1. WORK must be storage every node sees. After a crash or a stop, run
# the same commands again on every node: the run continues exactly from the newest complete
# checkpoint in OUT (`dasd train --resume`), given the same data, flags and node count.
set -euo pipefail

# ---- settings
NNODES=${NNODES:?set NNODES to the number of nodes}
NODE_RANK=${NODE_RANK:?set NODE_RANK to this node index, 0 .. NNODES-1}
MASTER_ADDR=${MASTER_ADDR:?set MASTER_ADDR to node 0 address, reachable from every node}
MASTER_PORT=${MASTER_PORT:-29500}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
STUDENT=${STUDENT:?set STUDENT to the student model folder}
WORK=${WORK:?set WORK to a folder on storage every node sees}
DATA=${DATA:-$WORK/stage.packed.jsonl.zst}   # from merge.sh
OUT=${OUT:-$WORK/ckpt/stage2}                # checkpoints and the final model (shared)
INIT_FROM=${INIT_FROM-$WORK/ckpt/stage1}     # stage 2 starts from stage 1; empty: from STUDENT
SHARED=${SHARED:-$WORK}                      # storage every node sees
TOKEN_STORE=${TOKEN_STORE:-$SHARED/dasd-tokens}  # memory-mappable token store of the packed
                                             # data: shared, so every node maps the same
                                             # files and only the first rank converts
EPOCHS=${EPOCHS:-6}
GLOBAL_BATCH=${GLOBAL_BATCH:-64}   # packed sequences per optimizer step, all ranks together
LR=${LR:-5e-5}                     # peak learning rate
MIN_LR=${MIN_LR:-1e-5}             # the cosine's end, reached at the last step
WARMUP=${WARMUP:-0.1}              # fraction of all steps in linear warmup
SAVE_EVERY=${SAVE_EVERY:-200}      # also checkpoint every N steps (about 3x the model's fp32 size each)
KEEP_CHECKPOINTS=${KEEP_CHECKPOINTS:-2}
GRADIENT_CHECKPOINTING=${GRADIENT_CHECKPOINTING:-1}  # 1: recompute activations in backward
SEED=${SEED:-42}
DASD_REPO=${DASD_REPO:-$(cd "$(dirname "$0")/../.." && pwd)}
DS_CONFIG=${DS_CONFIG:-$DASD_REPO/configs/zero3.json}
EXTRA_ARGS=${EXTRA_ARGS:-}         # more `dasd train` flags, split on spaces
VENV=${VENV:-}

if [ -n "$VENV" ]; then
  # shellcheck disable=SC1091
  . "$VENV/bin/activate"
fi

if [ -e "$OUT/config.json" ]; then
  echo "$OUT already holds the final model; nothing to do"
  exit 0
fi
[ -e "$DS_CONFIG" ] || { echo "no DeepSpeed config at $DS_CONFIG (set DS_CONFIG)" >&2; exit 2; }
[ -e "$DATA" ] || { echo "no packed data at $DATA (run merge.sh)" >&2; exit 2; }
mkdir -p "$(dirname "$OUT")" "$TOKEN_STORE"

# Start or continue (dasd train takes --resume or --init-from, not both). Every node looks
# at the same shared OUT before any rank trains, so all of them choose alike.
START=()
for STATE in "$OUT"/checkpoint-*/trainer_state.json; do
  if [ -e "$STATE" ]; then
    START=(--resume)
  fi
done
if [ ${#START[@]} -eq 0 ]; then
  if [ -n "$INIT_FROM" ]; then
    [ -e "$INIT_FROM/config.json" ] || { echo "no model at INIT_FROM=$INIT_FROM" >&2; exit 2; }
    START=(--init-from "$INIT_FROM")
  else
    START=(--resume)   # no checkpoint yet: starts at step 1 from --model
  fi
fi

FLAGS=(--liger)
if [ "$GRADIENT_CHECKPOINTING" = 1 ]; then
  FLAGS+=(--gradient-checkpointing)
fi

# Only rank 0 (on node 0) writes metrics records, one per optimizer step; the other nodes
# have nothing on stdout. Appended across restarts: for a step that appears twice (redone
# after a resume) the later record counts.
METRICS=/dev/null
if [ "$NODE_RANK" = 0 ]; then
  METRICS=$OUT.metrics.jsonl
fi

echo "node $NODE_RANK of $NNODES, $GPUS_PER_NODE GPUs, master $MASTER_ADDR:$MASTER_PORT, ${START[*]}"
# shellcheck disable=SC2086
torchrun --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$GPUS_PER_NODE" \
  --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \
  -m dasd_cli.cli train \
    --model "$STUDENT" "${START[@]}" \
    --data "$DATA" --out "$OUT" \
    --deepspeed "$DS_CONFIG" "${FLAGS[@]}" \
    --token-store "$TOKEN_STORE" \
    --epochs "$EPOCHS" --global-batch-size "$GLOBAL_BATCH" \
    --lr "$LR" --min-lr "$MIN_LR" --warmup-ratio "$WARMUP" \
    --save-every "$SAVE_EVERY" --keep-checkpoints "$KEEP_CHECKPOINTS" \
    --seed "$SEED" --compress none --stats "$OUT.stats.json" $EXTRA_ARGS \
  >> "$METRICS"

echo "node $NODE_RANK done: $OUT"
