"""The two BPE engines behind `Tokenizer`, behind one small duck-typed interface.

* `TiktokenBackend` runs tiktoken rank files (the real Qwen and GPT-4 vocabularies) on `tiktoken`
  itself, so ids equal tiktoken's by construction and encoding runs at its speed.
* `HFBackend` runs a `tokenizers.Tokenizer` (a `tokenizer.json`, a freshly trained vocabulary, or one
  rebuilt from GGUF metadata).

Both expose: `n_vocab`, `special_tokens`, `encode_ordinary(text)` (control tokens typed in the text
stay plain text), `encode_special(text)` (control tokens are recognised), `encode_batch(texts,
allow_special, num_threads, arrays)` (lists, or uint32 arrays when `arrays`), `encode_piece(bytes)` (BPE on
raw bytes without the regex split: used for invalid UTF-8), `token_bytes` (id -> raw bytes, a list),
`decode_bytes(ids)`, `lookup(token_string)` and `to_json()` (a tokenizer.json document).

Byte-level BPE spells each byte as one printable character (GPT-2's table) so that vocabularies can be
stored as JSON text; `BYTE_TO_CHAR` / `CHAR_TO_BYTE` are that table.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import sys
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tiktoken
import tokenizers

from gptqwen.errors import UserError


def _byte_level_alphabet() -> dict[int, str]:
    # Printable latin-1 bytes stand for themselves; the rest (control chars, space, ...) are shifted
    # to U+0100 and up, in byte order. This is the fixed convention every byte-level tokenizer.json uses.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, shifted = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


BYTE_TO_CHAR = _byte_level_alphabet()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def bytes_to_token_string(b: bytes) -> str:
    return "".join(BYTE_TO_CHAR[x] for x in b)


def token_string_to_bytes(s: str) -> bytes | None:
    try:
        return bytes(CHAR_TO_BYTE[c] for c in s)
    except KeyError:
        return None


class TiktokenBackend:
    """A tiktoken rank file + split regex + control tokens."""

    def __init__(self, ranks: dict[bytes, int], pattern: str, special_tokens: dict[str, int], name: str = "custom"):
        self.ranks, self.pattern, self.special_tokens = ranks, pattern, dict(special_tokens)
        try:
            self.enc = tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=special_tokens)
        except ValueError as e:  # tiktoken validates ids (e.g. a special token reusing a rank)
            raise UserError(f"cannot build the tokenizer '{name}': {e}") from e
        self.n_vocab = self.enc.n_vocab
        self._json: dict | None = None
        self.token_bytes: list[bytes | None] = [None] * self.n_vocab
        for tok, rank in ranks.items():
            self.token_bytes[rank] = tok
        for tok, i in special_tokens.items():
            self.token_bytes[i] = tok.encode()

    def encode_ordinary(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def encode_special(self, text: str) -> list[int]:
        return self.enc.encode(text, allowed_special="all", disallowed_special=())

    def encode_batch(self, texts: list[str], allow_special: bool, num_threads: int,
                     arrays: bool = False) -> list[list[int]] | list[np.ndarray]:  # fmt: skip
        # tiktoken releases the GIL inside its Rust core, so plain threads run in parallel. What does not
        # run in parallel is building the Python list of ints under the GIL: the array form skips it
        # (tiktoken hands over a uint32 buffer), which is what lets batches scale across cores.
        if not arrays:
            if allow_special:
                return self.enc.encode_batch(texts, num_threads=num_threads, allowed_special="all",
                                             disallowed_special=())  # fmt: skip
            return self.enc.encode_ordinary_batch(texts, num_threads=num_threads)
        allowed = set(self.special_tokens) if allow_special else set()
        if num_threads > 1 and sum(map(len, texts)) >= _POOL_MIN_CHARS and self._process_pool(num_threads):
            return self._encode_in_processes(texts, allowed, num_threads)
        core = self.enc._core_bpe

        def one(text: str) -> np.ndarray:
            return np.frombuffer(core.encode_to_tiktoken_buffer(text, allowed), dtype=np.uint32)

        if num_threads <= 1 or len(texts) <= 1:
            return [one(t) for t in texts]
        with ThreadPoolExecutor(num_threads) as pool:
            return list(pool.map(one, texts))

    # Large array batches go to forked worker processes: threads share one interpreter and stop scaling at
    # about 1.3x on 2 cores, processes do not, and uint32 results cross the process boundary cheaply.
    def _process_pool(self, workers: int):
        pool = getattr(self, "_pool", None)
        if pool is not None and self._pool_size == workers:
            return pool
        if sys.platform != "linux" or multiprocessing.current_process().daemon:
            return None  # fork is Linux-only here; daemonic workers (e.g. data prepare's) may not fork
        if pool is not None:
            pool.terminate()
        # the workers inherit this table and find the encoder by key; holding the encoder, not the backend,
        # leaves the backend collectable, and its finalizer then stops the pool
        _FORKED[id(self)] = self.enc
        self._pool = multiprocessing.get_context("fork").Pool(workers)
        self._pool_size = workers
        weakref.finalize(self, _close_pool, self._pool, id(self))
        return self._pool

    def _encode_in_processes(self, texts: list[str], allowed: set[str], workers: int) -> list[np.ndarray]:
        per_task = max(1, -(-len(texts) // (2 * workers)))  # two tasks per worker: balance without much overhead
        chunks = [texts[i:i + per_task] for i in range(0, len(texts), per_task)]
        out: list[np.ndarray] = []
        for lengths, flat in self._pool.imap(_encode_chunk, [(id(self), c, allowed) for c in chunks]):
            out += np.split(flat, np.cumsum(lengths)[:-1])
        return out

    def encode_piece(self, piece: bytes) -> list[int]:
        return self.enc._encode_single_piece(piece)

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return self.enc.decode_bytes(ids)

    def lookup(self, token: str) -> int | None:
        if token in self.special_tokens:
            return self.special_tokens[token]
        b = token_string_to_bytes(token)
        return self.ranks.get(b) if b is not None else None

    def to_json(self) -> dict:
        """A tokenizer.json document that encodes exactly like this rank file (checked by the tests)."""
        if self._json is None:
            self._json = self._build_json()
        return self._json

    def _build_json(self) -> dict:
        vocab = {bytes_to_token_string(tok): rank for tok, rank in self.ranks.items()}
        merges = [[bytes_to_token_string(a), bytes_to_token_string(b)] for a, b in ranks_to_merges(self.ranks)]
        return tokenizer_json(vocab, merges, self.pattern, self.special_tokens)


_POOL_MIN_CHARS = 1 << 18  # below ~256 KB of text a batch is done before worker processes would start
_FORKED: dict[int, tiktoken.Encoding] = {}


def _encode_chunk(task: tuple[int, list[str], set[str]]) -> tuple[np.ndarray, np.ndarray]:
    key, texts, allowed = task
    core = _FORKED[key]._core_bpe
    parts = [np.frombuffer(core.encode_to_tiktoken_buffer(t, allowed), dtype=np.uint32) for t in texts]
    return np.array([len(p) for p in parts], dtype=np.int64), np.concatenate(parts)


def _close_pool(pool, key: int) -> None:
    pool.terminate()
    _FORKED.pop(key, None)


def ranks_to_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Derive a merge list that reproduces tiktoken's rank-based BPE.

    tiktoken repeatedly joins the adjacent pair whose concatenation has the lowest rank; a merge list
    does the same if every way of splitting a token into two known tokens is listed at the priority
    of that token's rank.
    """
    scored = []
    for tok, rank in ranks.items():
        for i in range(1, len(tok)):
            left, right = tok[:i], tok[i:]
            if left in ranks and right in ranks:
                scored.append((rank, ranks[left], ranks[right], left, right))
    scored.sort()
    return [(left, right) for *_, left, right in scored]


def onig_pattern(pattern: str) -> str:
    """The split regex in the dialect of `tokenizers` (Oniguruma). There `{1,3}+` is not a possessive
    `{1,3}` but `{1,3}` repeated, so cl100k's `\\p{N}{1,3}+` would glue all digits into one piece; for a
    counted repeat at the end of an alternative the plain greedy form matches the same."""
    return re.sub(r"(\{\d+(?:,\d*)?\})\+", r"\1", pattern)


def tokenizer_json(vocab: dict[str, int], merges: list, pattern: str, special_tokens: dict[str, int]) -> dict:
    """Assemble a byte-level BPE tokenizer.json document (the `tokenizers` serialization format).

    The control tokens also go into the model's vocab: `tokenizers` numbers added tokens that are not
    in the vocab consecutively, which would lose ids after a gap (cl100k's start at 100257, not 100256).
    """
    vocab = dict(vocab)
    for t, i in special_tokens.items():
        if vocab.setdefault(t, i) != i:
            raise UserError(f"control token {t!r} is also an ordinary token of the vocabulary; rename it")
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
         "special": True}
        for t, i in sorted(special_tokens.items(), key=lambda kv: kv[1])
    ]  # fmt: skip
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": onig_pattern(pattern)}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            ],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
            # tiktoken looks a whole regex piece up before merging; ignore_merges does the same.
            "ignore_merges": True,
            "vocab": vocab, "merges": merges,
        },
    }  # fmt: skip


class HFBackend:
    """A `tokenizers.Tokenizer`. Every added token counts as a control token (see `Tokenizer`).

    User text is encoded by a copy whose added tokens are all flagged special and which has
    `encode_special_tokens` on, so it spells them with ordinary BPE instead of matching them. When the
    tokenizer is our own (`owned`) and all its added tokens are special already, that copy is the
    tokenizer itself and the matching one is only built if `allow_special` is ever used.
    """

    def __init__(self, tok: tokenizers.Tokenizer, owned: bool = False):
        added = tok.get_added_tokens_decoder()
        self.special_tokens = {t.content: i for i, t in added.items()}
        self.special_flags = {t.content: t.special for t in added.values()}
        if owned and all(t.special for t in added.values()):
            self._full = None
            self.plain = tok
        else:
            self._full = tok
            doc = json.loads(tok.to_str())
            for t in doc.get("added_tokens", []):
                t["special"] = True
            self.plain = tokenizers.Tokenizer.from_str(json.dumps(doc))
        self.plain.encode_special_tokens = True
        vocab = tok.get_vocab(with_added_tokens=True)
        self.n_vocab = max(vocab.values()) + 1 if vocab else 0
        self.token_bytes: list[bytes | None] = [None] * self.n_vocab
        self.byte_level = True
        for s, i in vocab.items():
            b = s.encode() if s in self.special_tokens else token_string_to_bytes(s)
            if b is None:
                self.byte_level = False
                break
            self.token_bytes[i] = b
        if not self.byte_level:  # e.g. SentencePiece-style vocabularies: let the engine's decoder spell tokens
            self.token_bytes = [None] * self.n_vocab
            for i in vocab.values():
                self.token_bytes[i] = tok.decode([i], skip_special_tokens=False).encode()

    @property
    def full(self) -> tokenizers.Tokenizer:
        """The tokenizer that matches control-token text (built on first use when not given)."""
        if self._full is None:
            self._full = tokenizers.Tokenizer.from_str(self.plain.to_str())
            self._full.encode_special_tokens = False
        return self._full

    def encode_ordinary(self, text: str) -> list[int]:
        return self.plain.encode(text, add_special_tokens=False).ids

    def encode_special(self, text: str) -> list[int]:
        return self.full.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str], allow_special: bool, num_threads: int,
                     arrays: bool = False) -> list[list[int]] | list[np.ndarray]:  # fmt: skip
        tok = self.full if allow_special else self.plain

        def part(chunk: list[str]) -> list:
            encodings = tok.encode_batch(chunk, add_special_tokens=False)
            return [np.asarray(e.ids, dtype=np.uint32) if arrays else e.ids for e in encodings]

        if num_threads <= 1:
            return part(texts)
        # Split the batch into one chunk per thread; `tokenizers` drops the GIL while encoding a batch.
        chunks = [texts[i::num_threads] for i in range(num_threads)]
        with ThreadPoolExecutor(num_threads) as pool:
            parts = list(pool.map(part, chunks))
        out: list = [None] * len(texts)
        for k, p in enumerate(parts):
            out[k::num_threads] = p
        return out

    def encode_piece(self, piece: bytes) -> list[int]:
        if not self.byte_level:
            return self.encode_ordinary(piece.decode("utf-8", errors="replace"))
        return [t.id for t in self.plain.model.tokenize(bytes_to_token_string(piece))]

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        table = self.token_bytes
        try:
            return b"".join([table[i] for i in ids])
        except (IndexError, TypeError):
            bad = [i for i in ids if not (0 <= i < len(table)) or table[i] is None]
            raise ValueError(f"token ids not in this vocabulary: {bad[:5]}") from None

    def lookup(self, token: str) -> int | None:
        return self.plain.token_to_id(token)

    def to_json(self) -> dict:
        doc = json.loads(self.plain.to_str())
        for t in doc.get("added_tokens", []):  # the copy flags every added token special; keep the originals
            t["special"] = self.special_flags.get(t["content"], True)
        return doc
