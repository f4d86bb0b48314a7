"""Decontamination: GPT-3 13-gram cutting, Qwen2.5 LCS rule, dirty-eval report, `gptqwen data decontam`."""

import json
import random

import numpy as np
import pytest

from gptqwen.data import decontam as dc
from gptqwen.data.io import read_documents, write_documents
from gptqwen.data.pipeline import run_pipeline

RND = random.Random(0)
VOCAB = [a + b + c + d for a in "bcdfgklmnprst" for b in "aeiou" for c in "bdgklmnprt" for d in "aeiou"]


def prose(n_words: int) -> str:
    return " ".join(RND.choice(VOCAB) for _ in range(n_words))


EVAL = [prose(30) for _ in range(3)]


def eval_file(tmp_path):
    path = tmp_path / "quiz.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "answer": "yes"}) + "\n" for i, q in enumerate(EVAL)))
    return path


def test_lcs_matches_dynamic_programming():
    rnd = random.Random(1)
    for _ in range(200):
        a = [rnd.randint(0, 4) for _ in range(rnd.randint(0, 30))]
        b = [rnd.randint(0, 4) for _ in range(rnd.randint(0, 60))]
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
        assert dc.lcs_length(a, b) == table[-1][-1]


def test_lcs_rule_thresholds():
    item = [f"t{i}" for i in range(30)]
    noise = [f"n{i}" for i in range(40)]

    def seq_with(k):  # the first k item tokens in order, interleaved with noise
        return [tok for pair in zip(item[:k], noise) for tok in pair]

    assert not dc.lcs_contaminated(seq_with(17), item)  # 17 < 0.6 * 30
    assert dc.lcs_contaminated(seq_with(18), item)
    short = item[:20]
    assert not dc.lcs_contaminated(seq_with(12), short)  # 12 < 13 tokens
    assert dc.lcs_contaminated(seq_with(13), short)  # 13 >= 13 and >= 0.6 * 20
    checker = dc.LcsChecker([item])
    assert checker.first_match(noise + seq_with(18) + noise) == 0
    assert checker.first_match(noise * 3) is None


def test_13gram_cut_removes_overlap_and_nothing_else(tmp_path):
    words = EVAL[0].split()
    gram13 = " ".join(words[5:18])
    gram12 = " ".join(words[5:17])
    docs = [
        {"id": "cut", "text": prose(120) + " " + gram13.upper() + ", " + prose(120)},  # case/punct don't hide it
        {"id": "short", "text": prose(10) + " " + gram13 + " " + prose(10)},  # pieces < 200 chars
        {"id": "shattered", "text": " ".join(prose(150) + " " + gram13 for _ in range(11)) + " " + prose(150)},
        {"id": "twelve", "text": prose(120) + " " + gram12 + " " + prose(120)},  # 12-gram: not contamination
    ] + [{"id": f"clean{i}", "text": prose(150)} for i in range(5)]
    write_documents(tmp_path / "train.jsonl", docs)
    summary = run_pipeline({"input": str(tmp_path / "train.jsonl"), "output": str(tmp_path / "work"), "workers": 1,
                            "steps": [{"decontaminate": {"eval": [str(eval_file(tmp_path))]}}]}, log=lambda m: None)
    out = list(read_documents(summary["final_shards"], allow_empty=True))
    by_id = {d["id"]: d["text"] for d in out}
    original = {d["id"]: d["text"] for d in docs}
    assert {"cut#0", "cut#1"} <= set(by_id) and "short" not in by_id and "shattered" not in by_id
    for piece in (by_id["cut#0"], by_id["cut#1"]):
        assert gram13 not in piece.lower() and len(piece) >= 200 and piece in original["cut"]
    assert len(by_id["cut#0"]) <= original["cut"].index(gram13.upper()) - 200 + 1
    for key in ["twelve"] + [f"clean{i}" for i in range(5)]:
        assert by_id[key] == original[key]  # untouched
    report = summary["steps"][-1]
    assert report["removed"] == {"decontam_all_cut": 1, "decontam_too_many_pieces": 1}
    dirty = report["dirty_eval"]["sets"]["quiz"]
    assert dirty["dirty_ids"] == ["q0"] and dirty["clean"] == 2 and dirty["n"] == 13


def test_frequent_ngrams_are_ignored(tmp_path):
    gram = " ".join(EVAL[1].split()[:13])
    docs = [{"text": prose(100) + " " + gram + " " + prose(100)} for _ in range(11)]
    write_documents(tmp_path / "train.jsonl", docs)
    summary = run_pipeline({"input": str(tmp_path / "train.jsonl"), "output": str(tmp_path / "w"), "workers": 1,
                            "steps": [{"decontaminate": {"eval": [str(eval_file(tmp_path))]}}]}, log=lambda m: None)
    assert summary["steps"][-1]["docs_out"] == 11 and summary["steps"][-1]["modified"] == 0
    assert summary["steps"][-1]["dirty_eval"]["ignored_frequent_ngrams"] == 1


def test_dirty_report_uses_fifth_percentile_n():
    items = [dc.EvalItem("s", i, str(i), prose(n)) for i, n in enumerate([9, 10] + [40] * 19)]
    assert dc.report_n(items) == {"s": 10}  # 5th percentile of 21 lengths = the 2nd smallest
    words = items[2].text.split()
    train = [prose(50) + " " + " ".join(words[3:13]) + " " + prose(50)]
    matched = dc.scan_matches(train, {10: dc.NgramIndex.build(items, 10)})[10]
    report = dc.dirty_report(items, {10: np.array(list(matched), dtype=np.uint64)}, {"s": 10})
    assert report["s"]["dirty_ids"] == ["2"] and report["s"]["clean"] == 20


def test_bad_eval_inputs(tmp_path):
    from gptqwen.errors import UserError

    with pytest.raises(UserError, match="does not exist"):
        run_pipeline({"input": str(eval_file(tmp_path)), "output": str(tmp_path / "w"),
                      "steps": [{"decontaminate": {"eval": [str(tmp_path / "missing.jsonl")]}}]})
    with pytest.raises(UserError, match="needs eval"):
        run_pipeline({"input": str(eval_file(tmp_path)), "output": str(tmp_path / "w"), "steps": ["decontaminate"]})


@pytest.mark.parametrize("tokenizer", [None, "qwen"])
def test_lcs_step_drops_paraphrased_leak_only(tmp_path, tokenizer):
    words = EVAL[2].split()
    leak = " ".join(w + " " + RND.choice(VOCAB) for w in words[:24])  # 24 of 30 item words, interleaved
    docs = [{"id": "leak", "text": prose(40) + " " + leak + " " + prose(40)}] + [{"id": f"c{i}", "text": prose(80)} for i in range(4)]
    write_documents(tmp_path / "train.jsonl", docs)
    summary = run_pipeline({"input": str(tmp_path / "train.jsonl"), "output": str(tmp_path / "w"), "workers": 1,
                            "steps": [{"decontaminate": {"eval": [str(eval_file(tmp_path))], "method": "lcs",
                                                         "lcs_tokenizer": tokenizer}}]}, log=lambda m: None)
    kept = [d["id"] for d in read_documents(summary["final_shards"], allow_empty=True)]
    assert kept == ["c0", "c1", "c2", "c3"] and summary["steps"][-1]["removed"] == {"decontam_lcs": 1}


def test_cli_decontam_cuts_drops_and_reports(tmp_path, capsys):
    from gptqwen.cli import main

    gram13 = " ".join(EVAL[2].split()[3:16])
    docs = [{"id": "clean0", "text": prose(150)}, {"id": "cut", "text": prose(120) + " " + gram13 + " " + prose(120)},
            {"id": "copied", "text": EVAL[1]}, {"id": "clean1", "text": prose(150)}]
    write_documents(tmp_path / "train.jsonl", docs)
    out = tmp_path / "clean.jsonl"
    assert main(["data", "decontam", str(tmp_path / "train.jsonl"), "--eval", str(eval_file(tmp_path)), "-o", str(out),
                 "--workers", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["steps"][-1]
    kept = {d["id"]: d["text"] for d in read_documents([out])}
    original = {d["id"]: d["text"] for d in docs}
    # the 13-gram and 200 characters either side are cut out of `cut`; the two long pieces stay, in order
    assert list(kept) == ["clean0", "cut#0", "cut#1", "clean1"]
    start = original["cut"].index(gram13)
    assert kept["cut#0"] == original["cut"][:len(kept["cut#0"])] and len(kept["cut#0"]) <= start - 200
    assert original["cut"].endswith(kept["cut#1"]) and len(kept["cut#1"]) <= len(original["cut"]) - start - len(gram13) - 200
    assert kept["clean0"] == original["clean0"] and kept["clean1"] == original["clean1"]
    assert report["removed"] == {"decontam_all_cut": 1} and report["modified"] == 1
    assert report["dirty_eval"]["sets"]["quiz"]["dirty_ids"] == ["q1", "q2"]
