"""The steps a data pipeline is made of, each working shard by shard.

A step turns the documents of one shard into the documents of its output shard. Steps that
need to see the whole corpus first (dedup, decontamination counts, mixing) have a `prepass`
over every shard that returns small arrays (hashes, band keys, counts), then a `plan` in the
driver that turns them into per-shard instructions (which documents to drop, how often to
repeat one). Everything crossing a process boundary is numpy arrays or plain data.

Step names (YAML `steps:` entries): exact_dedup, minhash_dedup, gopher_quality,
gopher_repetition, c4, fineweb, language, pii, decontaminate, classify, mix, pdf_extract.
"""

from __future__ import annotations

import functools
import json
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from gptqwen.data import decontam as dc
from gptqwen.data import pdf
from gptqwen.data.dedup import MinHasher, first_occurrences, keep_mask_from_keys, text_hash
from gptqwen.data.filters import FILTERS, build_filter
from gptqwen.data.io import expand_inputs
from gptqwen.data.mixing import HashedNgramClassifier, RuleClassifier, copies, plan_mixture
from gptqwen.errors import UserError, closest
from gptqwen.tokenizer import Tokenizer
from gptqwen.utils import atomic_write

BATCH = 512  # documents hashed together in a prepass (bounds memory per task)


@dataclass
class ShardStats:
    """Counts for one shard (or, merged, one step): documents and text bytes in and out."""

    docs_in: int = 0
    bytes_in: int = 0
    docs_out: int = 0
    bytes_out: int = 0
    modified: int = 0
    removed: Counter = field(default_factory=Counter)
    extra: dict = field(default_factory=dict)  # step-specific counters, e.g. domains out

    def merge(self, other: ShardStats) -> None:
        for k in ("docs_in", "bytes_in", "docs_out", "bytes_out", "modified"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.removed.update(other.removed)
        for k, v in other.extra.items():
            self.extra.setdefault(k, Counter()).update(v)

    def to_json(self) -> dict:
        return {**{k: getattr(self, k) for k in ("docs_in", "bytes_in", "docs_out", "bytes_out", "modified")},
                "removed": dict(self.removed), "extra": {k: dict(v) for k, v in self.extra.items()}}

    @classmethod
    def from_json(cls, d: dict) -> ShardStats:
        return cls(d["docs_in"], d["bytes_in"], d["docs_out"], d["bytes_out"], d["modified"],
                   Counter(d["removed"]), {k: Counter(v) for k, v in d["extra"].items()})


def _chunks(docs: Iterator[dict], size: int = BATCH) -> Iterator[list[dict]]:
    chunk: list[dict] = []
    for doc in docs:
        chunk.append(doc)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _batches(docs: Iterator[dict], key: str) -> Iterator[list[str]]:
    for chunk in _chunks(docs):
        yield [d[key] for d in chunk]


class Step:
    name: ClassVar[str] = ""
    prepass_needed: ClassVar[bool] = False
    defaults: ClassVar[dict] = {}

    def __init__(self, params: dict | None, text_key: str = "text"):
        params = dict(params or {})
        unknown = set(params) - set(self.defaults)
        if unknown:
            key = sorted(unknown)[0]
            raise UserError(f"step '{self.name}' has no setting '{key}'.{closest(key, self.defaults)} "
                            f"Settings: {', '.join(self.defaults) or 'none'}")
        self.params = {**self.defaults, **params}
        self.text_key = text_key

    def files(self) -> list[str]:
        """Files the step reads besides its shards; their size and mtime join its fingerprint."""
        return []

    def prepass(self, docs: Iterator[dict]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def plan(self, prepass: dict[str, dict[str, np.ndarray]], step_dir) -> dict[str, Any]:
        """Per-shard state from all shards' prepass results (shard id -> result)."""
        return {}

    def process(self, docs: Iterator[dict], state: Any, stats: ShardStats, shard: str) -> Iterator[dict]:
        raise NotImplementedError


class FilterStep(Step):
    """Any filter of gptqwen.data.filters; the step name is the filter name.

    Extra setting `apply_to: [en, ...]`: only documents whose `language` field (set by an earlier
    `language` step) is listed are judged; others pass untouched (Gopher rules are for English).
    """

    def __init__(self, name: str, params: dict | None, text_key: str = "text"):
        self.name = name
        self.defaults = {}
        super().__init__({}, text_key)
        params = dict(params or {})
        self.apply_to = params.pop("apply_to", None)
        if self.apply_to is not None and not isinstance(self.apply_to, list):
            raise UserError(f"step '{name}': apply_to must be a list of language codes, got {self.apply_to!r}")
        self.filter = build_filter(name, params)
        self.params = {**vars(self.filter), "apply_to": self.apply_to}

    def process(self, docs, state, stats, shard):
        for doc in docs:
            if self.apply_to is not None and doc.get("language") not in self.apply_to:
                stats.extra.setdefault("passed_untouched", Counter())[str(doc.get("language"))] += 1
                yield doc
                continue
            reason, text, fields = self.filter.judge(doc[self.text_key])
            doc.update(fields)
            if reason is not None:
                stats.removed[reason] += 1
                continue
            if text != doc[self.text_key]:
                stats.modified += 1
                doc[self.text_key] = text
            yield doc


class _DropByIndex(Step):
    """Dedup steps: the plan lists, per shard, the positions of documents to drop."""

    prepass_needed = True
    reason = ""

    def process(self, docs, state, stats, shard):
        drop = set(state.tolist()) if state is not None else set()
        for i, doc in enumerate(docs):
            if i in drop:
                stats.removed[self.reason] += 1
            else:
                yield doc

    def _split(self, keep: np.ndarray, sizes: dict[str, int]) -> dict[str, np.ndarray]:
        out, start = {}, 0
        for shard, n in sizes.items():
            out[shard] = np.flatnonzero(~keep[start : start + n])
            start += n
        return out


class ExactDedup(_DropByIndex):
    name = "exact_dedup"
    reason = "exact_duplicate"

    def prepass(self, docs):
        return {"hashes": np.array([text_hash(d[self.text_key]) for d in docs], dtype=np.uint64)}

    def plan(self, prepass, step_dir):
        hashes = np.concatenate([r["hashes"] for r in prepass.values()])
        keep = first_occurrences(hashes)  # first occurrence in shard order
        return self._split(keep, {s: len(r["hashes"]) for s, r in prepass.items()})


class MinHashDedup(_DropByIndex):
    name = "minhash_dedup"
    reason = "near_duplicate"
    defaults = {"bands": 14, "rows": 8, "ngram": 5, "seed": 1, "engine": "auto"}  # engine: auto | rensa | numpy

    def __init__(self, params, text_key="text"):
        super().__init__(params, text_key)
        try:
            self.hasher = MinHasher(**self.params)
        except (ValueError, TypeError) as e:
            raise UserError(f"step 'minhash_dedup': {e}") from e

    def prepass(self, docs):
        keys, valid = [], []
        for batch in _batches(docs, self.text_key):
            k, v = self.hasher.band_keys(batch)
            keys.append(k)
            valid.append(v)
        empty = np.zeros((0, self.hasher.bands), np.uint64)
        return {"keys": np.concatenate(keys) if keys else empty, "valid": np.concatenate(valid) if valid else np.zeros(0, bool)}

    def plan(self, prepass, step_dir):
        # Only the band keys of the whole corpus are in memory (bands x 8 bytes per document).
        keys = np.concatenate([r["keys"] for r in prepass.values()])
        valid = np.concatenate([r["valid"] for r in prepass.values()])
        return self._split(keep_mask_from_keys(keys, valid), {s: len(r["valid"]) for s, r in prepass.items()})


@functools.lru_cache(maxsize=4)
def _eval_setup(paths: tuple[str, ...], keys: tuple[str, ...] | None, n: int):
    """Eval items and their n-gram indexes, built once per process."""
    items = dc.load_eval_items(paths, keys)
    n_of_set = dc.report_n(items)
    indexes = {m: dc.NgramIndex.build(items, m) for m in {n, *n_of_set.values()}}
    return items, n_of_set, indexes


@functools.lru_cache(maxsize=2)
def _lcs_tokenizer(spec: str | None):
    """Tokens for the LCS rule: words by default, or token ids of a gptqwen tokenizer
    (preset name such as "qwen", or a tokenizer.json / .tiktoken path) as Qwen2.5 counts them."""
    if not spec:
        return lambda text: dc.tokens_with_spans(text)[0]
    return Tokenizer.load(spec).encode


class Decontaminate(Step):
    name = "decontaminate"
    prepass_needed = True
    defaults = {"eval": [], "eval_keys": None, "method": "ngram", "n": 13, "margin": 200, "min_piece": 200,
                "max_pieces": 10, "max_doc_freq": 10, "lcs_min_tokens": 13, "lcs_min_ratio": 0.6,
                "lcs_tokenizer": None}

    def __init__(self, params, text_key="text"):
        super().__init__(params, text_key)
        p = self.params
        evals = [p["eval"]] if isinstance(p["eval"], str) else p["eval"]
        if not evals:
            raise UserError("step 'decontaminate' needs eval: a list of evaluation JSONL files")
        self.eval_paths = tuple(str(x) for x in expand_inputs(evals))
        if p["method"] not in ("ngram", "lcs", "both"):
            raise UserError(f"decontaminate method must be ngram, lcs or both, got '{p['method']}'")
        if not 0 < p["lcs_min_ratio"] <= 1 or p["n"] < 1:
            raise UserError("decontaminate needs n >= 1 and 0 < lcs_min_ratio <= 1")

    def files(self):
        return list(self.eval_paths)

    def _setup(self):
        keys = tuple(self.params["eval_keys"]) if self.params["eval_keys"] else None
        return _eval_setup(self.eval_paths, keys, int(self.params["n"]))

    def prepass(self, docs):
        _, _, indexes = self._setup()
        totals = {m: Counter() for m in indexes}
        for batch in _batches(docs, self.text_key):
            for m, counter in dc.scan_matches(batch, indexes).items():
                totals[m].update(counter)
        out = {}
        for m, counter in totals.items():
            out[f"h{m}"] = np.array(list(counter.keys()), dtype=np.uint64)
            out[f"c{m}"] = np.array(list(counter.values()), dtype=np.int64)
        return out

    def plan(self, prepass, step_dir):
        items, n_of_set, indexes = self._setup()
        totals = {m: Counter() for m in indexes}
        for r in prepass.values():
            for m in indexes:
                totals[m].update(dict(zip(r[f"h{m}"].tolist(), r[f"c{m}"].tolist())))
        n = int(self.params["n"])
        ignore = np.array([h for h, c in totals[n].items() if c > self.params["max_doc_freq"]], dtype=np.uint64)
        report = dc.dirty_report(items, {m: np.array(list(c), dtype=np.uint64) for m, c in totals.items()}, n_of_set)
        with atomic_write(step_dir / "dirty_eval.json") as f:
            json.dump({"sets": report, "ignored_frequent_ngrams": len(ignore)}, f, indent=2)
        return {shard: ignore for shard in prepass}

    def process(self, docs, state, stats, shard):
        items, _, indexes = self._setup()
        p = self.params
        cutter = dc.Gpt3Cutter(indexes[int(p["n"])], state, p["margin"], p["min_piece"], p["max_pieces"])
        lcs, tokenize = None, _lcs_tokenizer(p["lcs_tokenizer"])
        if p["method"] in ("lcs", "both"):
            lcs = dc.LcsChecker([tokenize(it.text) for it in items], p["lcs_min_tokens"], p["lcs_min_ratio"])
        for doc in docs:
            text = doc[self.text_key]
            if lcs is not None and lcs.first_match(tokenize(text)) is not None:
                stats.removed["decontam_lcs"] += 1
                continue
            if p["method"] == "lcs":
                yield doc
                continue
            reason, pieces = cutter.apply(text)
            if reason is None:
                yield doc
            elif not pieces:
                stats.removed[reason] += 1
            else:
                stats.modified += 1
                stats.extra.setdefault("pieces", Counter())["written"] += len(pieces)
                for k, piece in enumerate(pieces):
                    out = dict(doc)
                    out[self.text_key] = piece
                    if len(pieces) > 1 and "id" in doc:
                        out["id"] = f"{doc['id']}#{k}"
                    yield out


@functools.lru_cache(maxsize=4)
def _load_classifier(path: str) -> HashedNgramClassifier:
    return HashedNgramClassifier.load(path)


class Classify(Step):
    name = "classify"
    defaults = {"model": None, "rules": None, "default": "other", "key": "domain"}

    def __init__(self, params, text_key="text"):
        super().__init__(params, text_key)
        if bool(self.params["model"]) == bool(self.params["rules"]):
            raise UserError("step 'classify' needs exactly one of model: classifier.npz or rules: {domain: [regex, ...]}")
        if self.params["rules"]:
            self.rules = RuleClassifier(self.params["rules"], self.params["default"])
        else:
            _load_classifier(str(self.params["model"]))  # fail early on a bad path

    def files(self):
        return [str(self.params["model"])] if self.params["model"] else []

    def process(self, docs, state, stats, shard):
        clf = self.rules if self.params["rules"] else _load_classifier(str(self.params["model"]))
        key = self.params["key"]
        domains = stats.extra.setdefault("domains", Counter())
        for batch in _chunks(docs):
            labels, scores = clf.predict([d[self.text_key] for d in batch])
            for doc, label, score in zip(batch, labels, scores):
                doc[key], doc[f"{key}_score"] = label, round(float(score), 4)
                domains[label] += 1
                yield doc


class Mix(Step):
    name = "mix"
    prepass_needed = True
    defaults = {"weights": {}, "total": None, "key": "domain", "seed": 0}

    def prepass(self, docs):
        key = self.params["key"]
        counts = Counter()
        for doc in docs:
            if key not in doc:
                raise UserError(f"step 'mix' needs a '{key}' field on every document; put a classify step before it")
            counts[str(doc[key])] += 1
        return {"domains": np.array(sorted(counts), dtype=str), "counts": np.array([counts[d] for d in sorted(counts)])}

    def plan(self, prepass, step_dir):
        counts = Counter()
        for r in prepass.values():
            counts.update(dict(zip(r["domains"].tolist(), r["counts"].tolist())))
        rates = plan_mixture(dict(counts), self.params["weights"], self.params["total"])
        return {shard: rates for shard in prepass}

    def process(self, docs, state, stats, shard):
        key, seen = self.params["key"], Counter()
        out = stats.extra.setdefault("domains", Counter())
        for doc in docs:
            domain = str(doc[key])
            # A seeded offset per (shard, domain) keeps shards from rounding the same way.
            offset = (zlib.crc32(f"{self.params['seed']}/{shard}/{domain}".encode()) % 10007) / 10007
            k = copies(state.get(domain, 0.0), seen[domain], offset)
            seen[domain] += 1
            if k == 0:
                stats.removed[f"mix_downsampled_{domain}"] += 1
            for _ in range(k):
                out[domain] += 1
                yield dict(doc)


class PdfExtract(Step):
    """PDF files named by `pdf_key` -> their text (see data/pdf.py); unreadable ones are dropped and counted."""

    name = "pdf_extract"
    defaults = {"pdf_key": "pdf", "method": "text", "model": None, "prompt": "What word is written?", "scale": 1.0,
                "max_pages": 1000, "max_new_tokens": 32, "reference_key": None}  # fmt: skip

    def __init__(self, params: dict | None, text_key: str = "text"):
        super().__init__(params, text_key)
        p = self.params
        if p["method"] not in ("text", "vlm") or (p["method"] == "vlm" and not p["model"]):
            raise UserError("pdf_extract: method must be text, or vlm with model: a VLM folder (gptqwen vl train)")
        if not 0 < float(p["scale"]) <= 8 or int(p["max_pages"]) < 1:
            raise UserError("pdf_extract: scale must be in (0, 8] and max_pages >= 1")

    def files(self) -> list[str]:
        model = self.params["model"]
        return [str(Path(model) / "model.safetensors")] if self.params["method"] == "vlm" else []

    def process(self, docs, state, stats, shard):
        p, ref_key = self.params, self.params["reference_key"]
        for doc in docs:
            path = doc.get(p["pdf_key"])
            try:
                if not isinstance(path, str) or not Path(path).is_file():
                    raise FileNotFoundError(path)
                pages = pdf.pdf_pages(path, p["method"], int(p["max_pages"]), p["model"], p["prompt"], float(p["scale"]),
                                      int(p["max_new_tokens"]))  # fmt: skip
            except UserError:
                raise
            except Exception:  # PDFium raises PdfiumError for a broken file; a missing one is the same to the corpus
                stats.removed["unreadable_pdf"] += 1
                continue
            doc[self.text_key], doc["pdf_pages"] = "\n\n".join(pages), len(pages)
            stats.modified += 1
            if ref_key and isinstance(doc.get(ref_key), str):
                cer = stats.extra.setdefault("cer", Counter())
                cer["edits"] += pdf.edit_distance(doc[ref_key], doc[self.text_key])
                cer["chars"] += len(doc[ref_key])
            yield doc


STEPS: dict[str, type[Step]] = {s.name: s for s in (ExactDedup, MinHashDedup, Decontaminate, Classify, Mix, PdfExtract)}
STEP_NAMES = [*STEPS, *FILTERS]


def build_step(name: str, params: dict | None, text_key: str = "text") -> Step:
    if name in FILTERS:
        return FilterStep(name, params, text_key)
    if name in STEPS:
        if params is not None and not isinstance(params, dict):
            raise UserError(f"settings of step '{name}' must be a mapping, got {params!r}")
        return STEPS[name](params, text_key)
    raise UserError(f"unknown step '{name}'.{closest(name, STEP_NAMES)} Steps: {', '.join(STEP_NAMES)}")
