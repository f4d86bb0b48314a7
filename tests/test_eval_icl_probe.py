"""The in-context recall probes (`recall_continue`, `recall_pairs`): deterministic, well formed, no leaks."""

from __future__ import annotations

import random

import pytest

from gptqwen.errors import UserError
from gptqwen.eval import synthetic
from gptqwen.eval.harness import fewshot_indices, fewshot_prefix
from gptqwen.eval.taskspec import load_task

TASKS = ["recall_continue", "recall_pairs"]


@pytest.mark.parametrize("name", TASKS)
def test_probe_is_deterministic_by_seed(name):
    a, b = load_task(name), load_task(name)
    assert a.splits == b.splits and len(a.test_docs) >= 500
    other = synthetic.generate_splits("recall", seed=99, kind=name.split("_")[1])
    assert other["test"] != a.test_docs  # the seed matters


@pytest.mark.parametrize("name", TASKS)
def test_items_are_well_formed(name):
    task = load_task(name)
    contexts = [d["context"] for split in task.splits.values() for d in split]
    assert len(set(contexts)) == len(contexts)  # no test item is also a few-shot example
    for doc in task.test_docs + task.fewshot_docs:
        choices = task.choices(doc)
        gold = choices[task.target_index(doc, choices)]
        assert len(choices) == 4 and len(set(choices)) == 4
        assert doc["completion"] == " " + gold
        listing, query = doc["context"].split("\n")
        words = listing.replace(",", "").rstrip(".").split()
        assert all(c in words for c in choices)  # every choice is a word of the item: copying alone decides
        assert len(set(words)) == len(words)
        if name == "recall_continue":
            assert listing.startswith(query + " ") and words[len(query.split())] == gold
        else:
            pairs = dict(p.split() for p in listing.rstrip(".").split(", "))
            assert pairs[query] == gold


@pytest.mark.parametrize("name", TASKS)
def test_shots_never_contain_the_test_item(name):
    task = load_task(name)
    for i in range(0, 500, 25):
        doc = task.test_docs[i]
        picked = fewshot_indices(task, i, 8, seed=1234)
        assert picked == fewshot_indices(task, i, 8, seed=1234) and len(set(picked)) == 8
        assert all(task.fewshot_docs[j]["context"] != doc["context"] for j in picked)
        assert doc["context"] not in fewshot_prefix(task, i, 8, seed=1234)


def test_recall_rejects_bad_settings():
    rng = random.Random(0)
    with pytest.raises(UserError, match="kind must be"):
        synthetic.recall(rng, kind="reverse")
    with pytest.raises(UserError, match="n_choices"):
        synthetic.recall(rng, kind="continue", n_words=3, n_choices=5)
    with pytest.raises(UserError, match="n_choices"):
        synthetic.recall(rng, kind="pairs", n_words=2, n_choices=4)
