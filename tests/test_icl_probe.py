"""The `recall_dictionary` probe: one secret dictionary per task, the queried pair only ever in the shots."""

from __future__ import annotations

import random

import pytest

from gptqwen.errors import UserError
from gptqwen.eval import synthetic
from gptqwen.eval.harness import fewshot_indices, fewshot_prefix
from gptqwen.eval.taskspec import load_task


def _parse(doc: dict) -> tuple[dict[str, str], str]:
    listing, query = doc["context"].split("\n")
    return dict(p.split() for p in listing.rstrip(".").split(", ")), query


def test_deterministic_by_seed():
    a, b = load_task("recall_dictionary"), load_task("recall_dictionary")
    assert a.splits == b.splits and len(a.test_docs) == 500 and len(a.fewshot_docs) == 100
    settings = {"kind": "dictionary", "n_words": 3, "dict_size": 8}
    other_seed = synthetic.generate_splits("recall", seed=99, **settings)
    other_dict = synthetic.generate_splits("recall", seed=1234, dict_seed=1, **settings)
    assert other_seed["test"] != a.test_docs and other_dict["test"] != a.test_docs


def test_one_dictionary_and_the_item_never_shows_its_answer():
    task = load_task("recall_dictionary")
    dictionary: dict[str, str] = {}
    for doc in task.test_docs + task.fewshot_docs:
        pairs, query = _parse(doc)
        choices = task.choices(doc)
        gold = choices[task.target_index(doc, choices)]
        assert doc["completion"] == " " + gold and len(set(choices)) == 4
        assert query not in pairs and gold not in doc["context"]
        assert not set(choices) & set(pairs.values())  # no choice appears in the item: zero shots are chance
        for key, value in list(pairs.items()) + [(query, gold)]:
            assert dictionary.setdefault(key, value) == value  # every item uses the same dictionary
    assert len(dictionary) == 8 and len(set(dictionary.values())) == 8
    assert not set(dictionary) & set(dictionary.values())
    for doc in task.test_docs:  # every choice is a dictionary word, so the examples show them all alike
        assert set(task.choices(doc)) <= set(dictionary.values())


def test_shots_carry_the_answer_but_never_the_test_item():
    task = load_task("recall_dictionary")
    contexts = [d["context"] for split in task.splits.values() for d in split]
    assert len(set(contexts)) == len(contexts)
    shown = []
    for i in range(0, 500, 10):
        doc = task.test_docs[i]
        picked = fewshot_indices(task, i, 4, seed=1234)
        assert picked == fewshot_indices(task, i, 4, seed=1234) and len(set(picked)) == 4
        assert all(task.fewshot_docs[j]["context"] != doc["context"] for j in picked)
        prefix = fewshot_prefix(task, i, 4, seed=1234)
        assert doc["context"] not in prefix
        _, query = _parse(doc)
        shown.append(f"{query}{doc['completion']}" in prefix)
    # each example shows 4 of the 8 pairs, so 4 examples show the queried one with probability 15/16
    assert 0.8 < sum(shown) / len(shown) < 1.0


@pytest.mark.parametrize("settings,match", [
    ({"n_words": 5, "n_choices": 4}, "n_words \\+ n_choices"),
    ({"n_words": 0}, "n_words >= 1"),
    ({"n_choices": 1}, "n_choices >= 2"),
    ({"dict_size": 1}, "dict_size must be"),
    ({"dict_size": 10**6}, "dict_size must be"),
])
def test_bad_settings(settings, match):
    with pytest.raises(UserError, match=match):
        synthetic.recall(random.Random(0), kind="dictionary", **{"n_words": 3, **settings})
