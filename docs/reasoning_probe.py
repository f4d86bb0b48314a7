"""Learning-curve probe of the reasoning demo's students: for every checkpoint of the given run folders, greedy
thinking-mode accuracy on the demo's held-out problems (per kind) and teacher-forced next-token accuracy by the role of
each token in the solver's solutions (what the student can already do):

    arithmetic "7 + 2 = 9.\\n9 - 4 = 5.": first (7: the question's first number), op (+ -, copied from the question),
        operand (2, 4: the question's next number), carry (9 at a line's start: the last line's result), result (9, 5:
        the sum), answer (the final "The answer is 5");
    logic "A is true.\\nG is the opposite of A, so G is false.": value0 (the first truth value, copied), relation
        (same/opposite, copied), name (a letter), value (the truth value a line computes), answer (yes/no).

    OMP_NUM_THREADS=1 python docs/reasoning_probe.py runs/demo-reasoning/distill/1-off-policy-arithmetic ...
    (OUT=runs/demo-reasoning: the demo folder whose post.yaml, distill.yaml and student-init define the held-out set;
    the run folders need train.ckpt_interval small enough and train.keep_last large enough to keep a curve)

The held-out problems are the demo's (`align.post.heldout_set` of post.yaml) minus every distillation prompt of
distill.yaml, as scripts/demo_reasoning.sh grades them.
"""

from __future__ import annotations

import glob
import os
import sys

import torch
from safetensors.torch import load_file

from gptqwen.align.post import heldout_set
from gptqwen.finetune.evaluate import reasoning_accuracy
from gptqwen.finetune.synthetic import Problem, problems
from gptqwen.loading import load_model_and_tokenizer
from gptqwen.train.recipe import load_recipe

ARITHMETIC_ROLES = ("first", "op", "operand", "carry", "result", "answer")
LOGIC_ROLES = ("value0", "relation", "name", "value", "answer")


def held_out(out: str) -> list[Problem]:
    items = heldout_set(load_recipe(f"{out}/post.yaml", trainer="post"), 200)
    distill = load_recipe(f"{out}/distill.yaml", trainer="distill")
    seen = set()
    for i in range(len(distill.stages)):
        d = distill.stage(i).distill
        seen |= {p.question for p in problems(d.synthetic, d.synthetic_seed, tuple(d.synthetic_kinds))}
    return [p for p in items if p.question not in seen]


def roles(tok, p: Problem) -> tuple[list[int], dict[int, str]]:
    """The solver's solution of `p` as token ids, and the role of each graded position."""
    msgs = [{"role": "user", "content": p.question},
            {"role": "assistant", "reasoning_content": "\n".join(p.steps), "content": f"The answer is {p.answer}."}]
    ids = tok.apply_chat_template(msgs, tokenize=True)
    start = len(tok.apply_chat_template(msgs[:1], add_generation_prompt=True, enable_thinking=True, tokenize=True)) + 2
    toks = [tok.decode([i]) for i in ids]
    end, out, line = toks.index("</think>"), {}, 0
    if p.kind == "arithmetic":  # each line is 8 tokens: a ' op' ' ' b ' =' ' ' c '.\n'
        for k in range(start, end, 8):
            out.update({k: "first" if k == start else "carry", k + 1: "op", k + 3: "operand", k + 6: "result"})
    else:
        for k in range(start, end):
            t = toks[k]
            if t in (" true", " false"):
                out[k] = "value0" if line == 0 else "value"
            elif t in (" opposite", " same"):
                out[k] = "relation"
            elif len(t.strip()) == 1 and t.strip().isupper():
                out[k] = "name"
            line += t == ".\n"
    out[max(i for i, t in enumerate(toks) if t.strip() == p.answer)] = "answer"
    return ids, out


def role_accuracy(model, seqs: list[tuple[list[int], dict[int, str]]]) -> dict[str, float]:
    hit: dict[str, int] = {}
    total: dict[str, int] = {}
    for ids, graded in seqs:
        with torch.no_grad():
            pred = model(torch.tensor([ids])).logits[0].argmax(-1)
        for pos, role in graded.items():
            total[role] = total.get(role, 0) + 1
            hit[role] = hit.get(role, 0) + int(pred[pos - 1] == ids[pos])
    return {r: hit[r] / total[r] for r in total}


def main(runs: list[str]) -> None:
    out = os.environ.get("OUT", "runs/demo-reasoning")
    items = held_out(out)
    model, tok = load_model_and_tokenizer(f"{out}/student-init")
    seqs = {kind: [roles(tok, p) for p in items if p.kind == kind] for kind in ("arithmetic", "logic")}
    for run in runs:
        for folder in sorted(glob.glob(f"{run}/ckpt_*")) or [run]:
            model.load_state_dict(load_file(f"{folder}/model.safetensors"), strict=False)  # the tied head is not saved
            model.eval()
            res = reasoning_accuracy(model, tok, items, True, 128)
            by = {k: sum(c for c, p in zip(res["correct"], items) if p.kind == k) / max(1, len(seqs[k])) for k in seqs}
            ra, rl = role_accuracy(model, seqs["arithmetic"]), role_accuracy(model, seqs["logic"])
            print(f"{folder}: thinking {res['accuracy']:.3f} (arithmetic {by['arithmetic']:.3f}, logic {by['logic']:.3f}, "
                  f"n={len(items)}) | " + " ".join(f"{r} {ra.get(r, 0):.2f}" for r in ARITHMETIC_ROLES) + " | "
                  + " ".join(f"{r} {rl.get(r, 0):.2f}" for r in LOGIC_ROLES), flush=True)  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
