#!/usr/bin/env bash
# Reasoning demonstration (issue 17): Qwen3's post-training at toy scale, on 1-2 CPU threads.
#   1. teacher (qwen3-tiny, 0.85M params, its own BPE) through the four stages of `gptqwen post -c qwen3-post`:
#      long-CoT cold start (SFT on the solver's verified steps in <think>), reasoning RL (GRPO on problems with a
#      pass rate in [0.01, 0.99]), thinking-mode fusion (SFT, thinking and non-thinking mixed), general RL (format and
#      instruction checks); held-out accuracy after each stage in thinking and non-thinking mode;
#   2. the budget curve of the final teacher: accuracy at thinking budgets 0 (non-thinking) .. none, with the share
#      of answers that hit the budget, drawn to $FIGURE (docs/reasoning_budget.png);
#   3. a 4x smaller student (0.23M params) two ways: through the same four stages, and by `gptqwen distill` from the
#      stage-4 teacher (off-policy teacher answers, then on-policy reverse KL); held-out accuracy and the CPU seconds
#      (user + sys, /usr/bin/time) each took, the teacher's own training not counted (as in the Qwen3 report).
# Every accuracy is greedy on EVAL_N held-out problems no stage trained on, with its standard error.
# Usage: scripts/demo_reasoning.sh   (OUT=runs/demo-reasoning THREADS=2 EVAL_N=200 SCALE=1 by default;
#        SCALE=0.25 cuts every stage's steps and data to a quarter for a quick look; PASS_MIN=0 VERIFY=false keep unsolved
#        problems in the RL stage and unchecked teacher answers, which a very short run needs)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/demo-reasoning}
THREADS=${THREADS:-2}
EVAL_N=${EVAL_N:-200}
SCALE=${SCALE:-1}
FIGURE=${FIGURE:-docs/reasoning_budget.png}
PY=${PYTHON:-python}
mkdir -p "$OUT" docs
export OMP_NUM_THREADS=$THREADS
START=$SECONDS
s() { $PY -c "import sys; print(max(1, round(float(sys.argv[1]) * $SCALE)))" "$1"; }  # a count, scaled
COMMON=(--threads "$THREADS" --quiet --overwrite --json)
# the four stages (qwen3-post's values at SCALE=1) and the distillation, steps and data scaled
cat > "$OUT/post.yaml" <<EOF
name: demo-post
trainer: post
post: {kinds: [arithmetic, logic], eval_problems: $EVAL_N, eval_max_new_tokens: 128, pass_min: ${PASS_MIN:-0.01}}
sft: {think_ratio: 0.5, flag_prob: 0.5}
grpo: {rewards: [math], num_generations: 8, prompts_per_step: 4, max_new_tokens: 96, temperature: 1.0, loss_type: dapo}
train: {batch_size: 8, warmup_steps: 0, warmup_ratio: 0.03, seed: 0, log_interval: 10, eval_interval: 0, sample_tokens: 0, ckpt_interval: 100, keep_last: 1}
stages:
  - name: cold-start
    post: {kind: cold_start, seed: 1, problems: $(s 8000)}
    train: {max_steps: $(s 800), lr: 3.0e-3, min_lr: 1.0e-4}
  - name: reasoning-rl
    post: {kind: reasoning_rl, seed: 2, problems: $(s 400), pass_samples: 4}
    train: {max_steps: $(s 40), lr: 1.0e-5, min_lr: 1.0e-5, schedule: constant, warmup_ratio: 0.0, weight_decay: 0.0, log_interval: 1}
  - name: fusion
    post: {kind: fusion, seed: 3, problems: $(s 4000)}
    train: {max_steps: $(s 300), lr: 1.0e-3, min_lr: 1.0e-4}
  - name: general-rl
    post: {kind: general_rl, seed: 4, problems: $(s 400)}
    grpo: {rewards: [math, format, constraints], reward_weights: [1.0, 0.2, 0.5]}
    train: {max_steps: $(s 30), lr: 1.0e-5, min_lr: 1.0e-5, schedule: constant, warmup_ratio: 0.0, weight_decay: 0.0, log_interval: 1}
EOF

cat > "$OUT/distill.yaml" <<EOF
name: demo-distill
trainer: distill
distill: {synthetic: $(s 800), synthetic_seed: 5, think_ratio: 0.5, verify: ${VERIFY:-true}, teacher_max_new_tokens: 160, kl: reverse,
          prompts_per_step: 8, max_new_tokens: 96}
train: {batch_size: 8, warmup_steps: 0, warmup_ratio: 0.03, seed: 0, log_interval: 10, eval_interval: 0, sample_tokens: 0, ckpt_interval: 100, keep_last: 1}
stages:
  - name: off-policy
    distill: {phase: off_policy}
    train: {max_steps: $(s 180), lr: 3.0e-3, min_lr: 1.0e-4}
  - name: on-policy
    distill: {phase: on_policy}
    train: {max_steps: $(s 60), lr: 3.0e-4, min_lr: 3.0e-4, schedule: constant, warmup_ratio: 0.0, log_interval: 1}
EOF

echo "== 0. tokenizer and the two starting points (random weights)"
[[ -d $OUT/tok ]] || gptqwen synth tokenizer --out "$OUT/tok" > /dev/null
$PY - "$OUT" <<'PYEOF'
import sys, torch
from gptqwen.config import Config
from gptqwen.model import Transformer
from gptqwen.tokenizer import Tokenizer
out = sys.argv[1]
tok = Tokenizer.load(f"{out}/tok")
sizes = {"teacher-init": {}, "student-init": {"n_embd": 64, "head_dim": 16, "intermediate_size": 192}}
for name, kw in sizes.items():
    torch.manual_seed(0)
    model = Transformer(Config.from_name("qwen3-tiny", vocab_size=tok.vocab_size, **kw))
    model.save_pretrained(f"{out}/{name}")
    tok.save(f"{out}/{name}")
    print(f"  {name}: {model.num_params() / 1e6:.2f}M params")
PYEOF

echo "== 1. teacher: the four stages (held-out accuracy after each)"
/usr/bin/time -f "%U %S" -o "$OUT/teacher.cpu" gptqwen post -c "$OUT/post.yaml" --from "$OUT/teacher-init" --out "$OUT/teacher" \
    "${COMMON[@]}" > "$OUT/teacher.json"
TEACHER=$OUT/teacher/4-general-rl

echo "== 2. the budget curve of the final teacher"
$PY - "$OUT" "$TEACHER" "$EVAL_N" "$FIGURE" <<'PYEOF'
import json, sys
from gptqwen.align.post import heldout_set
from gptqwen.eval.budget import budget_curve, plot_budget_curves, problem_items
from gptqwen.loading import load_model_and_tokenizer
from gptqwen.train.recipe import load_recipe
out, teacher, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
items = problem_items(heldout_set(load_recipe(f"{out}/post.yaml", trainer="post"), n))
model, tok = load_model_and_tokenizer(teacher)
rows = [{"model": "teacher", "task": "reasoning", **p} for p in budget_curve(model, tok, items, [0, 2, 4, 8, 16, 32, None], 128)]
json.dump([{k: v for k, v in r.items() if k != "samples"} for r in rows], open(f"{out}/budget.json", "w"), indent=2)
plot_budget_curves(rows, sys.argv[4])
PYEOF

echo "== 3a. student: the four stages (graded at the end)"
/usr/bin/time -f "%U %S" -o "$OUT/student.cpu" gptqwen post -c "$OUT/post.yaml" --from "$OUT/student-init" --out "$OUT/student" \
    "${COMMON[@]}" post.eval_problems=0 > "$OUT/student.json"

echo "== 3b. student: distilled from the stage-4 teacher"
/usr/bin/time -f "%U %S" -o "$OUT/distill.cpu" gptqwen distill -c "$OUT/distill.yaml" --teacher "$TEACHER" --from "$OUT/student-init" \
    --out "$OUT/distill" "${COMMON[@]}" > "$OUT/distill.json"

$PY - "$OUT" "$EVAL_N" $((SECONDS - START)) <<'PYEOF'
import json, sys
from gptqwen.align.post import grade, heldout_set
from gptqwen.finetune.synthetic import problems
from gptqwen.train.recipe import load_recipe
out, n, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
recipe = load_recipe(f"{out}/post.yaml", trainer="post")
items = heldout_set(recipe, n)
distilled = {p.question for p in problems(int(json.load(open(f"{out}/distill.json"))["stages"]["1-off-policy"]["teacher_data"]["teacher_rows"]), 5)}
items = [p for p in items if p.question not in distilled]  # the distillation prompts are not held out either
cpu = {k: sum(map(float, open(f"{out}/{k}.cpu").read().split()[-2:])) for k in ("teacher", "student", "distill")}

def row(name, h):
    t, nt = h["thinking"], h["non_thinking"]
    return f"| {name} | {t['accuracy']:.3f} ± {t['stderr']:.3f} | {nt['accuracy']:.3f} ± {nt['stderr']:.3f} | {t['n']} |"

print("\n| teacher after stage | thinking | non-thinking | n |\n|---|---|---|---|")
for name, s in json.load(open(f"{out}/teacher.json"))["stages"].items():
    print(row(name, s["heldout"]))
print("\n| budget | accuracy | budget hit | mean thinking tokens | n |\n|---|---|---|---|---|")
for r in json.load(open(f"{out}/budget.json")):
    b = "0 (non-thinking)" if r["mode"] == "non_thinking" else ("none" if r["budget"] is None else r["budget"])
    print(f"| {b} | {r['accuracy']:.3f} ± {r['stderr']:.3f} | {r['budget_hit']:.2f} | {r['thinking_tokens']:.1f} | {r['n']} |")
print("\n| 0.23M student | thinking | non-thinking | n | CPU s |\n|---|---|---|---|---|")
print(row("four stages", grade(f"{out}/student/4-general-rl", items, 128)) + f" {cpu['student']:.0f} |")
print(row("distilled from the teacher", grade(f"{out}/distill/2-on-policy", items, 128)) + f" {cpu['distill']:.0f} |")
print(f"\ncompute ratio distill / four stages: {cpu['distill'] / cpu['student']:.2f}; teacher's four stages {cpu['teacher']:.0f} CPU s; "
      f"whole demo {secs // 60} min {secs % 60} s on {__import__('os').environ['OMP_NUM_THREADS']} threads")
PYEOF
