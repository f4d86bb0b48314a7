"""Exact and MinHash-LSH near-duplicate detection, vectorised with numpy.

Near-dedup follows datatrove's MinHash recipe (the settings of the FineWeb report):
word 5-grams of normalised text (lowercase, no punctuation or diacritics, digits -> 0, CJK
characters count as words), 64-bit shingle hashes, `bands x rows` = 14 x 8 = 112 permutations
`(a*h + b) mod (2^61 - 1)`, documents colliding in any band become candidate pairs, union-find
joins pairs into clusters, and the first document of every cluster is kept.

Everything is array code: shingles of a whole batch of documents are hashed at once from a
polynomial prefix hash of the UTF-8 bytes, the 112 permutations are one in-place broadcast per block of shingles, and per-document
minima come from `np.minimum.reduceat`. There is no Python loop per shingle or per hash.

Signature engines (`MinHasher(engine=...)`): "numpy" is the classic MinHash above; "rensa" hands the same shingle
hashes to rensa's R-MinHash (Rust, `pip install 'gptqwen[data]'`), a Fast-Similarity-Sketching MinHash with 32-bit
slots that computes signatures ~30x faster. "auto" (the default) picks rensa when it is installed. The two are
different hash families, so their band keys differ, but both estimate Jaccard similarity slot by slot: on planted
pairs they find the same near-duplicates within 2% recall (tests/test_data_dedup.py; speed and recall side by side
in bench/dedup.py). A corpus is deduplicated by one engine from start to end.

    from gptqwen.data.dedup import MinHasher, near_duplicates
    keep = near_duplicates(texts)              # bool mask, True = keep
    mh = MinHasher(); keys = mh.band_keys(texts)   # [N, bands] uint64, for sharded/streamed use
"""

from __future__ import annotations

import hashlib
import re
import string
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gptqwen.errors import require

MERSENNE = np.uint64((1 << 61) - 1)
_U64 = np.uint64
CJK_CHARS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"  # kana, CJK, hangul
_CJK = re.compile(f"([{CJK_CHARS}])")
_NOT_WORD = re.compile(r"[^\w\s]|_")
_DIGIT = re.compile(r"\d")
_COMBINING = re.compile(r"[\u0300-\u036f]")


# ASCII fast path: one translate deletes punctuation and maps digits to "0".
_ASCII_TABLE = str.maketrans({**{c: None for c in string.punctuation}, **{d: "0" for d in string.digits}})


def normalize_text(text: str) -> str:
    """datatrove-style text simplification used for hashing: lowercase, strip diacritics and
    punctuation, digits -> 0, one space between words, and a space around every CJK character
    (so Chinese and Japanese get character "words" instead of whole sentences)."""
    text = text.lower()
    if text.isascii():
        return " ".join(text.translate(_ASCII_TABLE).split())
    text = _COMBINING.sub("", unicodedata.normalize("NFD", text))
    text = _DIGIT.sub("0", _NOT_WORD.sub("", text))
    return " ".join(_CJK.sub(r" \1 ", text).split())


def text_hash(text: str) -> int:
    """64-bit hash of the normalised text: equal for documents that differ only in case,
    punctuation, whitespace, diacritics or digits (exact dedup key)."""
    return int.from_bytes(hashlib.blake2b(normalize_text(text).encode(), digest_size=8).digest(), "little")


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (wrapping uint64 arithmetic): spreads polynomial hashes over 64 bits."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
        return x ^ (x >> _U64(31))


_P = _U64(0x100000001B3)  # odd, so invertible modulo 2^64
_P_INV = _U64(pow(0x100000001B3, -1, 1 << 64))


def shingle_hashes(texts: Sequence[str], n: int = 5, normalized: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Hash the word n-grams of every text in one vectorised pass.

    Returns `(hashes, counts)`: all shingle hashes (uint64) concatenated in document order, and
    the number of shingles per document. A document with fewer than `n` words (but at least one)
    contributes a single shingle covering all of it; an empty one contributes none.
    """
    norm = list(texts) if normalized else [normalize_text(t) for t in texts]
    counts = np.zeros(len(norm), dtype=np.int64)
    if not any(norm):
        return np.zeros(0, dtype=_U64), counts
    # "\n" separates documents; normalised text never contains it.
    buf = np.frombuffer("\n".join(norm).encode(), dtype=np.uint8)
    is_sep = (buf == 32) | (buf == 10)
    edge = np.diff(np.concatenate(([False], ~is_sep, [False])).astype(np.int8))
    starts = np.flatnonzero(edge == 1)  # first byte of each word
    ends = np.flatnonzero(edge == -1)  # one past its last byte
    doc_of_byte = np.cumsum(buf == 10)
    word_doc = doc_of_byte[starts]
    powers, inv_powers = _power_tables(len(buf))
    with np.errstate(over="ignore"):
        prefix = np.concatenate(([_U64(0)], np.cumsum((buf.astype(_U64) + _U64(1)) * powers, dtype=_U64)))
    words_per_doc = np.bincount(word_doc, minlength=len(norm))
    # n-gram i spans words i .. i+n-1 and is valid when they belong to the same document.
    m = len(starts) - n + 1
    if m > 0:
        gi = np.arange(m)
        valid = word_doc[gi] == word_doc[gi + n - 1]
        g_start, g_end, g_doc = starts[gi[valid]], ends[gi[valid] + n - 1], word_doc[gi[valid]]
    else:
        g_start = g_end = g_doc = np.zeros(0, dtype=np.int64)
    # Short documents: one shingle over all their words.
    short = np.flatnonzero((words_per_doc > 0) & (words_per_doc < n))
    if len(short):
        first_word = np.searchsorted(word_doc, short, side="left")
        last_word = np.searchsorted(word_doc, short, side="right") - 1
        g_start = np.concatenate((g_start, starts[first_word]))
        g_end = np.concatenate((g_end, ends[last_word]))
        g_doc = np.concatenate((g_doc, short))
    order = np.argsort(g_doc, kind="stable")
    g_start, g_end, g_doc = g_start[order], g_end[order], g_doc[order]
    with np.errstate(over="ignore"):
        raw = (prefix[g_end] - prefix[g_start]) * inv_powers[g_start]
        raw = raw ^ (g_end - g_start).astype(_U64)
    counts[:] = np.bincount(g_doc, minlength=len(norm))
    return _mix64(raw), counts


_POWERS = np.ones(1, dtype=_U64)
_INV_POWERS = np.ones(1, dtype=_U64)


def _power_tables(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P^k and P^-k (mod 2^64) for k < n, cached and grown by doubling."""
    global _POWERS, _INV_POWERS
    if len(_POWERS) < n:
        size = max(n, 2 * len(_POWERS), 1 << 16)
        with np.errstate(over="ignore"):
            _POWERS = np.cumprod(np.concatenate(([_U64(1)], np.full(size - 1, _P, dtype=_U64))))
            _INV_POWERS = np.cumprod(np.concatenate(([_U64(1)], np.full(size - 1, _P_INV, dtype=_U64))))
    return _POWERS[:n], _INV_POWERS[:n]


@dataclass(frozen=True)
class MinHasher:
    """MinHash signatures and LSH band keys with datatrove's defaults (5-grams, 14 bands x 8 rows)."""

    bands: int = 14
    rows: int = 8
    ngram: int = 5
    seed: int = 1
    block: int = 256  # shingle rows per permutation block: two block x num_perm uint64 buffers (cache-sized)
    engine: str = "auto"  # auto (rensa when installed, else numpy) | rensa | numpy; resolved at construction

    def __post_init__(self) -> None:
        for name in ("bands", "rows", "ngram", "block"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.engine not in ("auto", "rensa", "numpy"):
            raise ValueError(f"engine must be auto, rensa or numpy, got {self.engine!r}")
        rensa = self.engine == "rensa" or (self.engine == "auto" and _rensa() is not None)
        if rensa:
            require("rensa", "data", "the MinHash engine 'rensa'")  # asked for by name but not installed: say how
        object.__setattr__(self, "engine", "rensa" if rensa else "numpy")

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows

    @property
    def threshold(self) -> float:
        """Jaccard similarity at which a pair becomes a candidate with probability ~0.5 (approx)."""
        return (1 / self.bands) ** (1 / self.rows)

    def permutations(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.RandomState(self.seed)
        a = rng.randint(1, int(MERSENNE), size=self.num_perm, dtype=np.uint64)
        b = rng.randint(0, int(MERSENNE), size=self.num_perm, dtype=np.uint64)
        return a, b

    def signatures(self, texts: Sequence[str], batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """`(sig [N, num_perm] uint64, has_sig [N] bool)`; empty documents have no signature.
        Texts are hashed `batch` at a time so the byte-level arrays stay cache-sized."""
        parts = [self.signatures_from_shingles(*shingle_hashes(texts[i : i + batch], self.ngram))
                 for i in range(0, len(texts), batch)]
        if not parts:
            return np.zeros((0, self.num_perm), dtype=_U64), np.zeros(0, dtype=bool)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def signatures_from_shingles(self, hashes: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`(sig [N, num_perm] uint64, has_sig [N] bool)` from `shingle_hashes`' output, by the hasher's engine."""
        if self.engine == "rensa":
            offsets = np.concatenate(([0], np.cumsum(counts))).astype(_U64)
            digests = _rensa().RMinHash.digest_matrix_from_flat_token_hashes(hashes, offsets, self.num_perm, self.seed)
            return np.array(digests.to_rows(), dtype=_U64).reshape(len(counts), self.num_perm), counts > 0
        return self.numpy_signatures(hashes, counts)

    def numpy_signatures(self, hashes: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Minimum of every permutation over each document's shingles.

        As in datatrove and datasketch, `a*h + b` wraps at 2^64 before the reduction modulo
        2^61-1; the reduction is one Mersenne fold (`(x & p) + (x >> 61)`), which leaves a value
        >= p with probability ~2^-58, harmless because only equality and order of minima matter.
        Work happens in place on a block of rows that stays in cache.
        """
        a, b = self.permutations()
        sig = np.full((len(counts), self.num_perm), np.iinfo(np.uint64).max, dtype=_U64)
        doc_of = np.repeat(np.arange(len(counts)), counts)
        buf = np.empty((self.block, self.num_perm), dtype=_U64)
        tmp = np.empty_like(buf)
        shift = _U64(61)
        for lo in range(0, len(hashes), self.block):
            h = hashes[lo : lo + self.block, None]
            x, t = buf[: len(h)], tmp[: len(h)]
            np.multiply(h, a, out=x)
            np.add(x, b, out=x)
            np.right_shift(x, shift, out=t)
            np.bitwise_and(x, MERSENNE, out=x)
            np.add(x, t, out=x)
            # Minimum per document within this block, merged into the running minimum.
            docs, first = np.unique(doc_of[lo : lo + self.block], return_index=True)
            sig[docs] = np.minimum(sig[docs], np.minimum.reduceat(x, first, axis=0))
        return sig, counts > 0

    def band_keys_from_signatures(self, sig: np.ndarray) -> np.ndarray:
        """One 64-bit key per band: equal keys <=> (up to 2^-64 collisions) equal `rows` minima."""
        bands = sig.reshape(len(sig), self.bands, self.rows)
        key = np.zeros((len(sig), self.bands), dtype=_U64)
        with np.errstate(over="ignore"):
            for r in range(self.rows):
                key = _mix64(key * _U64(0x9E3779B97F4A7C15) + bands[:, :, r])
        return key

    def band_keys(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        sig, has = self.signatures(texts)
        return self.band_keys_from_signatures(sig), has


def _rensa():
    """The rensa module, or None when it is not installed (an optional dependency, extra `data`)."""
    try:
        import rensa
    except ImportError:
        return None
    return rensa


def candidate_pairs(keys: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Pairs `[P, 2]` of row indices that share a key in at least one band column.

    Each run of equal keys links its members to the run's first member (enough for union-find).
    """
    n = len(keys)
    rows = np.arange(n) if valid is None else np.flatnonzero(valid)
    pairs = []
    for band in range(keys.shape[1]):
        col = keys[rows, band]
        order = np.argsort(col, kind="stable")
        sorted_keys = col[order]
        same = np.concatenate(([False], sorted_keys[1:] == sorted_keys[:-1]))
        run_start = np.maximum.accumulate(np.where(~same, np.arange(len(order)), 0))
        idx = np.flatnonzero(same)
        pairs.append(np.stack((rows[order[run_start[idx]]], rows[order[idx]]), axis=1))
    return np.unique(np.concatenate(pairs), axis=0) if pairs else np.zeros((0, 2), dtype=np.int64)


def connected_components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Union-find over `pairs`: label of every node = smallest node index in its component.

    Vectorised min-label propagation with pointer jumping; converges in a few rounds.
    """
    labels = np.arange(n)
    if len(pairs) == 0:
        return labels
    u, v = pairs[:, 0], pairs[:, 1]
    while True:
        low = np.minimum(labels[u], labels[v])
        new = labels.copy()
        np.minimum.at(new, u, low)
        np.minimum.at(new, v, low)
        new = new[new]  # pointer jumping: follow labels to their roots
        while not np.array_equal(new, new[new]):
            new = new[new]
        if np.array_equal(new, labels):
            return labels
        labels = new


def keep_mask_from_keys(keys: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """True for the first document of every near-duplicate cluster (and every singleton)."""
    labels = connected_components(len(keys), candidate_pairs(keys, valid))
    return labels == np.arange(len(keys))


def near_duplicates(texts: Sequence[str], hasher: MinHasher | None = None) -> np.ndarray:
    """In-memory near-dedup of a list of texts: bool mask, True = keep."""
    keys, valid = (hasher or MinHasher()).band_keys(texts)
    return keep_mask_from_keys(keys, valid)


def first_occurrences(hashes: np.ndarray) -> np.ndarray:
    """Bool mask keeping the first document of each hash (the `exact_dedup` step's rule, in input order)."""
    keep = np.zeros(len(hashes), dtype=bool)
    keep[np.unique(hashes, return_index=True)[1]] = True
    return keep
