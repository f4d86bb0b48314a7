"""Domain classifier (hashed n-gram logistic regression, rules) and mixing to target weights."""

import numpy as np
import pytest

from gptqwen.cli import main
from gptqwen.data.io import read_documents, write_documents
from gptqwen.data.mixing import HashedNgramClassifier, RuleClassifier, plan_mixture
from gptqwen.data.pipeline import run_pipeline
from gptqwen.errors import UserError

TOPICS = {
    "code": "def function return import class variable python loop array compile".split(),
    "math": "theorem proof integral equation prime number lemma derivative matrix sum".split(),
    "shop": "buy shop sale price discount shipping cart order deal store".split(),
}
COMMON = "the a of and to is in that it with for on this be".split()


def make(domain: str, n: int, rng: np.random.Generator) -> list[str]:
    return [" ".join(rng.choice(TOPICS[domain] + COMMON * 2, size=40)) for _ in range(n)]


def test_classifier_learns_domains_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    texts, labels = [], []
    for d in TOPICS:
        texts += make(d, 120, rng)
        labels += [d] * 120
    clf = HashedNgramClassifier.train(texts, labels, dim=1 << 14)
    test_texts, test_labels = [], []
    for d in TOPICS:
        test_texts += make(d, 40, rng)
        test_labels += [d] * 40
    pred, prob = clf.predict(test_texts)
    assert np.mean(np.array(pred) == np.array(test_labels)) >= 0.95 and prob.min() > 0.34
    clf.save(tmp_path / "m.npz")
    again = HashedNgramClassifier.load(tmp_path / "m.npz")
    assert again.predict(test_texts)[0] == pred
    with pytest.raises(UserError, match="cannot load"):
        HashedNgramClassifier.load(tmp_path / "nope.npz")


def test_rule_classifier():
    labels, _ = RuleClassifier({"code": [r"\bdef\b", "import"], "math": ["theorem"]}).predict(
        ["def f(): import os", "a theorem", "nothing here"])
    assert labels == ["code", "math", "other"]


def test_mixing_hits_target_weights_within_two_percent(tmp_path):
    rng = np.random.default_rng(1)
    docs = [{"text": t, "domain": d} for d, n in (("code", 900), ("math", 350), ("shop", 150)) for t in make(d, n, rng)]
    rng.shuffle(docs)
    write_documents(tmp_path / "in.jsonl", docs)
    weights = {"code": 0.2, "math": 0.3, "shop": 0.5}
    summary = run_pipeline({"input": str(tmp_path / "in.jsonl"), "output": str(tmp_path / "w"), "shard_docs": 200,
                            "workers": 1, "steps": [{"mix": {"weights": weights, "total": 1000}}]}, log=lambda m: None)
    out = list(read_documents(summary["final_shards"], allow_empty=True))
    assert abs(len(out) - 1000) <= 3 * 7  # within one document per domain per shard
    for d, w in weights.items():
        share = sum(doc["domain"] == d for doc in out) / len(out)
        assert abs(share - w) <= 0.02
        assert summary["steps"][-1]["mixture"]["realised"][d] == pytest.approx(share, abs=1e-4)


def test_classify_then_mix_from_the_cli(tmp_path, capsys):
    rng = np.random.default_rng(2)
    train = [{"text": t, "label": d} for d in TOPICS for t in make(d, 60, rng)]
    write_documents(tmp_path / "labelled.jsonl", train)
    assert main(["data", "classify", "--train", str(tmp_path / "labelled.jsonl"), "--model", str(tmp_path / "m.npz")]) == 0
    raw = [{"text": t} for d, n in (("code", 120), ("shop", 40)) for t in make(d, n, rng)]
    write_documents(tmp_path / "raw.jsonl", raw)
    assert main(["data", "classify", str(tmp_path / "raw.jsonl"), "--model", str(tmp_path / "m.npz"),
                 "-o", str(tmp_path / "lab.jsonl"), "--workers", "1"]) == 0
    assert main(["data", "mix", str(tmp_path / "lab.jsonl"), "--weights", "code=0.5,shop=0.5",
                 "-o", str(tmp_path / "mix.jsonl"), "--workers", "1"]) == 0
    mixed = [d["domain"] for d in read_documents(tmp_path / "mix.jsonl")]
    assert abs(mixed.count("shop") / len(mixed) - 0.5) <= 0.02
    assert "realised" in capsys.readouterr().out


def test_bad_mix_settings():
    with pytest.raises(UserError, match="no documents"):
        plan_mixture({"code": 10}, {"code": 0.5, "web": 0.5})
    with pytest.raises(UserError, match="non-negative"):
        plan_mixture({"code": 10}, {"code": -1})
    with pytest.raises(UserError, match="positive number"):
        plan_mixture({"code": 10}, {"code": 1}, total=0)
