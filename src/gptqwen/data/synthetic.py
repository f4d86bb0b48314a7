"""Generated corpora: planted near-duplicates, worked arithmetic, and Shakespeare excerpts with a repeated passage.

`planted_pairs` is used by the dedup tests and `bench/dedup.py`: each pair's similarity is the exact
Jaccard index of the two documents' word 5-gram sets, so recall and false-positive rates can be
measured per similarity band.

`synthetic_arithmetic` is the `synthetic:arithmetic[:N]` pretraining source: worked problems, step by step.

`repeated_passages` is the `synthetic:repeats[:N]` pretraining source (`gptqwen data prepare`,
`data.sources` of a recipe): excerpts of the plays in which a passage of a few lines comes back
later in the same excerpt, as refrains, echoed lines and quotations do. Natural text repeats itself
rarely, and induction heads ("A B ... A -> B", the copying behind in-context learning; Olsson et al.
2022) form earlier when training data repeats spans (Singh et al. 2024). `repeated_word_lists`
(`synthetic:wordlists[:N]`) is the blunt version: a line of random words, three times. Measured at
CPU-minute scale: ~27% repeated passages did not make a 4-layer model copy within 900 steps; word lists
alone made a 2-layer one copy between steps 2000 and 3000 (recipe `qwen3-icl`; README, Evaluation).

    from gptqwen.data.synthetic import planted_pairs, repeated_passages
    texts, pairs, sims = planted_pairs(n_pairs=200, targets=(0.9, 0.3), seed=0)
    docs = list(repeated_passages(1000, seed=0))
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from functools import lru_cache, partial

import numpy as np

from gptqwen.data.corpus import shakespeare_text, shakespeare_words
from gptqwen.data.dedup import normalize_text
from gptqwen.errors import UserError


def _shingles(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: str, b: str, n: int = 5) -> float:
    """Exact Jaccard similarity of the word n-gram sets of two texts (after normalisation)."""
    sa, sb = _shingles(normalize_text(a).split(), n), _shingles(normalize_text(b).split(), n)
    return len(sa & sb) / max(1, len(sa | sb))


def _vocabulary(rng: np.random.Generator, size: int) -> list[str]:
    letters = rng.integers(97, 123, size=(size, 8), dtype=np.uint8)
    lengths = rng.integers(3, 9, size=size)
    return sorted({row[:k].tobytes().decode() for row, k in zip(letters, lengths)})


def planted_pairs(
    n_pairs: int = 200,
    targets: tuple[float, ...] = (0.85, 0.9, 0.95, 0.2, 0.3, 0.4),
    n_singletons: int = 200,
    words: int = 200,
    n: int = 5,
    seed: int = 0,
) -> tuple[list[str], list[tuple[int, int]], list[float]]:
    """Return `(texts, pairs, similarities)`.

    For each pair a base document of random words is copied and words at random positions are
    replaced by fresh ones until the 5-gram Jaccard similarity drops to the pair's target (cycling
    through `targets`); the realised similarity is returned. Singletons are unrelated documents.
    """
    rng = np.random.default_rng(seed)
    vocab = _vocabulary(rng, 20000)
    texts: list[str] = []
    pairs: list[tuple[int, int]] = []
    sims: list[float] = []

    def doc() -> list[str]:
        return [vocab[i] for i in rng.integers(0, len(vocab), size=words)]

    for p in range(n_pairs):
        target = targets[p % len(targets)]
        base = doc()
        base_sh = _shingles(base, n)
        positions = rng.permutation(words)
        fresh = [vocab[i] for i in rng.integers(0, len(vocab), size=words)]
        mutated = partial(_mutated, base, base_sh, positions, fresh, n)

        # Similarity falls as more positions change: bisect for the count closest to the target.
        lo, hi = 0, words
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if mutated(mid)[1] >= target else (lo, mid)
        copy, sim = min((mutated(k) for k in (lo, hi)), key=lambda cs: abs(cs[1] - target))
        pairs.append((len(texts), len(texts) + 1))
        sims.append(sim)
        texts += [" ".join(base), " ".join(copy)]
    texts += [" ".join(doc()) for _ in range(n_singletons)]
    return texts, pairs, sims


def synthetic_arithmetic(n: int, seed: int = 0) -> Iterator[str]:
    """Worked multi-digit addition / subtraction / multiplication, written out step by step."""
    rng = random.Random(seed)
    for _ in range(n):
        a, b = rng.randint(10, 9999), rng.randint(10, 999)
        op = rng.choice("+-*")
        if op == "+":
            steps, carry, digits = [], 0, []
            for i, (x, y) in enumerate(zip(str(a).zfill(6)[::-1], str(b).zfill(6)[::-1])):
                s = int(x) + int(y) + carry
                if i >= max(len(str(a)), len(str(b))) and s == 0:
                    break
                steps.append(f"{x} + {y} + carry {carry} = {s}, write {s % 10}, carry {s // 10}.")
                digits.append(str(s % 10))
                carry = s // 10
            work = " ".join(steps)
        elif op == "-":
            a, b = max(a, b), min(a, b)
            work = f"Start from {a}, take away {b // 100 * 100} to get {a - b // 100 * 100}, then take away {b % 100}."
        else:
            b = rng.randint(2, 99)
            work = f"{a} * {b // 10 * 10} = {a * (b // 10 * 10)} and {a} * {b % 10} = {a * (b % 10)}; add them."
        result = {"+": a + b, "-": a - b, "*": a * b}[op]
        yield f"Question: what is {a} {op} {b}?\nReasoning: {work}\nAnswer: {result}\n"


def _mutated(base: list[str], base_sh: set, positions: np.ndarray, fresh: list[str], n: int,
             k: int) -> tuple[list[str], float]:
    """`base` with the words at the first `k` of `positions` replaced by `fresh` ones, and its n-gram Jaccard
    similarity to `base`."""
    copy = list(base)
    for pos, word in zip(positions[:k], fresh):
        copy[pos] = word
    sh = _shingles(copy, n)
    return copy, len(base_sh & sh) / len(base_sh | sh)


def repeated_passages(n: int, seed: int = 0, min_words: int = 15, max_words: int = 70,
                      context_words: int = 120, copies: int = 2, scrambled: float = 0.0) -> Iterator[str]:
    """`n` excerpts of the plays (about `context_words` words of consecutive lines), each with one
    passage of whole lines (`min_words`..`max_words` words, roughly 20-100 tokens) written `copies` times
    in all: the copies go to later line breaks of the excerpt, at least one line apart. Deterministic by seed.

    With probability `scrambled` a document's passage has its words shuffled (the same order in both
    copies): a model that has memorised the plays cannot predict its second copy from memory, only by
    copying from the first."""
    if n < 1 or copies < 2 or not 1 <= min_words <= max_words:
        raise UserError(f"repeated passages: need n >= 1, copies >= 2 and 1 <= min_words <= max_words, got n={n}, "
                        f"copies={copies}, words {min_words}..{max_words}")
    lines = _play_lines()
    rng = np.random.default_rng(seed)
    made = 0
    while made < n:
        start = int(rng.integers(0, len(lines) - 1))
        if not lines[start]:  # excerpts start at a line of text
            continue
        excerpt, words = [], 0
        while words < context_words and start + len(excerpt) < len(lines):
            excerpt.append(lines[start + len(excerpt)])
            words += len(excerpt[-1].split())
        span = _pick_span(excerpt, rng, min_words, max_words)
        if span is None:  # an excerpt of a few long speeches: no span of the right length, draw again
            continue
        a, b = span
        # the copies go before distinct lines b + 1 or later: at least one line between any two copies
        slots = range(b + 1, len(excerpt) + 1)
        if len(slots) < copies - 1:
            continue
        ats = sorted(int(x) for x in rng.choice(slots, size=copies - 1, replace=False))
        passage = excerpt[a:b]
        if rng.random() < scrambled:
            words = " ".join(passage).split()
            words = [words[i] for i in rng.permutation(len(words))]
            passage = [" ".join(words[i:i + 8]) for i in range(0, len(words), 8)]
        out, done = excerpt[:a] + passage, b
        for at in ats:
            out += excerpt[done:at] + passage
            done = at
        out += excerpt[done:]
        made += 1
        yield "\n".join(out) + "\n"


def repeated_word_lists(n: int, seed: int = 0, min_words: int = 8, max_words: int = 20, copies: int = 3) -> Iterator[str]:
    """`n` documents, each a line of `min_words`..`max_words` distinct random words of the plays written
    `copies` times, one line each: copying is the only way to predict the later lines (Olsson et al.'s
    repeated random tokens, in words of the corpus). Deterministic by seed."""
    if n < 1 or copies < 2 or not 1 <= min_words <= max_words:
        raise UserError(f"repeated word lists: need n >= 1, copies >= 2 and 1 <= min_words <= max_words, got n={n}, "
                        f"copies={copies}, words {min_words}..{max_words}")
    words = shakespeare_words(3, 10, 20, as_written=True)
    rng = np.random.default_rng(seed)
    for _ in range(n):
        line = " ".join(words[i] for i in rng.choice(len(words), int(rng.integers(min_words, max_words + 1)), replace=False))
        yield "\n".join([line] * copies) + "\n"


def _pick_span(lines: list[str], rng: np.random.Generator, lo: int, hi: int) -> tuple[int, int] | None:
    """Lines [a, b), not starting or ending blank, holding lo..hi words, ending before the last line."""
    counts = np.cumsum([0] + [len(line.split()) for line in lines])
    spans = [(a, b) for a in range(len(lines)) for b in range(a + 1, len(lines))
             if lines[a] and lines[b - 1] and lo <= counts[b] - counts[a] <= hi]
    return spans[int(rng.integers(0, len(spans)))] if spans else None


@lru_cache(maxsize=1)
def _play_lines() -> list[str]:
    """The lines of the plays as plain script text (blank lines between speeches kept), in a fixed order."""
    return shakespeare_text().split("\n")
