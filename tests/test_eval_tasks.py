"""Evaluation without a model: task files, few-shot sampling, synthetic probes, scorers, window plans."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from gptqwen.errors import UserError
from gptqwen.eval import synthetic
from gptqwen.eval.harness import fewshot_indices, fewshot_prefix, format_example
from gptqwen.eval.lm import rolling_windows
from gptqwen.eval.scorers import (
    aggregate,
    corpus_perplexities,
    generation_scores,
    mean_stderr,
    multiple_choice_scores,
    normalize_answer,
    token_f1,
)
from gptqwen.eval.taskspec import Task, builtin_task_names, load_task

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


# ---- the five benchmark formats --------------------------------------------------------------------
def test_hellaswag_format():
    t = load_task(FIXTURES / "hellaswag.yaml")
    doc = t.test_docs[0]
    assert t.choices(doc)[t.target_index(doc, t.choices(doc))] == "starts pulling up roofing on a roof."
    assert format_example(t, t.fewshot_docs[0]) == "Two boys kick a ball in the park. They run after it and laugh."


def test_lambada_format():
    t = load_task(FIXTURES / "lambada.yaml")
    doc = t.test_docs[0]
    assert t.text(doc).endswith("the streets were") and t.targets(doc) == ["wet"]
    assert t.fewshot_from_test  # no train split: examples come from the test split, minus the item


def test_storycloze_format():
    t = load_task(FIXTURES / "storycloze.yaml")
    doc = t.test_docs[1]
    assert t.choices(doc) == ["She was sad to find them.", "She was relieved."]
    assert t.target_index(doc, t.choices(doc)) == 1


def test_winogrande_partial_format():
    t = load_task(FIXTURES / "winogrande.yaml")
    doc = t.test_docs[1]
    assert t.uses_choice_in_context()
    assert t.text(doc, "suitcase") == "The trophy does not fit in the suitcase because the suitcase"
    assert t.continuation(doc) == "is too small."
    assert t.target_index(doc, t.choices(doc)) == 1
    assert format_example(t, t.fewshot_docs[0]) == "Anna thanked Maria because Maria had helped her."


def test_triviaqa_format():
    t = load_task(FIXTURES / "triviaqa.yaml")
    doc = t.test_docs[0]
    assert t.text(doc) == "Question: Who wrote Hamlet?\nAnswer:"
    assert t.targets(doc) == ["William Shakespeare", "Shakespeare"]
    assert t.until == ("\n", ".", ",")


# ---- few-shot sampling -----------------------------------------------------------------------------
def _mc_task(n: int = 30, sampler: str = "random") -> Task:
    docs = [{"q": f"question {i}", "choices": [f"a{i}", f"b{i}"], "label": i % 2} for i in range(n)]
    return Task(name="toy", output_type="multiple_choice", splits={"test": docs}, doc_to_text="{{q}}",
                doc_to_choice="choices", doc_to_target="label", metrics=("acc",), fewshot_sampler=sampler)


def test_fewshot_is_deterministic_by_seed_and_never_leaks():
    task = _mc_task()
    for i in range(len(task.test_docs)):
        a, b = fewshot_indices(task, i, 5, seed=1), fewshot_indices(task, i, 5, seed=1)
        assert a == b and len(set(a)) == 5
        assert i not in a  # few-shot split == test split: the item itself is excluded
        assert task.test_docs[i]["q"] + " " not in fewshot_prefix(task, i, 5, seed=1)
    assert any(fewshot_indices(task, i, 5, 1) != fewshot_indices(task, i, 5, 2) for i in range(10))
    # independent of --limit: the examples of item 3 depend only on (seed, 3)
    assert fewshot_indices(task, 3, 4, 7) == fewshot_indices(task, 3, 4, 7)


def test_fewshot_excludes_duplicates_across_splits():
    task = _mc_task(6)
    task.splits["train"] = [dict(task.test_docs[0]), {"q": "other", "choices": ["x", "y"], "label": 0}]
    task.fewshot_split = "train"
    assert fewshot_indices(task, 0, 1, seed=0) == [1]  # the copy of the test item is never shown
    with pytest.raises(UserError, match="only 1 few-shot examples"):
        fewshot_indices(task, 0, 2, seed=0)


def test_first_n_sampler_and_too_many_shots():
    task = _mc_task(5, sampler="first_n")
    assert fewshot_indices(task, 0, 3, seed=9) == [1, 2, 3]
    with pytest.raises(UserError, match="use --shots 4 or fewer"):
        fewshot_indices(task, 0, 5, seed=0)


def test_prompt_layout():
    task = load_task(FIXTURES / "hellaswag.yaml")
    task.description = "Pick the ending."
    prompt = fewshot_prefix(task, 0, 2, seed=0)
    parts = prompt.split("\n\n")
    assert parts[0] == "Pick the ending." and len(parts) == 4 and parts[-1] == ""


# ---- malformed tasks ----------------------------------------------------------------------------
def _write(tmp_path, yaml_text, data=None):
    (tmp_path / "d.jsonl").write_text(data if data is not None else '{"text": "a b", "label": 0, "ch": ["x", "y"]}\n')
    p = tmp_path / "t.yaml"
    p.write_text(yaml_text)
    return p


@pytest.mark.parametrize("yaml_text, data, message", [
    ("output_type: [unclosed", None, "not valid YAML"),
    ("- a list", None, "must be a YAML mapping"),
    ("output_type: cloze\ndata_files: d.jsonl\ndoc_to_target: text\nbogus: 1", None, "unknown setting 'bogus'"),
    ("output_type: ranking\ndata_files: d.jsonl", None, "output_type must be one of"),
    ("output_type: cloze\ndata_files: missing.jsonl\ndoc_to_target: text", None, "does not exist"),
    ("output_type: cloze\ndata_files: d.jsonl\ndoc_to_target: text", "{not json}\n", r"d.jsonl:1: malformed JSON"),
    ("output_type: cloze\ndata_files: d.jsonl\ndoc_to_target: text", "[1, 2]\n", "expected a JSON object"),
    ("output_type: cloze\ndata_files: d.jsonl\ndoc_to_target: text", "\n\n", "has no rows"),
    ("output_type: cloze\ndata_files: d.jsonl\ndoc_to_text: '{{nope}}'\ndoc_to_target: text", None, "'nope' is undefined"),
    ("output_type: cloze\ndata_files: d.jsonl\ndoc_to_target: text\nmetrics: [acc, bleu]", None, "unknown metric 'bleu'"),
    ("output_type: multiple_choice\ndata_files: d.jsonl\ndoc_to_target: label", None, "need doc_to_choice"),
    ("output_type: multiple_choice\ndata_files: d.jsonl\ndoc_to_choice: text\ndoc_to_target: label", None,
     "list of at least two strings"),
    ("output_type: multiple_choice\ndata_files: d.jsonl\ndoc_to_choice: ch\ndoc_to_target: '{{label + 5}}'", None,
     "out of range"),
    ("output_type: multiple_choice\ndata_files: d.jsonl\ndoc_to_choice: ch\ndoc_to_target: label\n"
     "doc_to_text: '{{choice}} x'", None, "needs doc_to_continuation"),
    ("output_type: cloze\ndata_files: d.jsonl\ngenerator: {name: copy}\ndoc_to_target: text", None, "exactly one of"),
    ("output_type: cloze\ngenerator: {name: sudoku}\ndoc_to_target: completion", None, "unknown generator"),
    ("output_type: cloze\ndata_files: d.jsonl\ndoc_to_target: text\nfewshot_split: dev", None, "fewshot split 'dev'"),
])
def test_malformed_tasks(tmp_path, yaml_text, data, message):
    with pytest.raises(UserError, match=message):
        load_task(_write(tmp_path, yaml_text, data))


def test_unknown_builtin_task_suggests():
    with pytest.raises(UserError, match="Did you mean: copy"):
        load_task("cop")


# ---- synthetic probes --------------------------------------------------------------------------
def test_builtin_tasks_load_and_are_fixed():
    names = builtin_task_names()
    assert {"arithmetic_2d_plus", "arithmetic_5d_minus", "arithmetic_2d_times", "unscramble_cycle",
            "unscramble_reversal", "substitution_random", "copy", "shakespeare"} <= set(names)
    a, b = load_task("arithmetic_3d_minus"), load_task("arithmetic_3d_minus")
    assert a.test_docs == b.test_docs and len(a.test_docs) == 500
    contexts = [d["context"] for split in a.splits.values() for d in split]
    assert len(set(contexts)) == len(contexts)  # test and few-shot items never coincide


@pytest.mark.parametrize("op", ["+", "-", "*"])
def test_arithmetic_answers(op):
    rng = random.Random(0)
    for _ in range(50):
        r = synthetic.arithmetic(rng, op=op, digits=3)
        ctx, answer = r["context"], r["completion"]
        a, word, b = ctx.removeprefix("Q: What is ").split("?")[0].split()
        assert 100 <= int(a) <= 999 and int(answer) == {"+": int(a) + int(b), "-": int(a) - int(b),
                                                          "*": int(a) * int(b)}[op]


@pytest.mark.parametrize("kind", ["cycle", "anagram1", "anagram2", "random_insertion", "reversal"])
def test_unscramble_is_a_scramble_of_the_word(kind):
    rng = random.Random(1)
    for _ in range(30):
        r = synthetic.unscramble(rng, kind=kind)
        ctx, word = r["context"], r["completion"]
        scrambled, word = ctx.removesuffix(" ="), word.strip()
        assert scrambled != word
        if kind == "random_insertion":
            assert "".join(c for c in scrambled if c.isalpha()) == word
        else:
            assert sorted(scrambled) == sorted(word)
        if kind == "reversal":
            assert scrambled == word[::-1]
        if kind == "cycle":
            assert scrambled in word + word
        if kind.startswith("anagram"):
            keep = 1 if kind == "anagram1" else 2
            assert scrambled[:keep] == word[:keep] and scrambled[-keep:] == word[-keep:]


def test_substitution_is_one_fixed_mapping():
    rng = random.Random(2)
    mapping = {}
    for _ in range(40):
        r = synthetic.substitution(rng, cipher="random", cipher_seed=3)
        ctx, coded = r["context"], r["completion"]
        for p, c in zip(ctx.removesuffix(" ->"), coded.strip()):
            assert mapping.setdefault(p, c) == c
    assert synthetic.substitution(random.Random(0), cipher="shift", shift=1)["completion"] != ""
    with pytest.raises(UserError, match="cipher must be"):
        synthetic.substitution(rng, cipher="rot13")


def test_copy_choice_records():
    task = load_task("copy_choice")
    for doc in task.test_docs[:20]:
        choices = task.choices(doc)
        assert len(choices) == 4 and doc["context"] == f"Word: {choices[task.target_index(doc, choices)]}\nCopy:"


# ---- scorers -------------------------------------------------------------------------------------
def test_multiple_choice_normalisations():
    # choice 0 wins raw, choice 1 per character, choice 2 per token, choice 1 against the unconditional
    lls, choices, ntok = [-4.0, -6.0, -5.0], ["ab", "abcdefgh", "abc"], [2, 4, 5]
    s = multiple_choice_scores(0, lls, choices, ntok, uncond_lls=[-1.0, -9.0, -5.0])
    assert s == {"acc": 1.0, "acc_norm": 0.0, "acc_norm_tokens": 0.0, "acc_uncond": 0.0}
    assert multiple_choice_scores(1, lls, choices, ntok, [-1.0, -9.0, -5.0])["acc_uncond"] == 1.0
    assert multiple_choice_scores(1, lls, choices, ntok)["acc_norm"] == 1.0
    assert multiple_choice_scores(2, lls, choices, ntok)["acc_norm_tokens"] == 1.0
    assert multiple_choice_scores(0, [-1.0, -1.0], ["a", "b"], [1, 1])["acc"] == 1.0  # ties: first, like argmax


def test_generation_normalisation_and_f1():
    assert normalize_answer("The  Shakespeare!") == "shakespeare"
    assert normalize_answer("-12") != normalize_answer("12")
    assert generation_scores(" shakespeare.", ["William Shakespeare", "Shakespeare"])["exact_match"] == 1.0
    assert token_f1("william shakespeare wrote", "William Shakespeare") == pytest.approx(0.8)
    assert generation_scores("Paris", ["London"]) == {"exact_match": 0.0, "f1": 0.0}


def test_stderr_matches_lm_eval():
    lm_eval_mean_stderr = pytest.importorskip("lm_eval.api.metrics").mean_stderr

    xs = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    assert mean_stderr(xs) == pytest.approx(lm_eval_mean_stderr(xs), rel=1e-12)
    out = aggregate("cloze", [{"acc": 1.0, "ll": -1.0}, {"acc": 0.0, "ll": -3.0}], ["acc", "perplexity"])
    assert out["perplexity"]["value"] == pytest.approx(math.exp(2.0))


def test_corpus_perplexities():
    items = [(-10.0, 5, 2, 8), (-6.0, 3, 1, 8)]
    p = corpus_perplexities(items)
    assert p["token_perplexity"] == pytest.approx(math.exp(2.0))
    assert p["bits_per_byte"] == pytest.approx(1.0 / math.log(2))
    assert p["word_perplexity"] == pytest.approx(math.exp(16 / 3))


# ---- rolling windows -----------------------------------------------------------------------------
@pytest.mark.parametrize("n, max_len, stride", [(1, 4, None), (4, 4, None), (5, 4, None), (37, 8, None),
                                                 (37, 8, 3), (37, 8, 1), (100, 16, 8), (9, 16, 5)])
def test_rolling_windows_score_each_token_once(n, max_len, stride):
    scored = []
    windows = rolling_windows(n, max_len, stride)
    for start, end, k in windows:
        assert 0 <= start < end <= n and end - start <= max_len and 1 <= k <= end - start
        scored += range(end - k + 1, end + 1)  # positions in [prefix] + tokens
    assert scored == list(range(1, n + 1))
    for start, end, _ in windows[1:]:  # later windows keep a full context when there is one
        assert end - start == min(max_len, end)


def test_rolling_windows_bad_stride():
    with pytest.raises(UserError, match="stride"):
        rolling_windows(10, 4, 5)


def test_fixture_files_are_valid_jsonl():
    for p in FIXTURES.glob("*.jsonl"):
        for line in p.read_text().splitlines():
            assert isinstance(json.loads(line), dict)
