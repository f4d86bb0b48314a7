"""The copying sources: `synthetic:repeats` (play excerpts in which a passage comes back later) and
`synthetic:wordlists` (a line of random words of the plays, written three times)."""

from __future__ import annotations

import pytest

from gptqwen.data.sources import check_sources, iter_documents
from gptqwen.data.synthetic import repeated_passages, repeated_word_lists
from gptqwen.errors import UserError


def _repeat(doc: str) -> tuple[int, int, list[str]]:
    """(start of first copy, start of second copy, the passage's lines) of the longest repeated run of lines."""
    lines = doc.rstrip("\n").split("\n")
    best = (0, 0, [])
    for i in range(len(lines)):
        for j in range(i + 1, len(lines)):
            k = 0
            while j + k < len(lines) and i + k < j and lines[i + k] == lines[j + k]:
                k += 1
            if sum(len(x.split()) for x in lines[i:i + k]) > sum(len(x.split()) for x in best[2]):
                best = (i, j, lines[i:i + k])
    return best


def test_deterministic_by_seed():
    a, b = list(repeated_passages(20, seed=3)), list(repeated_passages(20, seed=3))
    assert a == b and len(a) == 20 and len(set(a)) == 20
    assert list(repeated_passages(20, seed=4)) != a


def test_every_document_repeats_a_passage_later():
    for doc in repeated_passages(40, seed=0, min_words=15, max_words=70):
        first, second, passage = _repeat(doc)
        words = sum(len(line.split()) for line in passage)
        assert 15 <= words <= 70 + 20  # a longer run only where the excerpt happens to repeat itself too
        assert second >= first + len(passage) + 1  # later, with at least one line between the copies
        assert doc.endswith("\n") and not doc.startswith("\n")


def test_source_spec_and_weight():
    docs = list(iter_documents(["synthetic:repeats:6@2"]))
    assert len(docs) == 12 and docs[0].text == docs[1].text and docs[0].source == "synthetic:repeats:6#0"
    assert [d.text for d in docs[::2]] == list(repeated_passages(6, seed=0))
    assert check_sources(["synthetic:repeats", "synthetic:arithmetic:3"])  # both built-ins need no files


@pytest.mark.parametrize("spec,match", [("synthetic:repeats:0", "N >= 1"), ("synthetic:repeats:many", "N >= 1"),
                                        ("synthetic:repeat", "neither a file")])
def test_bad_source_specs(spec, match):
    with pytest.raises(UserError, match=match):
        check_sources([spec])
        list(iter_documents([spec]))


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"n": 5, "min_words": 0}, {"n": 5, "min_words": 30, "max_words": 20}])
def test_bad_settings(kwargs):
    with pytest.raises(UserError, match="repeated passages"):
        list(repeated_passages(**kwargs))


def test_copies_and_scrambled_passages():
    kw = dict(seed=5, copies=3, max_words=30, context_words=60)
    for doc in repeated_passages(10, **kw):
        passage = "\n".join(_repeat(doc)[2])
        assert doc.count(passage) == 3  # the passage and two later copies
    # the first document draws the same excerpt and passage either way: scrambling keeps the words, in a new
    # order that both copies share
    plain, shuffled = next(repeated_passages(1, **kw)), next(repeated_passages(1, scrambled=1.0, **kw))
    words, scrambled_lines = " ".join(_repeat(plain)[2]).split(), _repeat(shuffled)[2]
    assert sorted(" ".join(scrambled_lines).split()) == sorted(words) != " ".join(scrambled_lines).split()
    assert shuffled.count("\n".join(scrambled_lines)) == 3
    with pytest.raises(UserError, match="copies >= 2"):
        list(repeated_passages(3, copies=1))


def test_word_lists():
    docs = list(repeated_word_lists(50, seed=2))
    assert docs == list(repeated_word_lists(50, seed=2)) != list(repeated_word_lists(50, seed=3))
    for doc in docs:
        lines = doc.rstrip("\n").split("\n")
        words = lines[0].split()
        assert len(lines) == 3 and len(set(lines)) == 1 and 8 <= len(words) <= 20 and len(set(words)) == len(words)
    assert [d.text for d in iter_documents(["synthetic:wordlists:5"])] == list(repeated_word_lists(5))
    with pytest.raises(UserError, match="repeated word lists"):
        list(repeated_word_lists(5, copies=1))
    with pytest.raises(UserError, match="N >= 1"):
        list(iter_documents(["synthetic:wordlists:0"]))
