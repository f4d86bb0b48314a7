#!/usr/bin/env bash
# Predictable scaling (issue 18): predict the final loss of a run with >= 100x the compute of every run the law is
# fitted on, write the prediction down (timestamped), and only then read the run's real loss.
#   1. target   one run of recipe scaling-bytes (Shakespeare's plays as bytes) with a 4-layer, width-192 model
#               (1.62M parameters) on 4.70M tokens = one pass, 18,359 steps of 2 x 128 tokens, 5.1e13 FLOPs;
#               started in the background on its own core: it does not depend on the fit
#   2. sweep    a grid of 6 sizes (19k-587k parameters, 2-3 layers) x 6 token counts a factor 2 apart (102k-3.3M),
#               keeping the runs of <= 1/100 of the target's compute (the project's exact FLOP count): 20 runs
#   3. check    each law is fitted on the runs with <= 0.5 of the sweep's largest compute and scored on the rest
#               (leave-largest-out); the law with the smaller mean error makes the prediction
#   4. predict  fitted on the whole sweep (--max-fraction 0.01 checks the 1/100 rule), saved to $OUT/prediction.json
#   5. actual   wait for the target, read its loss, report the error; plot docs/scaling_prediction.png
# Every run is one protocol: 2 x 128 tokens a step, a learning rate of 2.4e-2 x (32 / width)^2 (the target's too;
# checked at widths 128 and 256: x0.5 and x2 were no better), cosine decay to a tenth of it at the end of each run,
# warmup 2% of it, and the loss on 64k held-out tokens spread over the split, at the end only. Finished runs are
# skipped and interrupted ones resumed, so rerunning is cheap. docs/scaling_protocol.md is the pre-registration.
# Measured (OUT=runs/sc11-demo, 2 cores shared with two other helpers, load 2.5-4): gpt4 chosen, predicted 1.465
# [1.107, 1.776], actual 1.375, error +6.5% (the issue asks <= 2%); 1,494 s wall in all. README "Scaling laws".
# Usage: scripts/demo_scaling.sh   (OUT=runs/scaling PLOT=docs/scaling_prediction.png EXTRA="train.batch_size=1")
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/scaling}
PLOT=${PLOT:-docs/scaling_prediction.png}
read -ra EXTRA <<< "${EXTRA:-}"  # recipe overrides for every run, target included, e.g. EXTRA=train.batch_size=1
export OMP_NUM_THREADS=1  # one core for the target, one for the sweep
if ! command -v gptqwen > /dev/null; then  # not activated: use the project's own environment if there is one
  [[ -x .venv/bin/gptqwen ]] || { echo "gptqwen not found: activate its environment or pip install -e ." >&2; exit 2; }
  PATH=$PWD/.venv/bin:$PATH
fi
PY=$(dirname "$(command -v gptqwen)")/python
TIME="/usr/bin/time -f %e_s_wall_%U_s_user_%S_s_sys"
[[ -x /usr/bin/time ]] || TIME=""
mkdir -p "$OUT"
lr() { echo "train.lr=$1,train.min_lr=$2"; }  # the rate of a width: 2.4e-2 x (32 / n_embd)^2, to a tenth
SIZES=(
  --size n_layer=2,n_embd=24,n_head=2,n_kv_head=1,head_dim=12,intermediate_size=64,"$(lr 4.2e-2 4.2e-3)"
  --size n_layer=2,n_embd=32,n_head=2,n_kv_head=1,head_dim=16,intermediate_size=96,"$(lr 2.4e-2 2.4e-3)"
  --size n_layer=2,n_embd=48,n_head=3,n_kv_head=1,head_dim=16,intermediate_size=128,"$(lr 1.1e-2 1.1e-3)"
  --size n_layer=2,n_embd=64,n_head=4,n_kv_head=2,head_dim=16,intermediate_size=176,"$(lr 6e-3 6e-4)"
  --size n_layer=3,n_embd=96,"$(lr 2.7e-3 2.7e-4)"
  --size n_layer=3,n_embd=128,n_head=4,n_kv_head=2,head_dim=32,intermediate_size=352,"$(lr 1.5e-3 1.5e-4)"
)
TOKENS=102400,204800,409600,819200,1638400,3276800  # a factor 2 apart; --max-flops keeps what fits 1/100
TARGET=(-c scaling-bytes --out "$OUT/target" --tokens 4700000 ${EXTRA[@]+"${EXTRA[@]}"}
        --size n_layer=4,n_embd=192,n_head=6,n_kv_head=2,head_dim=32,intermediate_size=512,"$(lr 6.7e-4 6.7e-5)")
field() { "$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))$2)" "$1"; }

echo "== $(date -u +%T) target plan (builds data/shakespeare-bytes on first use)"
gptqwen scaling sweep "${TARGET[@]}" --dry-run --json > "$OUT/target_plan.json"
N=$(field "$OUT/target_plan.json" '[0]["params"]')
D=$(field "$OUT/target_plan.json" '[0]["tokens"]')
C=$(field "$OUT/target_plan.json" '[0]["flops_exact"]')
MAX_FLOPS=$("$PY" -c "print($C / 100)")
echo "target: N $N, D $D, C $C FLOPs (exact count); fitting runs <= $MAX_FLOPS"

if [[ -f $OUT/target/runs.csv ]]; then
  echo "== the target run finished in an earlier call"
elif [[ -f $OUT/target.pid ]] && kill -0 "$(cat "$OUT/target.pid")" 2> /dev/null; then
  echo "== the target run of an earlier call is still going (pid $(cat "$OUT/target.pid")): not starting another"
else
  echo "== $(date -u +%T) target run in the background (log: $OUT/target.log)"
  $TIME gptqwen scaling sweep "${TARGET[@]}" > "$OUT/target.log" 2>&1 &
  echo $! > "$OUT/target.pid"
fi

echo "== $(date -u +%T) fitting sweep"
$TIME gptqwen scaling sweep -c scaling-bytes --out "$OUT/sweep" "${SIZES[@]}" --tokens "$TOKENS" ${EXTRA[@]+"${EXTRA[@]}"} \
  --max-flops "$MAX_FLOPS" --min-steps 200
RUNS=$OUT/sweep/runs.csv

echo "== $(date -u +%T) leave-largest-out check: fit the runs with <= 0.5 of the largest compute, predict the rest"
for law in chinchilla gpt4; do
  frontier=$([[ $law == gpt4 ]] && echo --frontier || true)
  rm -f "$OUT/check_$law.json"
  gptqwen scaling check "$RUNS" --law $law $frontier --flops-column flops_exact --holdout 0.5 --json \
    > "$OUT/check_$law.tmp" && mv "$OUT/check_$law.tmp" "$OUT/check_$law.json" || { echo "$law: no fit"; continue; }
  echo "$law: mean |error| $(field "$OUT/check_$law.json" '["mean_abs_error"] * 100')%," \
       "max $(field "$OUT/check_$law.json" '["max_abs_error"] * 100')% on the top budget's runs"
done
LAW=$("$PY" -c "import json,os,sys; e={l: json.load(open(f'$OUT/check_{l}.json'))['mean_abs_error'] for l in sys.argv[1:]
                 if os.path.exists(f'$OUT/check_{l}.json')}; print(min(e, key=e.get))" chinchilla gpt4)
FRONTIER=$([[ $LAW == gpt4 ]] && echo --frontier || true)
echo "chosen law: $LAW"

PREDICT=(gptqwen scaling predict "$RUNS" --law "$LAW" $FRONTIER --flops-column flops_exact --target-flops "$C"
         --max-fraction 0.01 --bootstrap 200)
[[ $LAW == chinchilla ]] && PREDICT+=(--target-params "$N" --target-tokens "$D")
if [[ -f $OUT/prediction.json ]]; then  # made by an earlier call: keep it (and its time), the refit below must match it
  echo "== keeping the prediction made at $(field "$OUT/prediction.json" '["made_at"]') in $OUT/prediction.json"
else
  echo "== $(date -u +%T) prediction, before the target's loss is read: $OUT/prediction.json"
  "${PREDICT[@]}" --save "$OUT/prediction.json"
fi

echo "== $(date -u +%T) waiting for the target"
while kill -0 "$(cat "$OUT/target.pid")" 2> /dev/null; do sleep 10; done
[[ -f $OUT/target/runs.csv ]] || { echo "the target run failed; see $OUT/target.log" >&2; exit 1; }
tail -1 "$OUT/target.log"
ACTUAL=$("$PY" -c "import csv,sys; print(next(csv.DictReader(open(sys.argv[1])))['loss'])" "$OUT/target/runs.csv")
echo "== $(date -u +%T) actual loss $ACTUAL"
"${PREDICT[@]}" --actual "$ACTUAL" --plot "$PLOT" --json > "$OUT/result.json"
"$PY" - "$OUT/prediction.json" "$OUT/result.json" << 'EOF'
import json, sys
saved, result = (json.load(open(p)) for p in sys.argv[1:])
p = result["prediction"]
assert p["loss"] == saved["prediction"]["loss"], "the refit differs from the saved prediction"
lo, hi = p["interval"]
print(f"predicted {p['loss']:.4f} [{lo:.4f}, {hi:.4f}] (made {saved['made_at']}), actual {p['actual']:.4f}: "
      f"error {100 * p['relative_error']:+.2f}% of the loss; plot {result['plot']}")
EOF
