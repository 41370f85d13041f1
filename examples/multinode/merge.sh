#!/bin/bash
# Merge the scored shards of sample-score.sbatch into one packed training file.
#
#   STUDENT=/models/student WORK=/shared/dasd/stage2 TMPDIR=/local/scratch \
#     bash examples/multinode/merge.sh
#
# Runs on one machine, CPU only (pack needs the student's tokenizer, no GPU), after every
# array task has finished:
#   dasd mix --select das --per-prompt 1   one response per prompt: the highest DAS score
#   dasd pack                              the student's chat template, best-fit packing
#                                          into CUTOFF-token sequences
# -> $WORK/stage.packed.jsonl.zst, the --data of train.sbatch / train-torchrun.sh.
#
# Memory and disk: mix and pack read every record before writing (the DAS choice, the
# shuffle and best-fit packing need all of them) but hold only small per-record metadata
# in memory: mix spills the record bodies, compressed, to a temporary file in $TMPDIR and
# pack keeps the tokens in an on-disk store there (4 bytes per token). Point TMPDIR at a
# local disk with room for the compressed scored records (about the size of
# $WORK/score/) plus the packed tokens; both files go away when the commands end.
set -euo pipefail

# ---- settings
STUDENT=${STUDENT:?set STUDENT to the student model folder (its tokenizer and chat template)}
WORK=${WORK:?set WORK to the folder sample-score.sbatch wrote}
CUTOFF=${CUTOFF:-65536}           # tokens per packed sequence; longer samples are dropped
SEED=${SEED:-42}                  # mix: tie-breaking and the seeded shuffle
SYSTEM_PROMPT=${SYSTEM_PROMPT:-}  # the same value sample-score.sbatch was given, if any
OUT=${OUT:-$WORK/stage.packed.jsonl.zst}
VENV=${VENV:-}
DASD=${DASD:-dasd}
export TMPDIR=${TMPDIR:-/tmp}     # mix's spill and pack's token file: a local disk

if [ -n "$VENV" ]; then
  # shellcheck disable=SC1091
  . "$VENV/bin/activate"
fi

SYS=()
if [ -n "$SYSTEM_PROMPT" ]; then
  SYS=(--system-prompt "$SYSTEM_PROMPT")
fi

# Every shard must be there: a missing one would silently shrink the data set.
N=$(cat "$WORK/SHARDS")
SHARD_FILES=()
MISSING=0
for ((K = 0; K < N; K++)); do
  F=$WORK/score/shard-$K.jsonl.zst
  if [ -e "$F" ]; then
    SHARD_FILES+=("$F")
  else
    echo "missing $F (array task $K has not finished)" >&2
    MISSING=1
  fi
done
if [ "$MISSING" -ne 0 ]; then
  exit 1
fi

mkdir -p "$WORK/stats"
# pipefail: a failure in either command fails the script; -o is written to a temporary
# file and renamed to OUT only on success.
"$DASD" mix --select das --per-prompt 1 --seed "$SEED" --stats "$WORK/stats/mix.json" \
    "${SHARD_FILES[@]}" \
  | "$DASD" pack --tokenizer "$STUDENT" --cutoff-len "$CUTOFF" ${SYS[@]+"${SYS[@]}"} \
    --stats "$WORK/stats/pack.json" -o "$OUT"

echo "packed: $OUT"
