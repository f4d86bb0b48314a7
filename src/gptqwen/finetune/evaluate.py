"""Grading a chat model on held-out synthetic reasoning problems, in thinking and non-thinking mode.

Each question is rendered with the chat template as a generation prompt (`enable_thinking=False`
appends the empty think block, Qwen3's hard switch), decoded greedily by the inference engine in
batches, and graded by the final "The answer is X".
"""

from __future__ import annotations

import torch

from gptqwen.finetune.synthetic import Problem, extract_answer, problems
from gptqwen.infer import Engine, SamplingParams
from gptqwen.tokenizer.chat import parse_assistant


def heldout_problems(n: int, seed: int, exclude: set[str],
                     kinds: tuple[str, ...] = ("arithmetic", "logic")) -> list[Problem]:
    """`n` problems from `seed` whose questions are not in `exclude` (the training questions)."""
    out: list[Problem] = []
    for p in problems(4 * n + 100, seed, kinds):
        if p.question not in exclude:
            out.append(p)
        if len(out) == n:
            break
    return out


def training_questions(rows: list[tuple[int, dict]]) -> set[str]:
    """User questions of a conversations file, with any /think or /no_think flag removed."""
    qs = set()
    for _, row in rows:
        for m in row.get("messages", []):
            if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
                qs.add(m["content"].replace(" /no_think", "").replace(" /think", ""))
    return qs


@torch.no_grad()
def reasoning_accuracy(model, tokenizer, items: list[Problem], enable_thinking: bool,
                       max_new_tokens: int = 128, batch_size: int = 64) -> dict:
    """Greedy accuracy on `items` in one mode; also how often any answer was given at all."""
    engine = Engine(model.eval(), tokenizer)
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    correct: list[bool] = []
    answered = 0
    samples = []
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p.question}], tokenize=True,
                                                 add_generation_prompt=True, enable_thinking=enable_thinking)
                   for p in chunk]
        for p, r in zip(chunk, engine.generate(prompts, params)):
            got = extract_answer(parse_assistant(r.text)["content"])  # the reply, not its thinking
            answered += got is not None
            correct.append(got == p.answer.lower())
            if len(samples) < 3:
                samples.append({"question": p.question, "answer": p.answer, "output": r.text})
    n = max(1, len(items))
    return {"accuracy": sum(correct) / n, "answered": answered / n, "n": len(items), "correct": correct,
            "samples": samples}


def compare_modes(model, tokenizer, items: list[Problem], max_new_tokens: int = 128) -> dict:
    """Accuracy with thinking on and off over the same held-out problems, overall and per kind."""
    result = {}
    for mode, flag in (("thinking", True), ("non_thinking", False)):
        res = reasoning_accuracy(model, tokenizer, items, flag, max_new_tokens)
        by_kind = {}
        for kind in sorted({p.kind for p in items}):
            hits = [c for c, p in zip(res["correct"], items) if p.kind == kind]
            by_kind[kind] = sum(hits) / len(hits)
        del res["correct"]
        result[mode] = {**res, "by_kind": by_kind}
    return result
