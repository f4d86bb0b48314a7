#!/usr/bin/env bash
# Fine-tuning demonstrations (issue 8), each a few minutes on 1-2 CPU threads:
#   (a) GPT-1 transfer: a model pretrained on Shakespeare, fine-tuned on an entailment task made from the
#       plays' lines, against the same architecture trained from scratch on the task data alone (~14 min);
#   (b) chat SFT with thinking-mode fusion: a tiny Qwen3 trained on synthetic reasoning conversations,
#       graded on held-out problems with thinking on and off.
# Usage: scripts/demo_finetune.sh [a|b|all]     (OUT=runs/demo-finetune THREADS=1 by default;
#        part a also reads SEEDS, LRS_PRETRAINED, LRS_SCRATCH)
set -euo pipefail
cd "$(dirname "$0")/.."
PART=${1:-all}
OUT=${OUT:-runs/demo-finetune}
THREADS=${THREADS:-1}
PY=${PYTHON:-python}
mkdir -p "$OUT"
export OMP_NUM_THREADS=$THREADS

if [[ $PART == a || $PART == all ]]; then
  echo "== (a) GPT-1 transfer: pretrained on Shakespeare vs from scratch, on a typo-vs-other-word entailment task"
  # premise: a verse line of the plays; hypothesis: the line with two words misspelt ("entailment") or
  # replaced by other words of the plays ("contradiction"); dev premises come from the other half of the lines
  gptqwen synth typos --n 1000 --seed 1 > "$OUT/typos_train.jsonl"
  gptqwen synth typos --n 600 --seed 2 --split dev > "$OUT/typos_dev.jsonl"
  # a small GPT-2-style decoder pretrained on Shakespeare by the project's trainer (~1 epoch, 1.5M tokens; a
  # third of an epoch at a 1024-token vocabulary left too little word knowledge to transfer)
  [[ -d $OUT/pretrain ]] || gptqwen pretrain --preset gpt2-tiny --out "$OUT/pretrain" --quiet \
      model.n_layer=4 model.n_embd=128 model.n_head=4 model.max_seq_len=128 \
      data.train_vocab=4096 data.dir="$OUT/shakespeare-bpe4096" train.threads="$THREADS" \
      train.seq_len=128 train.batch_size=8 train.max_steps=1500 train.lr=2e-3 train.min_lr=2e-4 \
      train.warmup_steps=50 train.sample_interval=0 train.eval_interval=1500 train.ckpt_interval=1500
  # both starting points at two learning rates and three seeds (12 runs, ~40 s each); the same tokenizer,
  # epochs (both fit the training set by then), batch and aux LM loss (λ = 0.5) for both
  for SEED in ${SEEDS:-1 2 3}; do
    for RUN in $(for LR in ${LRS_PRETRAINED:-3e-4 1e-3}; do echo "pretrained:$LR"; done) \
               $(for LR in ${LRS_SCRATCH:-3e-4 1e-3}; do echo "scratch:$LR"; done); do
      NAME=${RUN%%:*} LR=${RUN#*:}
      FLAG=(); [[ $NAME == scratch ]] && FLAG=(--from-scratch)
      DIR="$OUT/typos_${NAME}_lr${LR}_seed$SEED"
      if [[ ! -f $DIR.json ]]; then  # finished runs are kept: rerunning the demo only adds what is missing
        gptqwen finetune --task entailment --data "$OUT/typos_train.jsonl" --eval "$OUT/typos_dev.jsonl" \
            --from "$OUT/pretrain" "${FLAG[@]}" --epochs 6 --batch-size 32 --lr "$LR" --warmup 0.05 \
            --seed "$SEED" --threads "$THREADS" --out "$DIR" --overwrite --json > "$DIR.tmp"
        mv "$DIR.tmp" "$DIR.json"
      fi
      echo "  $NAME lr $LR seed $SEED: dev accuracy $($PY -c "import json,sys; print(round(json.load(open(sys.argv[1]))['eval_accuracy'], 3))" "$DIR.json")"
    done
  done
  $PY - "$OUT" <<'PYEOF'
import glob, json, re, statistics, sys
runs = {}
for path in sorted(glob.glob(f"{sys.argv[1]}/typos_*_lr*_seed*.json")):
    name, lr, seed = re.search(r"typos_(\w+?)_lr([^_]+)_seed(\d+)\.json$", path).groups()
    runs.setdefault((name, lr), {})[int(seed)] = json.load(open(path))["eval_accuracy"]
best = {}
for (name, lr), accs in sorted(runs.items()):
    vals = list(accs.values())
    mean, sd = statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0
    print(f"  {name:>10} lr {lr}: {mean:.3f} ± {sd:.3f} over seeds {sorted(accs)} "
          f"(min {min(vals):.3f}, max {max(vals):.3f})")
    if mean > best.get(name, (0, None, None))[0]:
        best[name] = (mean, lr, accs)
if {"pretrained", "scratch"} <= best.keys():
    (pm, plr, pa), (sm, slr, sa) = best["pretrained"], best["scratch"]
    seeds = sorted(pa.keys() & sa.keys())
    wins = sum(pa[s] > sa[s] for s in seeds)
    print(f"  best pretrained (lr {plr}) {pm:.3f} vs best scratch (lr {slr}) {sm:.3f}: "
          f"+{pm - sm:.3f}, pretrained ahead on {wins}/{len(seeds)} seeds, worst pretrained "
          f"{min(pa.values()):.3f} vs best scratch {max(sa.values()):.3f}")
PYEOF
  gptqwen predict --model "$(ls -d "$OUT"/typos_pretrained_lr*_seed* | grep -v '\.json$' | head -1)" \
      --data "$OUT/typos_dev.jsonl" | tail -1
fi

if [[ $PART == b || $PART == all ]]; then
  echo "== (b) SFT with thinking and non-thinking data; held-out accuracy in both modes"
  gptqwen synth tokenizer --out "$OUT/reasoning_tok" > /dev/null
  gptqwen sft --synthetic 8000 --synthetic-kinds arithmetic --from qwen3-tiny --tokenizer "$OUT/reasoning_tok" \
      --out "$OUT/sft" --overwrite --max-steps 1500 --batch-size 4 --lr 3e-3 --min-lr 1e-4 --threads "$THREADS" --eval-reasoning 100
fi
