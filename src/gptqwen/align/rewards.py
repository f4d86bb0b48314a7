"""Reward functions for GRPO and for filtering machine-made data: verifiable rewards and their combination.

    from gptqwen.align.rewards import RewardSet, format_reward, math_reward
    math_reward([{"answer": "12"}], ["<think>\\n7 + 5 = 12.\\n</think>\\n\\nThe answer is 12."])   # [1.0]
    score = RewardSet(["math", "format"], [math_reward, format_reward], [1.0, 0.2])
    totals, per_fn = score(rows, completions)       # (recipes name them: gptqwen.align.grpo.build_rewards)

A reward function takes the prompt rows (dicts: the JSONL row of each prompt, so `answer`, `tests`, ...
travel with it) and the completion texts, and returns one float per completion, or None where it cannot
judge (an unscorable completion gets advantage 0 in GRPO, as in TRL).

- `math`: the final answer — the last `\\boxed{...}`, else the last "answer is X" / "Answer: X", read from the
  answer part only (after `</think>`; a think block that never closes has no answer, as a reader of the reply
  would see none) — equals the row's `answer` as a number (fractions and decimals compared numerically) or as
  normalised text.
- `math-verify`: the same answer, compared by HuggingFace's math-verify instead (optional: `pip install
  'gptqwen[align]'`): symbolic equality of LaTeX and expressions (`2\\sqrt{2}` = `\\sqrt{8}`, `x+1` = `1+x`,
  `\\frac14` = 0.25), where the built-in check knows numbers and text only. Answers without digits or
  LaTeX (yes/no, words) are compared as normalised text by both.
- `format`: the think/answer structure `<think>\\n...\\n</think>\\n\\n<answer>` with a non-empty answer.
- `code`: the completion's last ```python block (or the whole text) runs with the row's `tests` (asserts)
  in the project's sandbox (`gptqwen.tools.sandbox`: isolated process, time and memory limits); 1.0 when
  it runs to the end.
- `steps`: a process check for arithmetic chain questions ("What is 9 - 8 + 3?", the built-in `arithmetic`
  problems): the reasoning works the chain left to right, one correct step per line, and the reply states the
  result; None for rows that are not such questions.
- `constraints`: the row's output `constraints` (max_words, end_with, uppercase; `gptqwen synth evolve`
  adds them) all hold for the answer part.
- `rbrm:RUBRIC.yaml` (a rubric judge, `align.rbrm`) and `model:DIR` (a trained reward model).
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable
from fractions import Fraction

import torch

from gptqwen.errors import UserError
from gptqwen.tokenizer.chat import parse_assistant
from gptqwen.tools.sandbox import Limits, run_code

RewardFn = Callable[[list[dict], list[str]], list[float | None]]

_ANSWER_RE = re.compile(r"(?:answer is|answer:)\s*\$?([^\s$]+)", re.IGNORECASE)
_FORMAT_RE = re.compile(r"^<think>\n.*?\n?</think>\n\n(?P<answer>.+)$", re.DOTALL)
_CODE_RE = re.compile(r"```(?:python|py)?\n(.*?)```", re.DOTALL)


def _last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (nested braces allowed)."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def extract_final_answer(text: str) -> str | None:
    """The final answer a completion states (see the module docstring), or None."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    found = _ANSWER_RE.findall(text)
    return found[-1].rstrip(".,;") if found else None


def _number(text: str) -> Fraction | None:
    s = text.replace(",", "").replace(" ", "").strip().rstrip(".")
    m = re.fullmatch(r"(-?)\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}", s)
    if m:
        s = f"{m.group(1)}{m.group(2)}/{m.group(3)}".replace("--", "")
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


MATH_BACKENDS = ("builtin", "math-verify")


def require_math_verify():
    """The math_verify module, or a UserError that says how to install it."""
    try:
        import math_verify  # optional backend, deferred: pip install 'gptqwen[align]'
    except ImportError:
        raise UserError("the math-verify backend needs the math-verify package: pip install 'gptqwen[align]' "
                        "(or pip install math-verify), or use the built-in checker ('math')") from None
    return math_verify


def _math_verify_equal(got: str, want: str) -> bool:
    mv = require_math_verify()
    # math-verify's time limits use SIGALRM, which only the main thread may set; elsewhere it runs without them
    limit = 5 if threading.current_thread() is threading.main_thread() else None
    gold, pred = (mv.parse(f"${s.strip().strip('$')}$", parsing_timeout=limit) for s in (want, got))
    return bool(gold and pred and mv.verify(gold, pred, timeout_seconds=limit))


def answers_match(got: str, want: str, backend: str = "builtin") -> bool:
    """Numeric equality when both are numbers (1e-9 relative), else equal normalised text; with the
    `math-verify` backend, math-verify's symbolic equality for answers with digits or LaTeX."""
    if backend not in MATH_BACKENDS:
        raise UserError(f"unknown math checker backend '{backend}'; choose from {', '.join(MATH_BACKENDS)}")
    if backend == "math-verify" and any(ch.isdigit() or ch == "\\" for ch in got + want):
        return _math_verify_equal(got, want)
    a, b = _number(got), _number(want)
    if a is not None and b is not None:
        return abs(float(a - b)) <= 1e-9 * max(1.0, abs(float(b)))
    norm = lambda s: re.sub(r"\s+", " ", s.strip().strip("$").rstrip(".").lower())  # noqa: E731
    return norm(got) == norm(want)


def math_reward(rows: list[dict], completions: list[str], backend: str = "builtin") -> list[float | None]:
    """1.0 when the completion's final answer matches the row's `answer`, else 0.0 (`backend`: see
    `answers_match`)."""
    out: list[float | None] = []
    for row, text in zip(rows, completions):
        if "answer" not in row:
            raise UserError(f"the math reward needs an 'answer' in every prompt row; row {row.get('_where', row)} has none")
        got = extract_final_answer(parse_assistant(text)["content"] or "")
        out.append(float(got is not None and answers_match(got, str(row["answer"]), backend)))
    return out


def math_verify_reward(rows: list[dict], completions: list[str]) -> list[float | None]:
    """`math_reward` with math-verify comparing the answers."""
    require_math_verify()  # a missing package is a clear error before any answer is compared
    return math_reward(rows, completions, "math-verify")


def format_reward(rows: list[dict], completions: list[str]) -> list[float | None]:
    """1.0 for `<think>\\n...\\n</think>\\n\\nanswer` with a non-empty answer, else 0.0."""
    out: list[float | None] = []
    for text in completions:
        m = _FORMAT_RE.match(text.strip("\n") if text.startswith("<think>") else text)
        out.append(float(bool(m and m.group("answer").strip() and "<think>" not in m.group("answer"))))
    return out


def run_python(code: str, timeout: float = 5.0, memory_mb: int = 512) -> tuple[bool, str]:
    """Run `code` once in the project's sandbox (`gptqwen.tools.sandbox`: its own namespaces where the machine
    allows, no network, a private tmpfs, CPU / memory / process limits, a wall-clock timeout); returns
    (it ran to the end without an error, what it said last)."""
    result = run_code(code, Limits(timeout_s=timeout, memory_mb=memory_mb))
    ok = result.exit_code == 0 and not result.timed_out and result.error is None
    return ok, (result.error or "") + (result.stdout + result.stderr)[-2000:]


def extract_code(text: str) -> str:
    """The last fenced Python block of a completion, or the whole text."""
    blocks = _CODE_RE.findall(text)
    return blocks[-1] if blocks else text


def code_reward(rows: list[dict], completions: list[str]) -> list[float | None]:
    """1.0 when the completion's code passes the row's `tests` (Python asserts) in the sandbox."""
    out: list[float | None] = []
    for row, text in zip(rows, completions):
        tests = row.get("tests")
        if not isinstance(tests, (str, list)) or not tests:
            raise UserError(f"the code reward needs 'tests' (Python asserts) in every prompt row; row "
                            f"{row.get('_where', row)} has none")  # fmt: skip
        tests = "\n".join(tests) if isinstance(tests, list) else tests
        ok, _ = run_python(extract_code(text) + "\n\n" + tests, float(row.get("timeout", 5.0)))
        out.append(float(ok))
    return out


CONSTRAINTS = (
    ("max_words", "Answer in at most {v} words.", (8, 12, 16)),
    ("end_with", "End your reply with the word '{v}'.", ("done", "finished", "ok")),
    ("uppercase", "Write the whole reply in capital letters.", (True,)),
)


def _meets(answer: str, kind: str, value) -> bool:
    if kind == "max_words":
        return len(answer.split()) <= int(value)
    if kind == "end_with":
        return answer.rstrip(" .!").lower().endswith(str(value).lower())
    if kind == "uppercase":
        return answer == answer.upper() and any(ch.isalpha() for ch in answer)
    raise UserError(f"unknown constraint kind '{kind}'; known: {', '.join(c[0] for c in CONSTRAINTS)}")


def check_constraints(text: str, constraints: list[dict]) -> bool:
    """True when `text` (the answer part, without the think block) meets every constraint."""
    answer = parse_assistant(text)["content"] or ""
    return all(_meets(answer, c.get("kind"), c.get("value")) for c in constraints)


def constraints_reward(rows: list[dict], completions: list[str]) -> list[float | None]:
    """1.0 when a completion meets its row's `constraints` (rows without constraints: None)."""
    return [float(check_constraints(t, r["constraints"])) if r.get("constraints") else None for r, t in zip(rows, completions)]


_CHAIN_QUESTION_RE = re.compile(r"What is (\d+(?: [+-] \d+)+)\?")
_CHAIN_STEP_RE = re.compile(r"(-?\d+) ([+-]) (\d+) = (-?\d+)\.?")


def prompt_text(row: dict) -> str:
    """The text a prompt row asks: its prompt text, or the last user message of a chat prompt."""
    prompt = row.get("prompt")
    if isinstance(prompt, list):
        users = [m.get("content") or "" for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return users[-1] if users else ""
    return prompt if isinstance(prompt, str) else ""


def chain_is_verified(question: str, text: str) -> bool | None:
    """Whether a completion works an arithmetic chain question ("What is 9 - 8 + 3?") left to right in its
    reasoning, one correct step per line ("9 - 8 = 1." then "1 + 3 = 4."), and replies with the result;
    None when `question` is not such a question."""
    m = _CHAIN_QUESTION_RE.search(question)
    if m is None:
        return None
    terms = m.group(1).split()
    parsed = parse_assistant(text)
    lines = [ln.strip() for ln in (parsed["reasoning_content"] or "").splitlines() if ln.strip()]
    if len(lines) != (len(terms) - 1) // 2:
        return False
    total = int(terms[0])
    for line, op, x in zip(lines, terms[1::2], terms[2::2]):
        step = _CHAIN_STEP_RE.fullmatch(line)
        new = total + int(x) if op == "+" else total - int(x)
        if step is None or step.groups() != (str(total), op, x, str(new)):
            return False
        total = new
    got = extract_final_answer(parsed["content"] or "")
    return got is not None and answers_match(got, str(total))


def steps_reward(rows: list[dict], completions: list[str]) -> list[float | None]:
    """1.0 when every step of an arithmetic chain is right and the reply states the result (a process check:
    an outcome check alone also rewards a wrong chain that lands on the right number); None for other rows."""
    out: list[float | None] = []
    for row, text in zip(rows, completions):
        ok = chain_is_verified(prompt_text(row), text)
        out.append(None if ok is None else float(ok))
    return out


BUILTIN: dict[str, RewardFn] = {"math": math_reward, "math-verify": math_verify_reward, "format": format_reward,
                                 "code": code_reward, "constraints": constraints_reward, "steps": steps_reward}


class RewardSet:
    """Named reward functions and their weights; calling it checks every value and returns the weighted
    sums [N] (NaN where every function returned None) and the per-function rewards [N, F]."""

    def __init__(self, names: list[str], fns: list[RewardFn], weights: list[float]):
        self.names, self.fns, self.weights = names, fns, torch.tensor(weights, dtype=torch.float32)

    def __call__(self, rows: list[dict], completions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        per_fn = torch.full((len(completions), len(self.fns)), float("nan"))
        for j, (name, fn) in enumerate(zip(self.names, self.fns)):
            try:
                values = list(fn(rows, completions))
            except UserError:
                raise
            except Exception as e:  # a user's reward function: name it, do not show our traceback
                raise UserError(f"reward function '{name}' raised {type(e).__name__}: {e}") from None
            if len(values) != len(completions):
                raise UserError(f"reward function '{name}' returned {len(values)} values for {len(completions)} completions")
            for i, v in enumerate(values):
                if v is None:
                    continue
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise UserError(f"reward function '{name}' returned {v!r} for completion {i} of prompt row "
                                    f"{rows[i].get('_where', i)}; rewards must be finite numbers or None")  # fmt: skip
                per_fn[i, j] = float(v)
        totals = (torch.nan_to_num(per_fn) * self.weights).sum(1)
        totals[torch.isnan(per_fn).all(1)] = float("nan")
        return totals, per_fn
