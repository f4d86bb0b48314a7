"""Machine-made post-training data (Qwen2): rejection sampling, execution feedback, instruction evolution.

    gptqwen synth rejection --model sft/ --synthetic 500 --k 8 --sft-out sft.jsonl --prefs-out prefs.jsonl
    gptqwen synth execution --model sft/ --prompts code.jsonl --k 4 --sft-out code_sft.jsonl
    gptqwen synth evolve --synthetic 200 --out evolved.jsonl [--model sft/ --k 8]

- **Rejection sampling**: k completions per problem from the model (the inference engine, batched);
  a verifier grades each (the `math` reward against the row's `answer`, or `code` against its `tests`);
  accepted completions become SFT conversations, and accepted × rejected completions of the same
  problem become preference pairs (`{"prompt", "chosen", "rejected"}` chat rows for `dpo` / `reward train`).
- **Execution feedback** (`align.exec_tests`): k programs per task run in the sandbox against the row's own
  tests or tests a model writes (kept only when they pass a sanity filter); only passing programs are kept.
- **Instruction evolution**: each seed problem is made harder by one evolution step — a deeper
  problem (one more operation, its answer recomputed) or an added output constraint checked by a rule
  (`constraints` in the row, graded by the `constraints` reward) — and, with a model, the filter keeps
  only evolved rows the model solves sometimes but not always (0 < pass rate < 1: neither broken nor trivial).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from gptqwen.align.grpo import encode_prompt_rows, sample
from gptqwen.align.rewards import (
    CONSTRAINTS,
    RewardFn,
    check_constraints,
    code_reward,
    math_reward,
    math_verify_reward,
    steps_reward,
)
from gptqwen.errors import UserError
from gptqwen.infer import SamplingParams
from gptqwen.tokenizer.chat import parse_assistant
from gptqwen.utils import atomic_write


def assistant_message(text: str) -> dict:
    """A completion as a chat message (its think block, if any, as `reasoning_content`)."""
    parsed = parse_assistant(text)
    msg = {"role": "assistant", "content": parsed["content"] or ""}
    if parsed.get("reasoning_content"):
        msg["reasoning_content"] = parsed["reasoning_content"]
    return msg


def verifier_for(rows: list[dict], kind: str = "auto") -> tuple[str, RewardFn]:
    """The grader: `code` when the rows carry tests, `math` when they carry answers (or as asked: `math-verify`
    compares answers with the math-verify package, `steps` also checks every step of an arithmetic chain)."""
    if kind == "auto":
        kind = "code" if all("tests" in r for r in rows) else "math"
    graders = {"math": math_reward, "math-verify": math_verify_reward, "code": code_reward, "steps": steps_reward}
    if kind not in graders:
        raise UserError(f"unknown verifier '{kind}'; choose from auto, {', '.join(graders)}")
    return kind, graders[kind]


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    with atomic_write(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def public(row: dict) -> dict:
    """A prompt row without the fields this module adds (`_prompt_ids`, ...)."""
    return {k: v for k, v in row.items() if not k.startswith("_")}


def rejection_sample(model, tokenizer, rows: list[dict], k: int = 8, params: SamplingParams | None = None,
                     verifier: str = "auto", pairs_per_problem: int = 2, batch_prompts: int = 32,
                     seed: int = 0) -> dict:  # fmt: skip
    """Sample `k` completions per row, grade them; returns SFT rows, preference rows and the pass statistics."""
    if k < 2 and pairs_per_problem:
        raise UserError("preference pairs need at least two samples per problem; raise --k")
    name, grade = verifier_for(rows, verifier)
    params = params or SamplingParams(max_new_tokens=128, temperature=1.0)
    rng = random.Random(seed)
    sft, pairs, passed, solved = [], [], 0, 0
    torch.manual_seed(seed)
    for start in range(0, len(rows), batch_prompts):
        chunk = rows[start:start + batch_prompts]
        _, texts = sample(model, tokenizer, [r["_prompt_ids"] for r in chunk for _ in range(k)], params)
        scores = grade([r for r in chunk for _ in range(k)], texts)
        for i, row in enumerate(chunk):
            s, p = preference_rows(row, texts[i * k:(i + 1) * k], scores[i * k:(i + 1) * k], rng, pairs_per_problem)
            sft += s
            pairs += p
            passed += sum(x == 1.0 for x in scores[i * k:(i + 1) * k])
            solved += any(x == 1.0 for x in scores[i * k:(i + 1) * k])
    n = max(1, len(rows) * k)
    return {"sft": sft, "prefs": pairs, "stats": {"problems": len(rows), "samples": len(rows) * k, "verifier": name,
            "pass_rate": passed / n, "solved_problems": solved, "sft_rows": len(sft), "pairs": len(pairs)}}


def preference_rows(row: dict, texts: list[str], scores: list[float | None], rng: random.Random,
                    pairs_per_problem: int, extra: dict | None = None) -> tuple[list[dict], list[dict]]:  # fmt: skip
    """One problem's graded samples as SFT conversations (distinct accepted texts) and at most
    `pairs_per_problem` accepted-vs-rejected preference rows; `extra` (default: the row's answer and tests)
    travels in every row."""
    extra = {k: v for k, v in public(row).items() if k in ("answer", "tests")} if extra is None else extra
    prompt = row["prompt"] if isinstance(row["prompt"], list) else [{"role": "user", "content": row["prompt"]}]
    good = list(dict.fromkeys(t for t, s in zip(texts, scores) if s == 1.0))
    # a wrong solution must be a whole reply to be a rejected turn: one cut off inside its think block
    # (no answer) cannot be rendered as the model wrote it, so it is left out
    bad = list(dict.fromkeys(t for t, s in zip(texts, scores) if s == 0.0 and assistant_message(t)["content"].strip()))
    sft = [{"messages": [*prompt, assistant_message(t)], **extra} for t in good]
    combos = [(g, b) for g in good for b in bad]
    pairs = [{"prompt": prompt, "chosen": [assistant_message(g)], "rejected": [assistant_message(b)], **extra}
             for g, b in rng.sample(combos, min(pairs_per_problem, len(combos)))]  # fmt: skip
    return sft, pairs


# --- instruction evolution -------------------------------------------------------------------------

def deepen_arithmetic(question: str, answer: str, rng: random.Random) -> tuple[str, str] | None:
    """'What is 3 + 4?' -> 'What is 3 + 4 - 2?' with the new answer (kept in 0..9), or None."""
    if not (question.startswith("What is ") and question.endswith("?")):
        return None
    total = int(answer)
    op = rng.choice([o for o, ok in (("+", total < 9), ("-", total > 0)) if ok])
    x = rng.randint(1, 9 - total) if op == "+" else rng.randint(1, total)
    return f"{question[:-1]} {op} {x}?", str(total + x if op == "+" else total - x)


def evolve(rows: list[dict], seed: int = 0) -> list[dict]:
    """One evolution step per seed row: deepen an arithmetic question, else add an output constraint."""
    rng, out = random.Random(seed), []
    for row in rows:
        prompt = row["prompt"]
        text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        deeper = deepen_arithmetic(text, str(row.get("answer", "")), rng) if rng.random() < 0.5 and "answer" in row else None
        if deeper:
            new_text, answer = deeper
            new = {**public(row), "answer": answer, "evolution": "deepen"}
        else:
            kind, template, values = rng.choice(CONSTRAINTS)
            v = rng.choice(values)
            new_text = f"{text} {template.format(v=v)}"
            new = {**public(row), "constraints": [*row.get("constraints", []), {"kind": kind, "value": v}],
                   "evolution": f"constraint:{kind}"}  # fmt: skip
        new["prompt"] = new_text if isinstance(prompt, str) else [*prompt[:-1], {**prompt[-1], "content": new_text}]
        out.append(new)
    return out


def filter_evolved(model, tokenizer, rows: list[dict], k: int = 8, params: SamplingParams | None = None,
                   enable_thinking: bool = True) -> tuple[list[dict], dict]:  # fmt: skip
    """Keep evolved rows the model passes sometimes but not always (answer and constraints checked)."""
    ids = encode_prompt_rows(tokenizer, list(enumerate(rows, 1)), "evolved", enable_thinking)
    params = params or SamplingParams(max_new_tokens=128, temperature=1.0)
    _, texts = sample(model, tokenizer, [r["_prompt_ids"] for r in ids for _ in range(k)], params)
    kept, rates = [], []
    for i, row in enumerate(rows):
        done = texts[i * k:(i + 1) * k]
        ok = [(("answer" not in row) or math_reward([row], [t])[0] == 1.0) and check_constraints(t, row.get("constraints", []))
              for t in done]  # fmt: skip
        rate = sum(ok) / k
        rates.append(rate)
        if 0 < rate < 1:
            kept.append({**row, "pass_rate": rate})
    return kept, {"evolved": len(rows), "kept": len(kept), "mean_pass_rate": sum(rates) / max(1, len(rates))}
