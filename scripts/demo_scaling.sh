#!/usr/bin/env bash
# Predictable scaling (issue 18): predict the final loss of a run with >= 100x the compute of every run the law is
# fitted on, write the prediction down (timestamped), and only then read the run's real loss.
#   1. target   one run of recipe scaling-bytes (Shakespeare's plays as bytes): 4 layers, width 224 (2.13M
#               parameters) on 2.8936 tokens per parameter = 6.17M tokens (1.3 passes), 24,091 steps of 2 x 128
#               tokens, 8.7e13 FLOPs; started in the background on its own core: it does not depend on the fit
#   2. sweep    the same shape of training scaled down (GPT-4's "same methodology"): 4-layer models of widths
#               16-64 (16k-187k parameters), each on 2.8936 tokens per parameter, 3 seeds each, every run
#               <= 1/100 of the target's compute (the project's exact FLOP count): 39 runs
#   3. check    kaplan's L(C) and gpt4's L(C) = a C^b + c, each fitted on the seed-averaged compute frontier of
#               the runs with <= 0.5 of the largest compute and scored on the rest (leave-largest-out); gpt4
#               predicts only if its extra parameter c earns it (a mean error lower by more than 0.1 point)
#   4. predict  fitted on the whole sweep (--max-fraction 0.01 checks the 1/100 rule), saved to $OUT/prediction.json
#   5. actual   wait for the target, read its loss, report the error; plot docs/scaling_prediction.png
# Every run is one protocol: 2 x 128 tokens a step, a learning rate of 2.4e-2 x (32 / width)^2 (the target's too),
# cosine decay to a tenth of it at the end of each run, warmup 2% of it, and the loss on 64k held-out tokens spread
# over the split, at the end only. Finished runs are skipped and interrupted ones resumed, so rerunning is cheap.
# docs/scaling_protocol_s15.md is the pre-registration; docs/scaling_protocol.md and _s13.md the earlier designs.
# Usage: scripts/demo_scaling.sh   (OUT=runs/scaling PLOT=docs/scaling_prediction.png EXTRA="train.batch_size=1")
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/scaling}
PLOT=${PLOT:-docs/scaling_prediction.png}
read -ra EXTRA <<< "${EXTRA:-}"  # recipe overrides for every run, target included, e.g. EXTRA=model.tie_embeddings=false
export OMP_NUM_THREADS=1  # one core for the target, one for the sweep
if ! command -v gptqwen > /dev/null; then  # not activated: use the project's own environment if there is one
  [[ -x .venv/bin/gptqwen ]] || { echo "gptqwen not found: activate its environment or pip install -e ." >&2; exit 2; }
  PATH=$PWD/.venv/bin:$PATH
fi
PY=$(dirname "$(command -v gptqwen)")/python
TIME="/usr/bin/time -f %e_s_wall_%U_s_user_%S_s_sys"
[[ -x /usr/bin/time ]] || TIME=""
mkdir -p "$OUT"
RATIO=2.8936  # tokens per parameter of every run, target included (session 11's target: 4.70M tokens / 1.62M)
SEEDS=1,2,3
# width -> heads: 4 layers, one KV head, head_dim = width / heads, MLP 8/3 x width; lr 2.4e-2 x (32 / width)^2
size() {
  "$PY" -c "w, h = $1, $2; lr = 2.4e-2 * (32 / w) ** 2; m = round(8 / 3 * w / 8) * 8
print(f'n_layer=4,n_embd={w},n_head={h},n_kv_head=1,head_dim={w // h},intermediate_size={m},'
      f'train.lr={lr:.3g},train.min_lr={lr / 10:.3g}')"
}
SIZES=()
for wh in 16:1 20:1 24:2 28:2 32:2 36:2 40:2 44:2 48:3 52:2 56:2 60:2 64:4 68:2; do
  SIZES+=(--size "$(size "${wh%:*}" "${wh#*:}")")
done
TARGET=(-c scaling-bytes --out "$OUT/target" --tokens-per-param $RATIO ${EXTRA[@]+"${EXTRA[@]}"}
        --size n_layer=4,n_embd=224,n_head=7,n_kv_head=1,head_dim=32,intermediate_size=600,train.lr=4.9e-4,train.min_lr=4.9e-5)
field() { "$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))$2)" "$1"; }
pct() { "$PY" -c "import json,sys; print(f'{100 * json.load(open(sys.argv[1]))[sys.argv[2]]:.2f}')" "$1" "$2"; }

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
$TIME gptqwen scaling sweep -c scaling-bytes --out "$OUT/sweep" "${SIZES[@]}" --tokens-per-param $RATIO --seeds $SEEDS \
  ${EXTRA[@]+"${EXTRA[@]}"} --max-flops "$MAX_FLOPS"
RUNS=$OUT/sweep/runs.csv

echo "== $(date -u +%T) leave-largest-out check: fit the runs with <= 0.5 of the largest compute, predict the rest"
for law in kaplan gpt4; do
  rm -f "$OUT/check_$law.json"
  gptqwen scaling check "$RUNS" --law $law --frontier --flops-column flops_exact --holdout 0.5 --json \
    > "$OUT/check_$law.tmp" && mv "$OUT/check_$law.tmp" "$OUT/check_$law.json" || { echo "$law: no fit"; continue; }
  echo "$law: mean |error| $(pct "$OUT/check_$law.json" mean_abs_error)%," \
       "max $(pct "$OUT/check_$law.json" max_abs_error)% on the top runs"
done
LAW=$("$PY" - "$OUT" << 'EOF'
import json, os, sys
e = {law: json.load(open(f"{sys.argv[1]}/check_{law}.json"))["mean_abs_error"]
     for law in ("kaplan", "gpt4") if os.path.exists(f"{sys.argv[1]}/check_{law}.json")}
if not e:
    sys.exit("no law could be fitted on the cheaper half of the sweep")
# gpt4 has one parameter more (the irreducible loss c): it predicts only if that buys > 0.1 point of check error
print("gpt4" if "kaplan" not in e or ("gpt4" in e and e["gpt4"] < e["kaplan"] - 1e-3) else "kaplan")
EOF
)
echo "chosen law: $LAW"

PREDICT=(gptqwen scaling predict "$RUNS" --law "$LAW" --frontier --flops-column flops_exact --target-flops "$C"
         --max-fraction 0.01 --bootstrap 200)
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
