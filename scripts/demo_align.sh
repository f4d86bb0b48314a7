#!/usr/bin/env bash
# Alignment demonstration (issue 16): the Qwen2.5 recipe at toy scale, on 1-2 CPU threads.
#   1. SFT: a tiny Qwen3 (0.85M params, its own BPE) learns to solve multi-step arithmetic ("What is 7 - 5 + 3 + 1?")
#      step by step in its think block — a short run, so it is decent, not perfect;
#   2. rejection sampling: k solutions per problem from the SFT model (T = 0.7), graded by the step verifier (every
#      step of the chain right, and the reply's answer), give preference pairs (a verified solution vs a failed one);
#   3. DPO + NLL on those pairs (β 0.01: on these chains the NLL term carries the gain, see the README);
#   4. GRPO from the DPO model with the step verifier as reward (G completions per prompt, online), on problems
#      the SFT data did not contain (on SFT'd problems the model is already right: little to learn, and what it
#      learns there does not carry over), sampled at T = 0.3 (near the greedy decoding the claim measures: at T = 1
#      GRPO raised its samples' reward and lowered greedy accuracy), with Qwen2.5's query selection and a KL term
#      (β 0.1) to the DPO model; 16 prompts × G 16 per step (at 8 × 8 the gain was within the noise of one run).
# Held-out accuracy (greedy, thinking mode, distinct problems none of the stages trained on) after each stage,
# with its standard error, and each stage's gain over the one before with its paired standard error (the same
# problems graded twice); the GRPO reward curve goes to docs/align_grpo_reward.png.
# Part rbrm (GPT-4's rule-based reward model): a policy SFT'd to refuse half of its (harmless) questions is
# trained by GRPO with the built-in refusal-style rubric as its only reward, judged by a small model trained
# here to read that rubric; the refusal rate on held-out questions is measured before and after.
# Usage: scripts/demo_align.sh [main|rbrm|all]   (OUT=runs/demo-align THREADS=2 EVAL_N=800 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
PART=${1:-main}
OUT=${OUT:-runs/demo-align}
THREADS=${THREADS:-2}
EVAL_N=${EVAL_N:-800}
SFT_STEPS=${SFT_STEPS:-800}
GRPO_STEPS=${GRPO_STEPS:-60}
GRPO_PROMPTS=${GRPO_PROMPTS:-600}
PY=${PYTHON:-python}
mkdir -p "$OUT" docs
export OMP_NUM_THREADS=$THREADS
START=$SECONDS
COMMON=(--threads "$THREADS" --overwrite --quiet)

grade() {  # grade MODEL_DIR NAME: greedy held-out accuracy in thinking mode -> $OUT/NAME.grade.json
  $PY - "$1" "$2" "$OUT" "$EVAL_N" <<'PYEOF'
import json, sys
from gptqwen.finetune.evaluate import heldout_problems, reasoning_accuracy
from gptqwen.loading import load_model_and_tokenizer
model_dir, name, out, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
seen = set(json.load(open(f"{out}/train_questions.json")))
pool = heldout_problems(4 * n, 4242, seen, ("arithmetic",))  # a wide pool: the problem space is small
items = list({p.question: p for p in pool}.values())[:n]  # each problem once
assert len(items) == n, f"only {len(items)} distinct held-out problems"
model, tok = load_model_and_tokenizer(model_dir)
res = reasoning_accuracy(model.float(), tok, items, enable_thinking=True, max_new_tokens=64)
p = res["accuracy"]
res = {"accuracy": p, "stderr": (p * (1 - p) / n) ** 0.5, "n": n, "answered": res["answered"], "correct": res["correct"]}
json.dump(res, open(f"{out}/{name}.grade.json", "w"))
print(f"  {name:>5}: held-out accuracy {res['accuracy']:.3f} ± {res['stderr']:.3f} (n={res['n']}, answered {res['answered']:.2f})")
PYEOF
}

if [[ $PART == main || $PART == all ]]; then
echo "== 1. SFT on step-by-step solutions ($SFT_STEPS steps; a finished $OUT/sft is kept)"
[[ -d $OUT/tok ]] || gptqwen synth tokenizer --out "$OUT/tok" > /dev/null
[[ -f $OUT/sft/sft.json ]] || gptqwen sft --synthetic 8000 --synthetic-kinds arithmetic --think-ratio 1 --flag-prob 0 --from qwen3-tiny \
    --tokenizer "$OUT/tok" --out "$OUT/sft" --max-steps "$SFT_STEPS" --batch-size 4 --lr 3e-3 --min-lr 1e-4 "${COMMON[@]}" \
    train.ckpt_interval=100 train.keep_last=20  # the checkpoints show the learning curve
# GRPO's prompts: distinct problems the SFT data did not contain; every question any stage trains on (SFT data,
# rejection-sampling problems, GRPO prompts) stays out of the held-out set
$PY - "$OUT" "$GRPO_PROMPTS" <<'PYEOF'
import json, sys
from gptqwen.finetune.synthetic import problems, reasoning_conversations
out, n = sys.argv[1], int(sys.argv[2])
rows = reasoning_conversations(8000, 0, 1.0, 0.0, ("arithmetic",))
seen = {r["messages"][0]["content"] for r in rows}
fresh = {}
for p in problems(20000, 12, ("arithmetic",)):
    if p.question not in seen and len(fresh) < n:
        fresh[p.question] = {"prompt": [{"role": "user", "content": p.question}], "answer": p.answer}
assert len(fresh) == n, f"only {len(fresh)} problems outside the SFT data"
with open(f"{out}/grpo_prompts.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in fresh.values())
seen |= set(fresh) | {p.question for p in problems(400, 11, ("arithmetic",))}
json.dump(sorted(seen), open(f"{out}/train_questions.json", "w"))
PYEOF
grade "$OUT/sft" sft

echo "== 2. rejection sampling: 8 solutions per problem at T = 0.7, graded by the step verifier"
gptqwen synth rejection --model "$OUT/sft" --n 400 --seed 11 --k 8 --max-new-tokens 64 --temperature ${REJ_T:-0.7} \
    --verifier steps --pairs-per-problem 2 --prefs-out "$OUT/prefs.jsonl" --sft-out "$OUT/accepted.jsonl" --json > "$OUT/rejection.json"
$PY -c "import json,sys; s=json.load(open(sys.argv[1])); print(f\"  pass rate {s['pass_rate']:.3f}, {s['solved_problems']}/{s['problems']} problems solved at least once, {s['pairs']} preference pairs\")" "$OUT/rejection.json"

echo "== 3. DPO on the pairs"
gptqwen dpo --from "$OUT/sft" --data "$OUT/prefs.jsonl" --out "$OUT/dpo" --epochs 1 --batch-size 16 --lr ${DPO_LR:-2e-5} \
    --min-lr 1e-6 --beta ${DPO_BETA:-0.01} --nll-weight ${DPO_NLL:-1.0} "${COMMON[@]}"
grade "$OUT/dpo" dpo

echo "== 4. GRPO from the DPO model, verifier reward ($GRPO_STEPS steps on $GRPO_PROMPTS problems outside the SFT data)"
gptqwen grpo --from "$OUT/dpo" --prompts "$OUT/grpo_prompts.jsonl" --rewards ${GRPO_REWARD:-steps} --out "$OUT/grpo" \
    --max-steps "$GRPO_STEPS" --num-generations 16 --prompts-per-step 16 --max-new-tokens 64 --lr ${GRPO_LR:-2e-5} \
    --temperature ${GRPO_T:-0.3} --beta ${GRPO_BETA:-0.1} --query-selection "${COMMON[@]}"
cp "$OUT/grpo/reward.png" docs/align_grpo_reward.png
grade "$OUT/grpo" grpo

$PY - "$OUT" $((SECONDS - START)) <<'PYEOF'
import json, sys
out, secs = sys.argv[1], int(sys.argv[2])
rows = [(n, json.load(open(f"{out}/{n}.grade.json"))) for n in ("sft", "dpo", "grpo")]
print("\n| stage | held-out accuracy | stderr | gain over the stage before | paired stderr | n |\n|---|---|---|---|---|---|")
gains = []
for i, (name, r) in enumerate(rows):
    gain = ""
    if i:  # the same problems graded twice: the stderr of the mean per-problem difference
        d = [int(b) - int(a) for a, b in zip(rows[i - 1][1]["correct"], r["correct"])]
        m = sum(d) / len(d)
        se = (sum((x - m) ** 2 for x in d) / (len(d) - 1) / len(d)) ** 0.5
        gains.append((m, se))
        gain = f"{m:+.3f} | {se:.3f}"
    print(f"| {name} | {r['accuracy']:.3f} | {r['stderr']:.3f} | {gain or '— | —'} | {r['n']} |")
print(f"\nrising at each stage: {all(m > 0 for m, _ in gains)} (gains {', '.join(f'{m:+.3f} ± {se:.3f}' for m, se in gains)}; "
      f"{sum(m > 2 * se for m, se in gains)} of {len(gains)} above two paired stderr); whole demo {secs // 60} min {secs % 60} s")
PYEOF
fi

if [[ $PART == rbrm || $PART == all ]]; then
  echo "== rbrm: a rubric and a judge steer a policy away from refusing harmless questions"
  [[ -d $OUT/tok ]] || gptqwen synth tokenizer --out "$OUT/tok" > /dev/null
  # policy data: arithmetic questions answered ("The answer is 7.") or refused ("I'm sorry, ...") half and half;
  # judge data: the rubric's template filled with such a question and reply -> D (an answer) or B (a refusal of
  # a harmless request); the judge never sees the policy's own outputs
  $PY - "$OUT" <<'PYEOF'
import json, random, sys
from gptqwen.align.rbrm import Rubric
from gptqwen.finetune.synthetic import problems
out = sys.argv[1]
rubric = Rubric.from_dict(__import__("yaml").safe_load(open("src/gptqwen/align/rubrics/refusal-style.yaml")))
refusals = ["I'm sorry, but I can't help with that.", "Sorry, I cannot answer that.", "I am sorry, I won't do this."]
rng = random.Random(0)
with open(f"{out}/policy.jsonl", "w") as f:
    for p in problems(6000, 21, ("arithmetic",)):
        reply = rng.choice(refusals) if rng.random() < 0.5 else f"The answer is {p.answer}."
        f.write(json.dumps({"messages": [{"role": "user", "content": p.question}, {"role": "assistant", "content": reply}]}) + "\n")
# the judge reads the whole rubric: a tiny Qwen3 like the policy, with a 512-token context
from gptqwen.config import Config
from gptqwen.model import Transformer
from gptqwen.tokenizer import Tokenizer
tok = Tokenizer.load(f"{out}/tok")
Transformer(Config.from_name("qwen3-tiny", max_seq_len=512, vocab_size=tok.vocab_size)).save_pretrained(f"{out}/judge-base")
tok.save(f"{out}/judge-base")
with open(f"{out}/judge.jsonl", "w") as f:
    for p in problems(4000, 22, ("arithmetic",)):
        refuse = rng.random() < 0.5
        reply = rng.choice(refusals) if refuse else f"The answer is {rng.choice([p.answer, str(rng.randint(0, 9))])}."
        text = rubric.template.format(prompt=p.question, response=reply)
        f.write(json.dumps({"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "B" if refuse else "D"}]}) + "\n")
PYEOF
  gptqwen sft --data "$OUT/policy.jsonl" --from qwen3-tiny --tokenizer "$OUT/tok" --out "$OUT/policy" --flag-prob 0 \
      --max-steps 400 --batch-size 4 --lr 3e-3 --min-lr 1e-4 "${COMMON[@]}"
  gptqwen sft --data "$OUT/judge.jsonl" --from "$OUT/judge-base" --out "$OUT/judge" --flag-prob 0 \
      --max-steps 300 --batch-size 4 --lr 3e-3 --min-lr 1e-4 "${COMMON[@]}"
  refusals() {  # refusals MODEL NAME: share of sampled replies (T = 1, one per question) that refuse
    $PY - "$1" "$2" "$OUT" <<'PYEOF'
import json, sys
from gptqwen.finetune.evaluate import heldout_problems
from gptqwen.finetune.synthetic import problems
from gptqwen.infer import Engine, SamplingParams
from gptqwen.loading import load_model_and_tokenizer
model_dir, name, out = sys.argv[1:4]
model, tok = load_model_and_tokenizer(model_dir)
seen = {json.loads(line)["messages"][0]["content"] for line in open(f"{out}/policy.jsonl")}
seen |= {p.question for p in problems(2000, 24, ("arithmetic",))}  # the GRPO prompts
qs = [p.question for p in heldout_problems(300, 23, seen, ("arithmetic",))]
prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=True, enable_thinking=False) for q in qs]
params = [SamplingParams(temperature=1.0, max_new_tokens=16, seed=i) for i in range(len(qs))]  # the same draws for both
res = Engine(model.float(), tok).generate(prompts, params)
rate = sum("sorry" in r.text.lower() for r in res) / len(res)
print(f"  {name:>6}: refusal rate on {len(res)} held-out questions {rate:.3f} ± {(rate * (1 - rate) / len(res)) ** 0.5:.3f}")
json.dump({"refusal_rate": rate, "n": len(res)}, open(f"{out}/{name}.refusals.json", "w"))
PYEOF
  }
  refusals "$OUT/policy" before
  gptqwen grpo --from "$OUT/policy" --synthetic 2000 grpo.synthetic_seed=24 --rewards "rbrm:refusal-style@$OUT/judge" \
      --no-thinking --out "$OUT/grpo-rbrm" --max-steps 60 --num-generations 8 --prompts-per-step 8 --max-new-tokens 16 \
      --lr 1e-4 "${COMMON[@]}"
  cp "$OUT/grpo-rbrm/reward.png" docs/align_rbrm_reward.png
  refusals "$OUT/grpo-rbrm" after
fi
