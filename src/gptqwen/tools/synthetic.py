"""Tool-use SFT traces and the held-out evaluation of a tool-using model (multi-digit arithmetic).

A problem is `a op b` with 3- and 4-digit numbers (+, -, *): easy for a calculator, hard to do in the head
for a tiny model. Two kinds of training conversation (`tool_share` of them with tools), each asking 1 to
`turns` problems in turn:

* with tools (the calculator's schema in the system turn): the assistant calls
  `calculator({"expression": "a op b"})`, reads the tool response and answers "a op b = R.";
* without tools: the assistant answers "a op b = R." at once (what the model can do unaided).

Restating the expression in the answer makes every row, the short no-tools ones too, practise copying digits from
the question: a tiny model learns that copying far sooner in short rows than behind the ~180-token tool prompt,
and the call's arguments need the same skill.

    rows = tool_traces(4000, seed=0, turns=4)    # {"messages", "tools"?, "answer"} rows for `gptqwen sft --data`
    accuracy(engine, problems(200, seed=1234, exclude=training_expressions(rows)), use_tools=True)

`accuracy` runs the real agent loop (`gptqwen.tools.agent`) with the calculator, or plain generation
without tools, greedily, and grades the last "= R" (or "answer is R").
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from gptqwen.config import Config
from gptqwen.errors import UserError
from gptqwen.infer.sampling import SamplingParams
from gptqwen.model import Transformer
from gptqwen.tokenizer import Tokenizer
from gptqwen.tokenizer.train import train_tokenizer
from gptqwen.tools import agent
from gptqwen.tools.builtin import calculator, load_toolbox
from gptqwen.tools.registry import Tool
from gptqwen.utils import atomic_dir, atomic_write

_ANSWER = re.compile(r"(?:answer is|=)\s*(-?\d+)")
QUESTIONS = ("What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Calculate {a} {op} {b}.")
CALCULATOR = Tool.from_function(calculator).schema()


@dataclass(frozen=True)
class Problem:
    question: str
    expression: str
    answer: str


def problem(rng: random.Random) -> Problem:
    op = rng.choice("+-*")
    a, b = rng.randint(100, 9999), rng.randint(100, 9999) if op != "*" else rng.randint(10, 999)
    expr = f"{a} {op} {b}"
    return Problem(rng.choice(QUESTIONS).format(a=a, op=op, b=b), expr, calculator(expr))


def problems(n: int, seed: int, exclude: set[str] = frozenset()) -> list[Problem]:
    """`n` distinct problems from `seed` whose expressions are not in `exclude`."""
    rng, out, seen = random.Random(seed), [], set(exclude)
    while len(out) < n:
        p = problem(rng)
        if p.expression not in seen:
            seen.add(p.expression)
            out.append(p)
    return out


def conversation(ps: Problem | list[Problem], use_tools: bool) -> dict:
    """One SFT row asking the problems `ps` in turn: through the calculator (its schema in the system turn) or
    answered at once. Several questions share one system turn, so the tool prompt, which is most of a one-question
    row's tokens and carries no loss, is paid once per row."""
    ps = [ps] if isinstance(ps, Problem) else ps
    # A one-line thought on every answer makes each final turn a thinking turn, so training and inference
    # (enable_thinking=True) render the last step alike: the model writes its own think block. (The template
    # drops the thoughts of earlier questions, as it does in any multi-turn chat.)
    thought = "The calculator gave the result." if use_tools else "There is no tool, so I answer directly."
    messages = []
    for p in ps:
        answer = {"role": "assistant", "reasoning_content": thought, "content": f"{p.expression} = {p.answer}."}
        messages.append({"role": "user", "content": p.question})
        if use_tools:
            call = {"type": "function", "function": {"name": "calculator", "arguments": {"expression": p.expression}}}
            messages += [{"role": "assistant", "content": "", "tool_calls": [call]}, {"role": "tool", "content": p.answer}]
        messages.append(answer)
    row = {"messages": messages, "answer": ps[-1].answer}
    return {**row, "tools": [CALCULATOR]} if use_tools else row


def tool_traces(n: int, seed: int = 0, tool_share: float = 0.5, turns: int = 1) -> list[dict]:
    """`n` SFT rows of 1 to `turns` questions each (uniformly): `tool_share` of them solve their problems through
    the calculator, the rest answer directly. Every problem is asked once."""
    rng = random.Random(seed + 1)
    sizes = [rng.randint(1, turns) for _ in range(n)]
    pool, rows = iter(problems(sum(sizes), seed)), []
    for k in sizes:
        rows.append(conversation([next(pool) for _ in range(k)], rng.random() < tool_share))
    return rows


def training_expressions(rows: list[dict]) -> set[str]:
    """The expressions asked in SFT rows (to hold them out of the evaluation)."""
    out = set()
    for row in rows:
        for m in row.get("messages", []):
            if m.get("role") == "user":
                found = re.search(r"(\d+ [-+*] \d+)", m.get("content", ""))
                if found:
                    out.add(found.group(1))
    return out


def grade(text: str, answer: str) -> bool:
    found = _ANSWER.findall(text or "")
    return bool(found) and found[-1] == answer


def accuracy(engine, items: list[Problem], use_tools: bool, max_new_tokens: int = 64,
             samples: int = 2) -> dict:  # fmt: skip
    """Greedy accuracy on `items` with the calculator offered (the agent loop) or without tools; with the
    standard error of the mean, how often the calculator was called, how often an answer in the trained form
    ("... = N") came at all, and a few transcripts."""
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    box = load_toolbox("calculator")
    correct, called, answered, shown = [], 0, 0, []
    for p in items:
        messages = [{"role": "user", "content": p.question}]
        if use_tools:
            res = agent.run(engine, messages, box, max_steps=3, params=params)
            text, called = res.content, called + bool(res.tool_calls)
            transcript = messages + res.messages
        else:
            text = engine.chat(messages, params=params).content
            transcript = messages + [{"role": "assistant", "content": text}]
        correct.append(grade(text, p.answer))
        answered += bool(_ANSWER.search(text or ""))
        if len(shown) < samples:
            shown.append({"expected": p.answer, "correct": correct[-1], "messages": transcript})
    n = len(items)
    acc = sum(correct) / n
    return {"accuracy": acc, "stderr": math.sqrt(acc * (1 - acc) / n), "n": n, "called_tool": called / n,
            "answered": answered / n, "examples": shown}


# The demo model: qwen3-tiny's size in the Qwen2 layout, whose attention has no QK-norm (with it, the sharp
# attention that copies digits into the call came too slowly: digit loss stayed at ln 10 for 300 steps).
# untied input and output embeddings: tied, a tiny model's digit tokens stay close together until it can predict them,
# so copying them took off late or not at all (1,600 + 150 steps: 0.945 on 1 thread; untied, 700 + 150: 0.995)
DEMO_MODEL = dict(n_layer=4, n_embd=128, n_head=4, n_kv_head=2, head_dim=32, intermediate_size=384, tie_embeddings=False)


def prepare(out: str | Path, n: int, seed: int = 0, vocab_size: int = 768, preset: str = "qwen2-tiny",
            context: int = 512, tool_share: float = 0.5, rope_theta: float = 10000.0, turns: int = 3) -> dict:  # fmt: skip
    """Everything the tool-use SFT starts from, in `out`: `traces.jsonl` (n rows of 1 to `turns` questions,
    `tool_share` of them through the calculator), `tokenizer/` (a byte-level BPE trained on the rendered traces, so
    the tool prompt is short) and `base/` (a freshly initialised `preset` with that vocabulary, a `context`-token
    window and `rope_theta`, as an HF checkpoint). A small RoPE base keeps nearby positions apart in every frequency band, which the copying
    of digits from the question into the call needs; Qwen3's 1e6 is made for long contexts."""
    out = Path(out)
    rows = tool_traces(n, seed, tool_share, turns)
    qwen = Tokenizer.from_preset("qwen3")  # any Qwen3-template tokenizer renders the same text
    texts = [qwen.apply_chat_template(r["messages"], tools=r.get("tools"), add_generation_prompt=False) for r in rows]
    tok = train_tokenizer(texts, vocab_size, style="qwen", show_progress=False)
    longest = max(len(tok.encode(t, allow_special=True)) for t in texts)
    if longest > context:
        raise UserError(f"the longest conversation has {longest} tokens, more than the {context}-token context; "
                        f"raise --context or --vocab-size, or lower --turns")
    torch.manual_seed(seed)
    size = DEMO_MODEL if preset == "qwen2-tiny" else {}
    model = Transformer(Config.from_name(preset, vocab_size=tok.vocab_size, max_seq_len=context, rope_theta=rope_theta,
                                         **size))  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "traces.jsonl") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with atomic_dir(out / "tokenizer") as d:
        tok.save(d)
    with atomic_dir(out / "base") as d:
        model.save_pretrained(d)
        tok.save(d)
    return {"out": str(out), "rows": n, "with_tools": sum("tools" in r for r in rows), "vocab_size": tok.vocab_size,
            "longest_tokens": longest, "params": model.num_params()}
