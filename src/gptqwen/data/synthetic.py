"""Generated corpora with planted near-duplicates at measured Jaccard similarities.

Used by the dedup tests and `bench/dedup.py`: each pair's similarity is the exact Jaccard
index of the two documents' word 5-gram sets, so recall and false-positive rates can be
measured per similarity band.

    from gptqwen.data.synthetic import planted_pairs
    texts, pairs, sims = planted_pairs(n_pairs=200, targets=(0.9, 0.3), seed=0)
"""

from __future__ import annotations

import numpy as np

from gptqwen.data.dedup import normalize_text


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

        def mutated(k: int) -> tuple[list[str], float]:
            copy = list(base)
            for pos, word in zip(positions[:k], fresh):
                copy[pos] = word
            sh = _shingles(copy, n)
            return copy, len(base_sh & sh) / len(base_sh | sh)

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
