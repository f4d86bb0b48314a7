"""Execution feedback with model-written tests (Qwen2): a model writes the tests, a sanity filter keeps the sound
ones, and sampled solutions are kept when they pass them.

    gptqwen synth execution --model sft/ --prompts tasks.jsonl --k 8 --test-samples 4 --sft-out code_sft.jsonl
    gptqwen synth execution ... --tests given           # only rows that bring their own tests (asserts)
    gptqwen synth execution ... --test-model coder/     # another model writes the tests

    from gptqwen.align.exec_tests import execution_feedback
    out = execution_feedback(model, tok, rows, k=8)     # {"sft": [...], "prefs": [...], "stats": {...}}

Rows: `{"prompt": task text or chat messages, "entry_point"?: the function's name, "tests"?: Python asserts}`;
without `entry_point`, the first `def NAME(` of the prompt names the function. `--tests auto` (the default) uses a
row's own tests where it has them (trusted as given) and model-written tests elsewhere; `generated` writes tests
for every row; `given` needs tests in every row.

Per task with written tests:
1. the test writer samples `test_samples` replies to "Write Python assert statements ... that test `NAME`";
   every line of a reply's code that starts with `assert` is a candidate test;
2. the sanity filter keeps a candidate when it parses as one `assert` statement that calls NAME, when it *fails*
   for a stub `NAME` that returns None (a test a do-nothing function passes checks nothing), and when at least
   one of the k sampled solutions passes it (CodeT's dual agreement: a test that no candidate passes is more
   likely wrong than every candidate is); duplicates count once. A task left with fewer than `min_tests`
   tests is skipped: its solutions cannot be checked.
3. each solution runs against its task's tests in the project's sandbox (`gptqwen.tools.sandbox`: isolated
   process, time and memory limits; one run per solution, each test caught on its own); solutions that pass
   every test become SFT rows, passing × failing solutions become preference pairs, and the tests travel in
   the rows (`tests`), so `gptqwen grpo --rewards code` can train on them.
"""

from __future__ import annotations

import ast
import json
import random
import re
import secrets

import torch

from gptqwen.align.grpo import encode_prompt_rows, sample
from gptqwen.align.rewards import extract_code, prompt_text
from gptqwen.align.synth import preference_rows
from gptqwen.errors import UserError
from gptqwen.infer import SamplingParams
from gptqwen.tokenizer.chat import parse_assistant
from gptqwen.tools.sandbox import Limits, run_code

TEST_SOURCES = ("auto", "generated", "given")
TEST_PROMPT = ("Write Python assert statements, one per line, that test the function `{name}` for this task. "
               "Each assert calls `{name}` and checks its result.\n\n{task}")  # fmt: skip
_DEF_RE = re.compile(r"def\s+([A-Za-z_]\w*)\s*\(")

# runs one solution, then each test on a copy of its namespace; prints which tests passed after a marker line
_HARNESS = """import json as _json
_ns = {{"__name__": "__main__"}}
try:
    exec(compile({code!r}, "<solution>", "exec"), _ns)
    _loaded = True
except BaseException:
    _loaded = False
_passed = []
for _test in {tests!r}:
    try:
        if not _loaded:
            raise RuntimeError("the solution did not load")
        exec(compile(_test, "<test>", "exec"), dict(_ns))
        _passed.append(True)
    except BaseException:
        _passed.append(False)
print({marker!r} + _json.dumps(_passed))
"""


def run_tests(code: str, tests: list[str], timeout: float = 5.0, memory_mb: int = 512) -> list[bool]:
    """Which of `tests` pass for `code`, from one sandbox run; all False when the run fails or times out."""
    if not tests:
        return []
    marker = f"@@tests-{secrets.token_hex(6)}@@"
    result = run_code(_HARNESS.format(code=code, tests=list(tests), marker=marker), Limits(timeout_s=timeout, memory_mb=memory_mb))
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(marker):
            passed = json.loads(line[len(marker):])
            if len(passed) == len(tests):
                return [bool(p) for p in passed]
    return [False] * len(tests)


def entry_point(row: dict) -> str:
    """The function the tests call: the row's `entry_point`, else the first `def NAME(` of its prompt."""
    name = row.get("entry_point")
    if isinstance(name, str) and name.isidentifier():
        return name
    found = _DEF_RE.search(prompt_text(row))
    if found is None:
        raise UserError(f"{row.get('_where', 'a prompt row')}: model-written tests need the function's name; add "
                        "\"entry_point\": NAME to the row or a `def NAME(...)` signature to its prompt")  # fmt: skip
    return found.group(1)


def candidate_tests(text: str) -> list[str]:
    """The assert lines of a test writer's reply (its code blocks, else its whole answer part), in order."""
    answer = parse_assistant(text)["content"] or ""
    code = extract_code(answer)
    return list(dict.fromkeys(ln.strip() for ln in code.splitlines() if ln.strip().startswith("assert")))


def well_formed(test: str, name: str) -> bool:
    """One `assert` statement that calls `name`."""
    try:
        tree = ast.parse(test)
    except (SyntaxError, ValueError):
        return False
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        return False
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == name for n in ast.walk(tree))


def execution_feedback(model, tokenizer, rows: list[dict], k: int = 8, params: SamplingParams | None = None,
                       tests: str = "auto", test_model=None, test_tokenizer=None, test_samples: int = 4,
                       min_tests: int = 2, pairs_per_problem: int = 2, enable_thinking: bool = True, seed: int = 0,
                       timeout: float = 5.0) -> dict:  # fmt: skip
    """Sample `k` solutions per row, check them against given or model-written tests (module docstring);
    returns `{"sft", "prefs", "stats"}` like `synth.rejection_sample`."""
    if tests not in TEST_SOURCES:
        raise UserError(f"unknown test source '{tests}'; choose from {', '.join(TEST_SOURCES)}")
    if k < 1 or test_samples < 1 or min_tests < 1:
        raise UserError("--k, --test-samples and --min-tests must be at least 1")
    given = [isinstance(r.get("tests"), (str, list)) and bool(r.get("tests")) and tests != "generated" for r in rows]
    if tests == "given" and not all(given):
        where = next(r.get("_where", "a prompt row") for r, g in zip(rows, given) if not g)
        raise UserError(f"{where}: --tests given needs 'tests' (Python asserts) in every row")
    names = [None if g else entry_point(r) for r, g in zip(rows, given)]  # every row checked before any sampling
    params = params or SamplingParams(max_new_tokens=256, temperature=1.0)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    _, solutions = sample(model, tokenizer, [r["_prompt_ids"] for r in rows for _ in range(k)], params)
    candidates = _written_tests(test_model or model, test_tokenizer or tokenizer, rows, names, test_samples, params,
                                enable_thinking)  # fmt: skip
    stats = {"problems": len(rows), "given_tests": sum(given), "tests_written": 0, "tests_malformed": 0,
             "tests_vacuous": 0, "tests_unmatched": 0, "tests_kept": 0, "checked_problems": 0, "samples": 0,
             "passed": 0, "solved_problems": 0}  # fmt: skip
    sft, pairs = [], []
    for i, row in enumerate(rows):
        texts = solutions[i * k:(i + 1) * k]
        codes = [extract_code(parse_assistant(t)["content"] or "") for t in texts]
        limit = float(row.get("timeout", timeout))
        if given[i]:
            kept = [row["tests"]] if isinstance(row["tests"], str) else [str(t) for t in row["tests"]]
            results = [run_tests(c, kept, limit) for c in codes]
        else:
            kept, results = _filter_tests(candidates[i], names[i], codes, limit, stats)
        if len(kept) < (1 if given[i] else min_tests):
            continue
        passed = [all(r) for r in results]
        stats["checked_problems"] += 1
        stats["samples"] += k
        stats["passed"] += sum(passed)
        stats["solved_problems"] += any(passed)
        s, p = preference_rows(row, texts, [float(x) for x in passed], rng, pairs_per_problem, {"tests": kept})
        sft += s
        pairs += p
    stats.update({"pass_rate": stats.pop("passed") / max(1, stats["samples"]), "sft_rows": len(sft), "pairs": len(pairs),
                  "verifier": "code"})  # fmt: skip
    return {"sft": sft, "prefs": pairs, "stats": stats}


def _written_tests(model, tokenizer, rows: list[dict], names: list[str | None], n: int, params: SamplingParams,
                   enable_thinking: bool) -> list[list[str]]:  # fmt: skip
    """Candidate tests per row (empty for rows with given tests): `n` replies of the test writer each."""
    asks = [(i, {"prompt": [{"role": "user", "content": TEST_PROMPT.format(name=name, task=prompt_text(rows[i]))}]})
            for i, name in enumerate(names) if name is not None]  # fmt: skip
    out: list[list[str]] = [[] for _ in rows]
    if not asks:
        return out
    encoded = encode_prompt_rows(tokenizer, asks, "test prompts", enable_thinking)
    _, texts = sample(model, tokenizer, [r["_prompt_ids"] for r in encoded for _ in range(n)], params)
    for j, (i, _) in enumerate(asks):
        out[i] = list(dict.fromkeys(t for text in texts[j * n:(j + 1) * n] for t in candidate_tests(text)))
    return out


def _filter_tests(candidates: list[str], name: str, codes: list[str], timeout: float,
                  stats: dict) -> tuple[list[str], list[list[bool]]]:  # fmt: skip
    """The sanity filter (module docstring) and, for the tests it keeps, each solution's results."""
    stats["tests_written"] += len(candidates)
    formed = [t for t in candidates if well_formed(t, name)]
    stats["tests_malformed"] += len(candidates) - len(formed)
    stub = run_tests(f"def {name}(*args, **kwargs):\n    return None\n", formed, timeout)
    checking = [t for t, ok in zip(formed, stub) if not ok]
    stats["tests_vacuous"] += len(formed) - len(checking)
    results = [run_tests(c, checking, timeout) for c in codes]
    agreed = [j for j in range(len(checking)) if any(r[j] for r in results)]
    stats["tests_unmatched"] += len(checking) - len(agreed)
    stats["tests_kept"] += len(agreed)
    return [checking[j] for j in agreed], [[r[j] for j in agreed] for r in results]
