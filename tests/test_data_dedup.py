"""MinHash-LSH near-dedup and exact dedup: recall/FPR on planted pairs, hashing invariants, `gptqwen data dedup`."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from gptqwen.cli import main
from gptqwen.data.dedup import (
    MinHasher,
    candidate_pairs,
    connected_components,
    first_occurrences,
    near_duplicates,
    normalize_text,
    shingle_hashes,
    text_hash,
)
from gptqwen.data.io import read_documents
from gptqwen.data.steps import MinHashDedup
from gptqwen.data.synthetic import jaccard, planted_pairs
from gptqwen.errors import UserError

# the README pipeline's sample: en0-copy repeats en0 up to punctuation, en1-near changes one word of en1
SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "data" / "sample.jsonl"
SAMPLE_IDS = ["en0", "en1", "en2", "en3", "en0-copy", "en1-near", "pii", "spam", "code", "zh", "leak"]


def test_normalisation_matches_datatrove_rules():
    assert normalize_text("  Héllo,\tWORLD! 1984 don't ") == "hello world 0000 dont"
    assert normalize_text("你好，世界 ABC") == "你 好 世 界 abc"  # CJK characters become words


def test_shingles_are_position_independent_and_short_docs_get_one():
    h, counts = shingle_hashes(["a b c d e f", "x a b c d e", "tiny doc", ""])
    assert counts.tolist() == [2, 2, 1, 0]
    assert h[0] == h[3]  # "a b c d e" hashes the same wherever it occurs
    assert len(set(h.tolist())) == 4


def test_signature_equals_brute_force_minimum():
    mh = MinHasher(bands=2, rows=3, engine="numpy")
    a, b = mh.permutations()
    h, counts = shingle_hashes(["one two three four five six seven"])
    sig, has = mh.signatures_from_shingles(h, counts)
    p = (1 << 61) - 1
    fold = lambda e: (e & p) + (e >> 61)  # noqa: E731  one Mersenne fold, as documented
    expect = [min(fold(((int(x) * int(ai)) % 2**64 + int(bi)) % 2**64) for x in h) for ai, bi in zip(a, b)]
    assert has.all() and sig[0].tolist() == expect


@pytest.mark.parametrize("engine", ["numpy", "rensa"])
def test_recall_and_false_positive_rate_on_planted_pairs(engine):
    if engine == "rensa":
        pytest.importorskip("rensa")
    texts, pairs, sims = planted_pairs(n_pairs=480, n_singletons=200, seed=1)
    sims = np.array(sims)
    assert jaccard(texts[0], texts[1]) == pytest.approx(sims[0])
    keys, valid = MinHasher(engine=engine).band_keys(texts)
    found = {tuple(p) for p in candidate_pairs(keys, valid).tolist()}
    hit = np.array([p in found for p in pairs])
    high, low = sims >= 0.85, sims < 0.5
    assert high.sum() >= 200 and low.sum() >= 200
    assert hit[high].mean() >= 0.95
    assert hit[low].mean() <= 0.01
    planted = set(pairs)
    assert len(found - planted) == 0  # unrelated documents never collide


def test_rensa_engine_agrees_with_ours():
    """The engines are different hash families: the same pairs are found up to a stated tolerance."""
    pytest.importorskip("rensa")
    texts, pairs, sims = planted_pairs(n_pairs=400, n_singletons=400, seed=2)
    high = np.array(sims) >= 0.85
    found = {}
    for engine in ("numpy", "rensa"):
        hasher = MinHasher(engine=engine)
        assert hasher.engine == engine
        keys, valid = hasher.band_keys(texts)
        found[engine] = {tuple(p) for p in candidate_pairs(keys, valid).tolist()}
    recall = {e: np.mean([p in f for p, h in zip(pairs, high) if h]) for e, f in found.items()}
    assert abs(recall["numpy"] - recall["rensa"]) <= 0.02 and min(recall.values()) >= 0.95
    keep = {e: near_duplicates(texts, MinHasher(engine=e)) for e in found}
    assert (keep["numpy"] == keep["rensa"]).mean() >= 0.98  # the documents each keeps


def test_engine_choice(monkeypatch):
    pytest.importorskip("rensa")
    assert MinHasher().engine == "rensa"  # auto: rensa when installed
    assert MinHashDedup({"engine": "numpy"}).hasher.engine == "numpy"  # the pipeline step's setting
    monkeypatch.setitem(sys.modules, "rensa", None)  # as if it were not installed
    assert MinHasher().engine == "numpy"
    with pytest.raises(UserError, match="gptqwen\\[data\\]"):
        MinHasher(engine="rensa")
    with pytest.raises(ValueError, match="engine"):
        MinHasher(engine="fast")


def test_near_dedup_keeps_one_per_cluster():
    letters = str.maketrans("0123456789", "abcdefghij")  # digits would all normalise to 0
    base = " ".join(f"w{i}".translate(letters) for i in range(100))
    near = base.replace("wfa", "zz")
    other = " ".join(f"v{i}".translate(letters) for i in range(100))
    keep = near_duplicates([base, other, near, base.upper()])
    assert keep.tolist() == [True, True, False, False]


def test_union_find_is_transitive():
    labels = connected_components(6, np.array([[4, 5], [1, 2], [2, 4]]))
    assert labels.tolist() == [0, 1, 1, 3, 1, 1]


def test_exact_dedup_on_normalised_text():
    texts = ["Hello, World!", "hello world", "hello  world.", "goodbye"]
    keep = first_occurrences(np.array([text_hash(t) for t in texts], dtype=np.uint64))
    assert keep.tolist() == [True, False, False, True]


def test_bad_settings():
    with pytest.raises(ValueError):
        MinHasher(bands=0)


def test_cli_dedup_writes_the_first_copy_of_each_document(tmp_path, capsys):
    sample = {d["id"]: d for d in read_documents([SAMPLE], on_error="skip")}
    for flags, gone in [([], ["en0-copy", "en1-near"]), (["--no-near"], ["en0-copy"]), (["--engine", "numpy"], ["en0-copy", "en1-near"]),
                        (["--no-exact"], ["en0-copy", "en1-near"])]:
        out = tmp_path / f"dedup{len(flags)}{''.join(flags)}.jsonl.zst"
        assert main(["data", "dedup", str(SAMPLE), "-o", str(out), "--workers", "1", "--json", *flags]) == 0
        report = json.loads(capsys.readouterr().out)
        kept = list(read_documents([out]))
        assert [d["id"] for d in kept] == [i for i in SAMPLE_IDS if i not in gone], flags
        assert all(d == sample[d["id"]] for d in kept)  # whole records, untouched
        assert report["output_docs"] == len(kept) and report["steps"][0]["removed"] == {"bad_record": 1}
    # with exact dedup off, MinHash catches the punctuation-only copy too
    assert [s["removed"] for s in report["steps"][1:]] == [{"near_duplicate": 2}]
