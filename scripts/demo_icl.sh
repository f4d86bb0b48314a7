#!/usr/bin/env bash
# In-context learning (issue 7): a model pretrained here scores higher on a generated probe with few-shot examples
# than without. Scores RUN on the probes with 0, 1, 2 and 4 shots, prints the table and draws accuracy against shots.
#   recall_dictionary  "lord night, grace sweet, fair hence.\nmoon" -> " stars": all items share one secret
#                      dictionary of 8 word pairs and the queried pair is never in the item itself, so with zero
#                      shots a model can only guess (chance 0.25); each example shows 4 pairs of the dictionary,
#                      the queried one with probability 1/2, so a model that copies from its context
#                      ("A B ... A" -> "B") gains with every example, and one that does not stays at chance.
#   recall_continue    a list of random words, the list again cut short, the next word among 4 of the list
#                      (solved by copying from the item itself, so examples add little).
# If RUN has no checkpoint yet it is pretrained first with RECIPE: qwen3-icl, a 2-layer model trained on lines of
# random Shakespeare words each written three times, so that it learns to copy (~9 min on one core). Measured
# (N=300, acc at 0/1/2/4 shots): recall_dictionary 0.24/0.34/0.50/0.60 (+-0.03),
# recall_continue 0.77/0.85/0.80/0.79 (+-0.02).
# REFERENCE=model.gguf (or any --model spec) scores a second model beside it, e.g. SmolLM2-135M:
# recall_dictionary 0.14 +- 0.03 at 0 shots, 0.92 +- 0.03 at 4 shots (N=100).
# Usage: scripts/demo_icl.sh    (RUN=runs/qwen3-icl RECIPE=qwen3-icl TASKS="recall_dictionary recall_continue"
#                                SHOTS="0 1 2 4" LIMIT=300 THREADS=1 REFERENCE=; TASKS: built-in tasks or .yaml)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/qwen3-icl}
RECIPE=${RECIPE:-qwen3-icl}
TASKS=${TASKS:-${TASK:-recall_dictionary recall_continue}}
SHOTS=${SHOTS:-0 1 2 4}  # the recipe's 128-token context holds 4 examples of these probes
LIMIT=${LIMIT:-300}
THREADS=${THREADS:-1}
REFERENCE=${REFERENCE:-}
export OMP_NUM_THREADS=$THREADS
if ! command -v gptqwen > /dev/null; then  # not activated: use the project's own environment if there is one
  [[ -x .venv/bin/gptqwen ]] || { echo "gptqwen not found: activate its environment or pip install -e ." >&2; exit 2; }
  PATH=$PWD/.venv/bin:$PATH
fi

if ! compgen -G "$RUN/ckpt_*" > /dev/null; then
  if [[ $RECIPE == qwen3-icl && ! -f data/shakespeare-bpe4096/index.json ]]; then  # the recipe uses its tokenizer
    echo "== training the plays' BPE (data/shakespeare-bpe4096)"
    gptqwen data prepare shakespeare --train-tokenizer 4096 --out data/shakespeare-bpe4096 --workers 1
  fi
  echo "== pretraining $RUN (recipe $RECIPE)"
  gptqwen pretrain --config "$RECIPE" --out "$RUN" train.threads="$THREADS" --quiet
fi
OUT=$RUN/icl
echo "== $TASKS with $SHOTS shots (first $LIMIT items each)"
# shellcheck disable=SC2086  # TASKS and SHOTS are lists
gptqwen eval --model "$RUN" ${REFERENCE:+"$REFERENCE"} --task $TASKS --shots $SHOTS --limit "$LIMIT" \
  --plot "$OUT.png" --output "$OUT.json"
echo "== plot: $OUT.png, results: $OUT.json"
