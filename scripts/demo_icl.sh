#!/usr/bin/env bash
# In-context learning probe (issue 7): score a model pretrained here on Shakespeare on a generated recall
# task with 0, 1, 4 and 8 shots, print the table and draw accuracy against shots. Each item is a list of
# random Shakespeare words, the list again cut short, and four of the item's own words to choose the next
# one from ("lord night grace sweet\nlord night" -> " grace"): copying from the context (an induction head)
# solves it, a bias towards recent words does not. Chance is 0.25.
# If RUN has no checkpoint yet it is pretrained first with RECIPE (the default recipe: ~7 min on 2 cores).
# Usage: scripts/demo_icl.sh    (RUN=runs/qwen3-shakespeare RECIPE=qwen3-shakespeare TASK=recall_continue
#                                LIMIT=500 THREADS=2; TASK may be any built-in task or task .yaml)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/qwen3-shakespeare}
RECIPE=${RECIPE:-qwen3-shakespeare}
TASK=${TASK:-recall_continue}
LIMIT=${LIMIT:-500}
THREADS=${THREADS:-2}
export OMP_NUM_THREADS=$THREADS
if ! command -v gptqwen > /dev/null; then  # not activated: use the project's own environment if there is one
  [[ -x .venv/bin/gptqwen ]] || { echo "gptqwen not found: activate its environment or pip install -e ." >&2; exit 2; }
  PATH=$PWD/.venv/bin:$PATH
fi

if ! compgen -G "$RUN/ckpt_*" > /dev/null; then
  echo "== pretraining $RUN (recipe $RECIPE)"
  gptqwen pretrain --config "$RECIPE" --out "$RUN" train.threads="$THREADS" --quiet
fi
OUT=$RUN/icl_$(basename "$TASK" .yaml)
echo "== $TASK with 0, 1, 4 and 8 shots (first $LIMIT items)"
gptqwen eval --model "$RUN" --task "$TASK" --shots 0 1 4 8 --limit "$LIMIT" --plot "$OUT.png" --output "$OUT.json"
