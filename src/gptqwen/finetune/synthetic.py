"""Built-in synthetic data that needs no download, deterministic by seed.

Two families:

* **Reasoning conversations** for chat SFT (`reasoning_conversations`): multi-step arithmetic
  ("What is 7 - 5 + 3 + 1?") and a chain of true/false statements ("A is true. B is the opposite
  of A. ... Is D true?"). A *thinking* example carries the step-by-step work in the assistant's
  `reasoning_content` (rendered inside `<think>`); a *direct* example answers at once, which the
  Qwen3 template renders with an empty think block. Both end in "The answer is X." so
  `extract_answer` can grade a generation.
* **Entailment-style pair tasks** for GPT-1 transfer. `entailment_examples`: a premise of two or
  three "who does what to whom" clauses and a hypothesis that is entailed (one of the clauses),
  contradicted (a clause with the opposite verb) or neutral (a pairing the premise does not
  mention) — symbolic, with a 20-word vocabulary, so English knowledge does not help.
  `typo_entailment_examples` (the transfer demo): the premise is a verse line from the plays and
  the hypothesis restates it with two words changed — misspelt (adjacent letters swapped: the
  same statement, "entailment") or replaced by other words of the plays (a different statement,
  "contradiction"). Telling a slip of the pen from a different word needs a lexicon, which a model
  pretrained on Shakespeare has and one trained on a thousand task examples does not.

From the shell:  gptqwen synth reasoning --n 1000 --seed 0 > train.jsonl
                 gptqwen synth entailment --n 1000 --seed 0 > train.jsonl
                 gptqwen synth typos --split dev --n 600 > dev.jsonl    # also --split test
                 gptqwen synth tokenizer --out tok/   # a small BPE for tiny models
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

ANSWER_RE = re.compile(r"answer is\s*([^\s.]+)", re.IGNORECASE)


@dataclass(frozen=True)
class Problem:
    """A question, the steps that solve it (one line each) and the final answer."""

    kind: str
    question: str
    steps: tuple[str, ...]
    answer: str


def arithmetic_problem(rng: random.Random, min_terms: int = 3, max_terms: int = 4, max_total: int = 9) -> Problem:
    """A chain of single-digit additions and subtractions whose running total stays in 0..max_total,
    so each step is one small fact while the direct answer needs them all at once."""
    n = rng.randint(min_terms, max_terms)
    total = rng.randint(1, max_total)
    expr, steps = [str(total)], []
    for _ in range(n - 1):
        ops = [op for op, ok in (("+", total < max_total), ("-", total > 0)) if ok]
        op = rng.choice(ops)
        x = rng.randint(1, max_total - total) if op == "+" else rng.randint(1, min(9, total))
        x = min(x, 9)
        new = total + x if op == "+" else total - x
        steps.append(f"{total} {op} {x} = {new}.")
        expr += [op, str(x)]
        total = new
    return Problem("arithmetic", f"What is {' '.join(expr)}?", tuple(steps), str(total))


_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"


def logic_problem(rng: random.Random, min_links: int = 2, max_links: int = 4) -> Problem:
    """A chain 'K is true. B is the opposite of K. R is the same as B. Is R true?'."""
    n = rng.randint(min_links, max_links)
    value = rng.random() < 0.5
    names = rng.sample(_LETTERS, n + 1)  # random names, so questions rarely repeat
    facts = [f"{names[0]} is {'true' if value else 'false'}."]
    steps = [f"{names[0]} is {'true' if value else 'false'}."]
    for prev, cur in zip(names, names[1:]):
        flip = rng.random() < 0.5
        value = (not value) if flip else value
        relation = "the opposite of" if flip else "the same as"
        facts.append(f"{cur} is {relation} {prev}.")
        steps.append(f"{cur} is {relation} {prev}, so {cur} is {'true' if value else 'false'}.")
    question = " ".join(facts) + f" Is {names[-1]} true?"
    return Problem("logic", question, tuple(steps), "yes" if value else "no")


GENERATORS = {"arithmetic": arithmetic_problem, "logic": logic_problem}


def problems(n: int, seed: int, kinds: tuple[str, ...] = ("arithmetic", "logic")) -> list[Problem]:
    """`n` problems cycling through `kinds`, reproducible from `seed`."""
    rng = random.Random(seed)
    return [GENERATORS[kinds[i % len(kinds)]](rng) for i in range(n)]


def to_conversation(problem: Problem, thinking: bool, flag: bool = True) -> dict:
    """One ChatML conversation; `flag` appends Qwen3's /think or /no_think soft switch to the query."""
    query = problem.question + ((" /think" if thinking else " /no_think") if flag else "")
    reply: dict = {"role": "assistant", "content": f"The answer is {problem.answer}."}
    if thinking:
        reply = {"role": "assistant", "reasoning_content": "\n".join(problem.steps), **reply}
    return {"messages": [{"role": "user", "content": query}, reply], "answer": problem.answer}


def reasoning_conversations(
    n: int,
    seed: int = 0,
    think_ratio: float = 0.5,
    flag_prob: float = 0.5,
    kinds: tuple[str, ...] = ("arithmetic", "logic"),
) -> list[dict]:
    """A thinking-mode-fusion mixture: `think_ratio` of the conversations reason in `<think>`, the rest
    answer directly; each carries the /think or /no_think flag with probability `flag_prob`."""
    rng = random.Random(seed + 1)
    return [
        to_conversation(p, thinking=rng.random() < think_ratio, flag=rng.random() < flag_prob)
        for p in problems(n, seed, kinds)
    ]


def extract_answer(text: str) -> str | None:
    """The X of the last 'The answer is X' in a generation, or None."""
    found = ANSWER_RE.findall(text or "")
    return found[-1].lower() if found else None


# --- GPT-1 demo task: entailment-style classification -----------------------------------------

_PEOPLE = ["the king", "the queen", "the duke", "the lady", "the prince", "the fool", "the knight",
           "the lord", "the nurse", "the friar"]
_VERBS = {"loves": "hates", "trusts": "doubts", "serves": "betrays", "follows": "leaves"}
_VERBS.update({v: k for k, v in list(_VERBS.items())})
ENTAILMENT_LABELS = ("entailment", "neutral", "contradiction")


def entailment_example(rng: random.Random) -> dict:
    """One premise/hypothesis pair with a label in ENTAILMENT_LABELS, classes balanced by construction."""
    k = rng.randint(2, 3)
    clauses = []
    while len(clauses) < k:
        a, b = rng.sample(_PEOPLE, 2)
        if all({a, b} != {x, y} for x, _, y in clauses):
            clauses.append((a, rng.choice(list(_VERBS)), b))
    premise = " and ".join(f"{a} {v} {b}" for a, v, b in clauses) + "."
    label = rng.choice(ENTAILMENT_LABELS)
    a, v, b = rng.choice(clauses)
    if label == "contradiction":
        v = _VERBS[v]
    elif label == "neutral":
        # prefer people the premise mentions, so the label needs the pairing, not just the names
        pairs = {frozenset((x, y)) for x, _, y in clauses}
        mentioned = sorted({x for x, _, y in clauses} | {y for x, _, y in clauses})
        fresh = [(x, y) for x in mentioned for y in mentioned if x != y and frozenset((x, y)) not in pairs]
        a, b = rng.choice(fresh) if fresh else (a, b)
        while frozenset((a, b)) in pairs:
            a, b = rng.sample(_PEOPLE, 2)
        v = rng.choice(list(_VERBS))
    return {"premise": premise, "hypothesis": f"{a} {v} {b}.", "label": label}


def entailment_examples(n: int, seed: int = 0) -> list[dict]:
    """`n` entailment-style rows `{"premise", "hypothesis", "label"}`, reproducible from `seed`."""
    rng = random.Random(seed)
    return [entailment_example(rng) for _ in range(n)]


TYPO_LABELS = ("contradiction", "entailment")
TYPO_SPLITS = ("train", "dev", "test")


def play_lines(min_words: int = 7, max_words: int = 12) -> list[list[str]]:
    """Verse lines of the plays (capitalised, `min_words`..`max_words` words, no speaker tags) as word lists."""
    from gptqwen.data.sources import shakespeare_files, shakespeare_plain

    lines = []
    for path in shakespeare_files():
        for line in shakespeare_plain(path.read_text(encoding="utf-8")).splitlines():
            words = line.split()
            if min_words <= len(words) <= max_words and line[0].isupper() and not line.endswith(":"):
                lines.append(words)
    return lines


def _is_content_word(word: str) -> bool:
    return len(word) >= 4 and word.isalpha() and word.islower()


def misspell(word: str, rng: random.Random) -> str:
    """Swap two adjacent inner letters that differ (the first and last letters stay)."""
    spots = [j for j in range(1, len(word) - 2) if word[j] != word[j + 1]]
    if not spots:
        return word
    j = rng.choice(spots)
    return word[:j] + word[j + 1] + word[j] + word[j + 2:]


def typo_entailment_examples(n: int, seed: int = 0, split: str = "train", changes: int = 2,
                             lines: list[list[str]] | None = None) -> list[dict]:
    """`n` rows `{"premise", "hypothesis", "label"}` from the plays' verse lines (labels 50/50 in expectation).

    The lines are shuffled once (fixed order) and cut into three pools: `split="train"` draws from the
    first half, `"dev"` (for choosing hyperparameters) from the third quarter and `"test"` (for the figure
    reported) from the last, so no premise occurs in two splits."""
    if split not in TYPO_SPLITS:
        raise ValueError(f"split must be one of {TYPO_SPLITS}, got {split!r}")
    lines = list(lines if lines is not None else play_lines())
    random.Random(0).shuffle(lines)
    half, three_quarters = len(lines) // 2, 3 * len(lines) // 4
    pool = {"train": lines[:half], "dev": lines[half:three_quarters], "test": lines[three_quarters:]}[split]
    vocab = sorted({w for words in lines for w in words if _is_content_word(w)})
    rng, rows = random.Random(seed), []
    while len(rows) < n:
        words = rng.choice(pool)
        spots = [i for i, w in enumerate(words) if _is_content_word(w)]
        if len(spots) < changes:
            continue
        label = rng.choice(TYPO_LABELS)
        chosen, new = rng.sample(spots, changes), list(words)
        for i in chosen:
            new[i] = misspell(words[i], rng) if label == "entailment" else rng.choice(vocab)
        if any(new[i] == words[i] for i in chosen):
            continue  # a word with no letters to swap, or the same word drawn
        rows.append({"premise": " ".join(words), "hypothesis": " ".join(new), "label": label})
    return rows


def demo_tokenizer(vocab_size: int = 512, extra_texts: tuple[str, ...] = ()):
    """A small Qwen-style byte-level BPE (with the chat control tokens) trained on the synthetic data,
    for tiny models that have no tokenizer of their own (tests, the SFT demo)."""
    from gptqwen.tokenizer.train import train_tokenizer

    texts = [p.question + "\n" + "\n".join(p.steps) + f"\nThe answer is {p.answer}." for p in problems(2000, 7)]
    texts += [f"{e['premise']} {e['hypothesis']} {e['label']}" for e in entailment_examples(500, 7)]
    return train_tokenizer([*texts, *extra_texts], vocab_size, style="qwen", show_progress=False)
