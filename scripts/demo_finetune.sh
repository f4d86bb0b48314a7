#!/usr/bin/env bash
# Fine-tuning demonstrations (issue 8), each a few minutes on 1-2 CPU threads:
#   (a) GPT-1 transfer: a model pretrained on Shakespeare, fine-tuned on an entailment task made from the
#       plays' lines, against the same architecture trained from scratch on the task data alone (~15 min quiet, 28 loaded);
#       the learning rate of each is chosen on a dev split, and the figure reported is on a separate test split;
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
  # replaced by other words of the plays ("contradiction"); train, dev and test premises come from disjoint
  # pools of the lines (half, a quarter, a quarter)
  gptqwen synth typos --n 1000 --seed 1 > "$OUT/typos_train.jsonl"
  gptqwen synth typos --n 600 --seed 2 --split dev > "$OUT/typos_dev.jsonl"
  gptqwen synth typos --n 600 --seed 3 --split test > "$OUT/typos_test.jsonl"
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
      if [[ ! -f $DIR.test.json ]]; then  # the test split is scored for every run, read only for the chosen LR
        gptqwen predict --model "$DIR" --data "$OUT/typos_test.jsonl" --json > "$DIR.test.tmp"
        mv "$DIR.test.tmp" "$DIR.test.json"
      fi
      echo "  $NAME lr $LR seed $SEED: dev accuracy $($PY -c "import json,sys; print(round(json.load(open(sys.argv[1]))['eval_accuracy'], 3))" "$DIR.json")"
    done
  done
  $PY - "$OUT" <<'PYEOF'
import glob, json, re, statistics, sys
dev, test = {}, {}
for path in sorted(glob.glob(f"{sys.argv[1]}/typos_*_lr*_seed*.json")):
    m = re.search(r"typos_(\w+?)_lr([^_]+)_seed(\d+)\.json$", path)
    if m is None:
        continue  # the .test.json files
    name, lr, seed = m.groups()
    dev.setdefault((name, lr), {})[int(seed)] = json.load(open(path))["eval_accuracy"]
    test.setdefault((name, lr), {})[int(seed)] = json.load(open(path[: -len(".json")] + ".test.json"))["accuracy"]


def spread(accs):
    vals = list(accs.values())
    return statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


chosen = {}
for (name, lr), accs in sorted(dev.items()):
    mean, sd = spread(accs)
    print(f"  {name:>10} lr {lr}: dev {mean:.3f} ± {sd:.3f} over seeds {sorted(accs)}")
    if mean > chosen.get(name, (-1.0, None))[0]:
        chosen[name] = (mean, lr)
for name, (_, lr) in sorted(chosen.items()):
    mean, sd = spread(test[(name, lr)])
    print(f"  {name:>10}: lr {lr} chosen on dev; test accuracy {mean:.3f} ± {sd:.3f} (seeds {sorted(test[(name, lr)])}, "
          f"min {min(test[(name, lr)].values()):.3f}, max {max(test[(name, lr)].values()):.3f})")
if {"pretrained", "scratch"} <= chosen.keys():
    pa, sa = test[("pretrained", chosen["pretrained"][1])], test[("scratch", chosen["scratch"][1])]
    seeds = sorted(pa.keys() & sa.keys())
    wins = sum(pa[s] > sa[s] for s in seeds)
    print(f"  test: pretrained {spread(pa)[0]:.3f} vs scratch {spread(sa)[0]:.3f}: {spread(pa)[0] - spread(sa)[0]:+.3f}, "
          f"pretrained ahead on {wins}/{len(seeds)} seeds, worst pretrained {min(pa.values()):.3f} vs best scratch "
          f"{max(sa.values()):.3f}")
PYEOF
fi

if [[ $PART == b || $PART == all ]]; then
  echo "== (b) SFT with thinking and non-thinking data; held-out accuracy in both modes"
  gptqwen synth tokenizer --out "$OUT/reasoning_tok" > /dev/null
  gptqwen sft --synthetic 8000 --synthetic-kinds arithmetic --from qwen3-tiny --tokenizer "$OUT/reasoning_tok" \
      --out "$OUT/sft" --overwrite --max-steps 1500 --batch-size 4 --lr 3e-3 --min-lr 1e-4 --threads "$THREADS" --eval-reasoning 100
fi
