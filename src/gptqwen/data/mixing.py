"""Domain classification and mixture sampling (Qwen2.5-style data mixing).

Classifiers label a document with a domain:
- `HashedNgramClassifier`: multinomial logistic regression on hashed word 1- and 2-grams
  (feature hashing into 2^18 buckets, TF weights, L2), trained with mini-batch lazy Adam in numpy on
  labelled JSONL (`{"text": ..., "label": ...}`); saved as one `.npz`.
- `RuleClassifier`: keyword/regex rules per domain; the domain with most hits wins.

Mixing up- or down-samples every domain to its target weight: domain d with `n_d` documents and
target weight `w_d` of a total `T` gets rate `r_d = w_d * T / n_d`; its i-th document is written
`floor((i+1) r + u) - floor(i r + u)` times (systematic sampling with a seeded offset u), so the
realised count is within one document of the target per shard.

    clf = HashedNgramClassifier.train(texts, labels); clf.save("domains.npz")
    rates = plan_mixture({"web": 900, "code": 100}, {"web": 0.5, "code": 0.5})
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptqwen.data.decontam import tokens_with_spans
from gptqwen.data.dedup import shingle_hashes
from gptqwen.errors import UserError
from gptqwen.utils import atomic_write


def hashed_features(texts: Sequence[str], dim: int, ngrams: Sequence[int] = (1, 2)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse rows as `(columns, values, row_offsets)`; values are L2-normalised counts."""
    joined = [" ".join(tokens_with_spans(t)[0]) for t in texts]
    cols_per_n, counts_per_n = [], []
    for n in ngrams:
        h, c = shingle_hashes(joined, n, normalized=True)
        cols_per_n.append(np.split((h % np.uint64(dim)).astype(np.int64), np.cumsum(c)[:-1]))
        counts_per_n.append(c)
    cols, vals, offsets = [], [], [0]
    for row in range(len(texts)):
        uniq, cnt = np.unique(np.concatenate([per[row] for per in cols_per_n]), return_counts=True)
        cols.append(uniq)
        vals.append(cnt / max(1e-9, math.sqrt(float((cnt**2).sum()))))
        offsets.append(offsets[-1] + len(uniq))
    return (np.concatenate(cols) if cols else np.zeros(0, np.int64)), (np.concatenate(vals) if vals else np.zeros(0)), np.array(offsets)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class HashedNgramClassifier:
    labels: list[str]
    weights: np.ndarray  # [dim, n_labels] float32
    bias: np.ndarray  # [n_labels]

    @property
    def dim(self) -> int:
        return self.weights.shape[0]

    def _logits(self, cols: np.ndarray, vals: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        contrib = self.weights[cols] * vals[:, None].astype(np.float32)
        sums = np.zeros((len(offsets) - 1, len(self.labels)), dtype=np.float32)
        rows = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
        np.add.at(sums, rows, contrib)
        return sums + self.bias

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return _softmax(self._logits(*hashed_features(texts, self.dim)))

    def predict(self, texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """Labels and their probabilities."""
        p = self.predict_proba(texts)
        best = p.argmax(axis=1)
        return [self.labels[i] for i in best], p[np.arange(len(best)), best]

    @classmethod
    def train(
        cls,
        texts: Sequence[str],
        labels: Sequence[str],
        dim: int = 1 << 18,
        epochs: int = 8,
        lr: float = 0.05,
        l2: float = 1e-6,
        batch_size: int = 64,
        seed: int = 0,
    ) -> HashedNgramClassifier:
        names = sorted(set(labels))
        if len(names) < 2:
            raise UserError(f"training a domain classifier needs at least 2 labels, got {names}")
        y = np.array([names.index(lab) for lab in labels])
        cols, vals, offsets = hashed_features(texts, dim)
        model = cls(names, np.zeros((dim, len(names)), np.float32), np.zeros(len(names), np.float32))
        m_w, v_w = np.zeros_like(model.weights), np.zeros_like(model.weights)
        m_b, v_b = np.zeros_like(model.bias), np.zeros_like(model.bias)
        rng, step = np.random.default_rng(seed), 0
        for _ in range(epochs):
            for batch in np.array_split(rng.permutation(len(y)), max(1, len(y) // batch_size)):
                # Rows of this batch as one sparse block.
                idx = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in batch])
                rows = np.repeat(np.arange(len(batch)), offsets[batch + 1] - offsets[batch])
                off = np.concatenate(([0], np.cumsum(offsets[batch + 1] - offsets[batch])))
                p = _softmax(model._logits(cols[idx], vals[idx], off))
                p[np.arange(len(batch)), y[batch]] -= 1.0
                p /= len(batch)
                # Lazy (sparse) Adam: only feature rows present in the batch move, as in SparseAdam.
                touched, inverse = np.unique(cols[idx], return_inverse=True)
                g_w = np.zeros((len(touched), len(names)), np.float32)
                np.add.at(g_w, inverse, (vals[idx][:, None] * p[rows]).astype(np.float32))
                g_w += l2 * model.weights[touched]
                step += 1
                for param, sel, g, m, v in (
                    (model.weights, touched, g_w, m_w, v_w),
                    (model.bias, slice(None), p.sum(axis=0), m_b, v_b),
                ):
                    m[sel] = 0.9 * m[sel] + 0.1 * g
                    v[sel] = 0.999 * v[sel] + 0.001 * g * g
                    param[sel] -= lr * (m[sel] / (1 - 0.9**step)) / (np.sqrt(v[sel] / (1 - 0.999**step)) + 1e-8)
        return model

    def save(self, path: str | Path) -> None:
        with atomic_write(path, "wb") as f:
            np.savez_compressed(f, weights=self.weights, bias=self.bias, labels=np.array(self.labels))

    @classmethod
    def load(cls, path: str | Path) -> HashedNgramClassifier:
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls([str(x) for x in z["labels"]], z["weights"], z["bias"])
        except (OSError, KeyError, ValueError) as e:
            raise UserError(f"cannot load domain classifier '{path}': {e}; train one with 'gptqwen data classify --train'") from e


@dataclass
class RuleClassifier:
    """`rules`: domain -> list of regular expressions (case-insensitive); most hits wins."""

    rules: dict[str, list[str]]
    default: str = "other"

    def __post_init__(self) -> None:
        try:
            self._compiled = {d: [re.compile(p, re.I) for p in pats] for d, pats in self.rules.items()}
        except (re.error, TypeError) as e:
            raise UserError(f"bad domain rule: {e}; rules map a domain to a list of regular expressions") from e

    def predict(self, texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
        labels, scores = [], []
        for text in texts:
            hits = {d: sum(len(p.findall(text)) for p in pats) for d, pats in self._compiled.items()}
            best = max(hits, key=hits.get) if hits else self.default
            total = sum(hits.values())
            labels.append(best if total else self.default)
            scores.append(hits[best] / total if total else 0.0)
        return labels, np.array(scores)


def plan_mixture(counts: dict[str, int], weights: dict[str, float], total: int | None = None) -> dict[str, float]:
    """Sampling rate per domain so that domain d makes up weights[d] of `total` documents
    (default: as many as there are). Domains without a weight are dropped (rate 0)."""
    if not weights or any(not isinstance(w, (int, float)) or w < 0 for w in weights.values()):
        raise UserError(f"mix weights must be non-negative numbers per domain, got {weights}")
    norm = sum(weights.values())
    if norm <= 0:
        raise UserError("mix weights sum to zero; give at least one domain a positive weight")
    missing = [d for d, w in weights.items() if w > 0 and not counts.get(d)]
    if missing:
        raise UserError(f"mix weights name domains with no documents: {missing}; domains seen: {sorted(counts)}")
    if total is not None and (not isinstance(total, int) or total < 1):
        raise UserError(f"mix total must be a positive number of documents, got {total!r}")
    total = sum(counts.values()) if total is None else total
    return {d: (weights.get(d, 0) / norm) * total / n if n else 0.0 for d, n in counts.items()}


def copies(rate: float, i: int, offset: float) -> int:
    """How many times the i-th document of a domain is written under systematic sampling."""
    return math.floor((i + 1) * rate + offset) - math.floor(i * rate + offset)
