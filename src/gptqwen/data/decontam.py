"""Decontamination of training text against evaluation sets, and the reverse "dirty eval" report.

Two rules (the GPT-3 paper's appendix C, and the Qwen2 / Qwen2.5 technical reports):
- GPT-3 13-gram: words are lowercased and punctuation-stripped; every 13-gram shared with an
  evaluation item is cut out together with 200 characters on each side, pieces shorter than 200
  characters are dropped, a document cut into more than 10 pieces is dropped, and 13-grams that
  occur in more than 10 training documents are ignored (they are boilerplate, not leakage).
  Counting those documents needs one pass over the whole corpus before the cutting pass.
- Qwen2.5 LCS: a training sequence is dropped when its longest common subsequence with an
  evaluation item is >= 13 tokens and >= 0.6 x the shorter of the two. A whole document would
  contain almost any short item as a subsequence, so the training sequences compared are windows
  of twice the item's length (stride = item length, so every span of item length lies in one).
  LCS uses the bit-parallel algorithm (one big-integer step per token).
- Dirty-eval report (GPT-3 overlap analysis): an item is dirty when any of its N-grams occurs in
  the training data, N = 5th-percentile item length in words clamped to [8, 13], per eval set.

Evaluation sets are JSONL files; an item's text is the given fields (default: every string
field, and strings in list fields, joined by spaces).

    from gptqwen.data.decontam import load_eval_items, NgramIndex, Gpt3Cutter
    items = load_eval_items(["mmlu.jsonl"]); index = NgramIndex.build(items, 13)
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gptqwen.data.dedup import CJK_CHARS, shingle_hashes
from gptqwen.data.io import read_documents
from gptqwen.errors import UserError

_TOKEN = re.compile(rf"[{CJK_CHARS}]|[^\W_{CJK_CHARS}]+")


def tokens_with_spans(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Lowercased words (punctuation dropped; each CJK character a word) and their char spans."""
    matches = list(_TOKEN.finditer(text.lower()))
    return [m.group(0) for m in matches], [m.span() for m in matches]


def ngram_hashes(token_lists: Sequence[Sequence[str]], n: int) -> list[np.ndarray]:
    """Hashes of the n-grams of each token list, in position order (one batch, vectorised).
    A list shorter than n yields one hash over all of it; an empty list yields none."""
    hashes, counts = shingle_hashes([" ".join(t) for t in token_lists], n, normalized=True)
    return np.split(hashes, np.cumsum(counts)[:-1]) if len(counts) else []


@dataclass
class EvalItem:
    set: str
    index: int
    id: str
    text: str


def load_eval_items(paths: Iterable[str | Path], keys: Sequence[str] | None = None) -> list[EvalItem]:
    """Items of every eval JSONL file; the set name is the file name without suffixes."""
    items: list[EvalItem] = []
    for path in paths:
        name = Path(path).name.split(".")[0]
        for i, rec in enumerate(read_documents(path, text_key=None, on_error="fail")):
            parts = [rec.get(k) for k in keys] if keys else list(rec.values())
            text = " ".join(s for p in parts for s in (p if isinstance(p, list) else [p]) if isinstance(s, str))
            if not text.strip():
                raise UserError(f"eval set '{path}' item {i + 1} has no text in fields {list(keys or rec)}; set eval_keys")
            items.append(EvalItem(name, i, str(rec.get("id", i)), text))
    return items


@dataclass
class NgramIndex:
    """Sorted n-gram hashes of eval items, with the item each came from."""

    n: int
    hashes: np.ndarray  # sorted uint64
    item: np.ndarray  # int64, item number per hash

    @classmethod
    def build(cls, items: Sequence[EvalItem], n: int) -> NgramIndex:
        per_item = ngram_hashes([tokens_with_spans(it.text)[0] for it in items], n)
        item = np.repeat(np.arange(len(items)), [len(h) for h in per_item]) if items else np.zeros(0, np.int64)
        hashes = np.concatenate(per_item) if per_item else np.zeros(0, np.uint64)
        order = np.argsort(hashes, kind="stable")
        return cls(n, hashes[order], item[order])

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        return np.isin(hashes, self.hashes)


def report_n(items: Sequence[EvalItem]) -> dict[str, int]:
    """GPT-3's per-set N: 5th-percentile item length in words, clamped to [8, 13]."""
    lengths: dict[str, list[int]] = defaultdict(list)
    for it in items:
        lengths[it.set].append(len(tokens_with_spans(it.text)[0]))
    return {s: int(min(13, max(8, np.percentile(v, 5)))) for s, v in lengths.items()}


def scan_matches(texts: Sequence[str], indexes: dict[int, NgramIndex]) -> dict[int, Counter]:
    """Pass 1 over a batch of training texts: for every index n, how many documents contain each
    matched eval n-gram hash (per-document unique), as Counters to be summed across shards."""
    tokens = [tokens_with_spans(t)[0] for t in texts]
    out: dict[int, Counter] = {}
    for n, index in indexes.items():
        counter: Counter = Counter()
        for h in ngram_hashes(tokens, n):
            counter.update(np.unique(h[index.contains(h)]).tolist())
        out[n] = counter
    return out


@dataclass
class Gpt3Cutter:
    """GPT-3 13-gram removal for one document at a time (after the frequency pass)."""

    index: NgramIndex
    ignore: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))  # hashes in > 10 training docs
    margin: int = 200
    min_piece: int = 200
    max_pieces: int = 10

    def apply(self, text: str) -> tuple[str | None, list[str]]:
        """`(reason, pieces)`: reason None with `[text]` when clean; otherwise the surviving pieces
        (reason "decontam_cut") or none (reason "decontam_too_many_pieces" / "decontam_all_cut")."""
        tokens, spans = tokens_with_spans(text)
        if len(tokens) < self.index.n:
            return None, [text]
        hashes = ngram_hashes([tokens], self.index.n)[0]
        hit = self.index.contains(hashes)
        if len(self.ignore):
            hit &= ~np.isin(hashes, self.ignore)
        if not hit.any():
            return None, [text]
        cuts: list[list[int]] = []
        for i in np.flatnonzero(hit).tolist():
            lo, hi = max(0, spans[i][0] - self.margin), spans[i + self.index.n - 1][1] + self.margin
            if cuts and lo <= cuts[-1][1]:
                cuts[-1][1] = max(cuts[-1][1], hi)
            else:
                cuts.append([lo, hi])
        bounds = [0] + [b for c in cuts for b in c] + [len(text)]
        pieces = [text[bounds[k] : bounds[k + 1]] for k in range(0, len(bounds), 2)]
        if len(pieces) > self.max_pieces:
            return "decontam_too_many_pieces", []
        pieces = [p.strip() for p in pieces if len(p.strip()) >= self.min_piece]
        return ("decontam_cut" if pieces else "decontam_all_cut"), pieces


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence (bit-parallel, O(len(a)) big-integer steps)."""
    if len(b) > len(a):
        a, b = b, a
    masks: dict = {}
    for i, t in enumerate(b):
        masks[t] = masks.get(t, 0) | (1 << i)
    full = (1 << len(b)) - 1
    v = full
    for t in a:
        u = v & masks.get(t, 0)
        v = ((v + u) | (v - u)) & full
    return len(b) - bin(v).count("1")


def lcs_contaminated(seq: Sequence, item: Sequence, min_tokens: int = 13, min_ratio: float = 0.6) -> bool:
    """Qwen2.5's rule: LCS >= min_tokens and >= min_ratio x the shorter sequence."""
    need = max(min_tokens, min_ratio * min(len(seq), len(item)))
    return len(item) >= min_tokens and len(seq) >= min_tokens and lcs_length(seq, item) >= need


@dataclass
class LcsChecker:
    """Qwen2.5 LCS rule against many eval items, with a multiset-overlap prefilter (LCS <= overlap)."""

    items: Sequence[Sequence[str]]
    min_tokens: int = 13
    min_ratio: float = 0.6
    postings: dict = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        for k, item in enumerate(self.items):
            for tok, c in Counter(item).items():
                self.postings.setdefault(tok, []).append((k, c))

    def first_match(self, tokens: Sequence[str]) -> int | None:
        """Index of an eval item some window of `tokens` is contaminated by, or None."""
        overlap: Counter = Counter()
        for tok, c in Counter(tokens).items():
            for k, ck in self.postings.get(tok, ()):
                overlap[k] += min(c, ck)
        for k, common in overlap.items():
            item = self.items[k]
            m = len(item)
            if m < self.min_tokens or common < max(self.min_tokens, self.min_ratio * min(m, len(tokens))):
                continue
            for start in range(0, max(1, len(tokens) - m + 1), m):
                if lcs_contaminated(tokens[start : start + 2 * m], item, self.min_tokens, self.min_ratio):
                    return k
        return None


def dirty_report(items: Sequence[EvalItem], matched: dict[int, np.ndarray], n_of_set: dict[str, int]) -> dict:
    """Per eval set: N, totals and the ids of dirty items (any N-gram seen in training data)."""
    sets: dict[str, dict] = {
        name: {"n": n, "total": 0, "dirty": 0, "clean": 0, "dirty_fraction": 0.0, "dirty_ids": []}
        for name, n in n_of_set.items()
    }
    for n in sorted(set(n_of_set.values())):
        chosen = [it for it in items if n_of_set[it.set] == n]
        for it, hashes in zip(chosen, ngram_hashes([tokens_with_spans(it.text)[0] for it in chosen], n)):
            entry = sets[it.set]
            entry["total"] += 1
            if np.isin(hashes, matched.get(n, np.zeros(0, np.uint64))).any():
                entry["dirty"] += 1
                entry["dirty_ids"].append(it.id)
    for entry in sets.values():
        entry["clean"] = entry["total"] - entry["dirty"]
        entry["dirty_fraction"] = round(entry["dirty"] / max(1, entry["total"]), 4)
    return sets
