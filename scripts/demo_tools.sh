#!/usr/bin/env bash
# Tool use (issue 20), about 11 CPU-minutes (6 min of wall time on a quiet 2-core machine, 2 threads):
#   (a) the code interpreter: a program run in the sandbox, and what it cannot do;
#   (b) a tiny Qwen2-layout model (0.94M parameters with untied embeddings, its own 580-token BPE) trained by
#       `gptqwen sft` on calculator traces (8,000 conversations of 1-3 problems, half through the calculator, every
#       answer restating "a op b = R"), graded on 200 held-out multi-digit problems with the calculator offered (the
#       function-calling loop) and without tools, then one conversation through `gptqwen generate --tools`.
#       After 700 + 150 steps: 0.980 +- 0.010 (2 threads) and 0.995 +- 0.005 (1 thread) with the calculator, 0.000
#       without (README). The digit copying takes off at steps ~350-450; 500 steps were too few.
# Usage: scripts/demo_tools.sh [a|b|all]      (OUT=runs/demo-tools THREADS=2 STEPS=700 STEPS2=150 N_EVAL=200)
set -euo pipefail
cd "$(dirname "$0")/.."
PART=${1:-all}
OUT=${OUT:-runs/demo-tools}
THREADS=${THREADS:-2}
export OMP_NUM_THREADS=$THREADS
mkdir -p "$OUT"

if [[ $PART == a || $PART == all ]]; then
  echo "== (a) the sandbox: $(gptqwen sandbox info)"
  cat > "$OUT/probe.py" <<'EOF'
import os, socket
print("cwd:", os.getcwd(), "| uid:", os.getuid(), "| visible root:", sorted(os.listdir("/")))
for attempt, action in [("read /etc/passwd", lambda: open("/etc/passwd").read()),
                        ("connect to 127.0.0.1:22", lambda: socket.create_connection(("127.0.0.1", 22), timeout=1)),
                        ("write /usr/x", lambda: open("/usr/x", "w")),
                        ("allocate 4 GB", lambda: bytearray(4 << 30))]:
    try:
        action()
        print(f"{attempt}: ALLOWED")
    except Exception as e:
        print(f"{attempt}: refused ({type(e).__name__}: {e})")
EOF
  gptqwen sandbox run "$OUT/probe.py" --timeout 5 --memory-mb 512
  echo 'while True: pass' | gptqwen sandbox run - --timeout 1 --json || true
fi

if [[ $PART == b || $PART == all ]]; then
  echo "== (b) a tiny model that uses the calculator"
  gptqwen tools prepare --out "$OUT" --n "${N_TRAIN:-8000}" --turns "${TURNS:-3}" --seed 0
  gptqwen sft -c sft-tools --data "$OUT/traces.jsonl" --from "$OUT/base" --out "$OUT/sft" --overwrite --quiet \
      --max-steps "${STEPS:-700}" --threads "$THREADS"
  # a second, short stage from the first one's weights (a fresh warmup and a higher final lr): the digit copying
  # took off only at the end of the first stage's cosine schedule
  gptqwen sft -c sft-tools --data "$OUT/traces.jsonl" --from "$OUT/sft" --out "$OUT/sft-more" --overwrite --quiet \
      --max-steps "${STEPS2:-150}" --lr 2e-3 --warmup 10 --threads "$THREADS"
  gptqwen tools eval --model "$OUT/sft-more" --n "${N_EVAL:-200}" --seed 1234 --exclude "$OUT/traces.jsonl" \
      --threads "$THREADS" --json > "$OUT/eval.json"
  python - "$OUT/eval.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
for mode in ("with_tools", "without_tools"):
    m = r[mode]
    print(f"  {mode.replace('_', ' '):>13}: accuracy {m['accuracy']:.3f} ± {m['stderr']:.3f} (n={m['n']}), "
          f"calculator called on {m['called_tool']:.0%}, an answer given on {m['answered']:.0%}")
PYEOF
  gptqwen generate --model "$OUT/sft-more" --tools calculator --prompt "What is 7385 * 462?" --temperature 0 \
      --max-new-tokens 64 --threads "$THREADS"
fi
