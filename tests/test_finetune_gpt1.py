"""GPT-1 task-aware transfer: token layouts, the head on the extract token, L = L_task + λ·L_LM, CLI."""

import json
import random

import pytest
import torch
import torch.nn.functional as F

from gptqwen.config import Config
from gptqwen.errors import UserError
from gptqwen.finetune import gpt1
from gptqwen.finetune.synthetic import demo_tokenizer, entailment_examples
from gptqwen.model import Transformer

TT = gpt1.TaskTokens(start=900, delim=901, extract=902)


@pytest.fixture(scope="module")
def tok():
    return demo_tokenizer(400)


def test_layouts_exact():
    s, d, e = 900, 901, 902
    assert gpt1.transform("classification", [[1, 2, 3]], TT) == [[s, 1, 2, 3, e]]
    assert gpt1.transform("entailment", [[1, 2], [3]], TT) == [[s, 1, 2, d, 3, e]]
    assert gpt1.transform("similarity", [[1, 2], [3]], TT) == [[s, 1, 2, d, 3, e], [s, 3, d, 1, 2, e]]
    assert gpt1.transform("multiple-choice", [[1], [5, 6], [7]], TT) == [[s, 1, d, 5, 6, e], [s, 1, d, 7, e]]


def test_rows_encode_to_layout(tok):
    row = {"premise": "the king loves the queen.", "hypothesis": "the queen hates the king.", "label": "neutral"}
    [ex], dropped = gpt1.encode_rows("entailment", [(1, row)], tok, TT, ["entailment", "neutral"], 64, "x")
    p, h = tok.encode(row["premise"]), tok.encode(row["hypothesis"])
    assert ex.sequences == [[900, *p, 901, *h, 902]] and ex.label == 1 and dropped == []
    mc = {"context": "who rules?", "choices": ["the king", "the fool", "nobody"], "label": 2}
    [ex], _ = gpt1.encode_rows("multiple-choice", [(1, mc)], tok, TT, [], 64, "x")
    c = tok.encode(mc["context"])
    assert ex.sequences == [[900, *c, 901, *tok.encode(a), 902] for a in mc["choices"]] and ex.label == 2


def _model(name="gpt1-tiny"):
    torch.manual_seed(0)
    m = Transformer(Config.from_name(name))
    tt = gpt1.add_task_tokens(m)
    return m.eval(), tt


def test_add_task_tokens_keeps_old_rows_and_tying():
    for name in ("gpt1-tiny", "qwen2-tiny"):
        torch.manual_seed(0)
        m = Transformer(Config.from_name(name)).eval()
        ids = torch.randint(0, 512, (2, 9))
        before = m(ids).logits
        old_emb = m.wte.weight.detach().clone()
        tt = gpt1.add_task_tokens(m)
        assert (tt.start, tt.delim, tt.extract) == (512, 513, 514) and m.config.vocab_size == 515
        assert torch.equal(m.wte.weight[:512], old_emb)
        assert (m.lm_head.weight is m.wte.weight) == m.config.tie_embeddings
        after = m(ids).logits
        assert after.shape[-1] == 515 and torch.equal(after[..., :512], before)


def _batch(task, seqs_per_example, labels):
    exs = [gpt1.TaskExample(s, l) for s, l in zip(seqs_per_example, labels)]
    return gpt1.make_batch(exs)


def test_head_reads_extract_token_and_similarity_sums_orderings():
    m, tt = _model()
    head = gpt1.TaskHead(m.config.n_embd, 2, dropout=0.0)
    a, b = [5, 6, 7], [8, 9]
    seqs = gpt1.transform("similarity", [a, b], tt)
    batch = _batch("similarity", [seqs], [1])
    with torch.no_grad():
        logits = gpt1.task_forward(m, head, "similarity", batch, lm_coef=0.0)["logits"]
        h1 = m(torch.tensor([seqs[0]]), return_hidden=True).hidden[0, -1]
        h2 = m(torch.tensor([seqs[1]]), return_hidden=True).hidden[0, -1]
    torch.testing.assert_close(logits[0], head(h1 + h2), atol=1e-5, rtol=1e-5)


def test_multiple_choice_softmax_over_answers_with_ragged_choices():
    m, tt = _model()
    head = gpt1.TaskHead(m.config.n_embd, 1, dropout=0.0)
    ex1 = gpt1.transform("multiple-choice", [[5, 6], [7], [8, 9], [10]], tt)  # 3 answers
    ex2 = gpt1.transform("multiple-choice", [[11], [12], [13]], tt)  # 2 answers
    batch = _batch("multiple-choice", [ex1, ex2], [2, 0])
    with torch.no_grad():
        res = gpt1.task_forward(m, head, "multiple-choice", batch, lm_coef=0.0)
        scores = [head(m(torch.tensor([s]), return_hidden=True).hidden[0, -1])[0] for s in ex1]
    assert res["logits"].shape == (2, 3) and res["logits"][1, 2] == float("-inf")
    torch.testing.assert_close(res["logits"][0], torch.stack(scores), atol=1e-5, rtol=1e-5)
    want = F.cross_entropy(res["logits"], torch.tensor([2, 0]))
    torch.testing.assert_close(res["task_loss"], want)


def test_aux_lm_loss_weight_follows_formula():
    m, tt = _model()
    head = gpt1.TaskHead(m.config.n_embd, 3, dropout=0.0)
    seqs = [gpt1.transform("entailment", [[5, 6, 7], [8, 9]], tt), gpt1.transform("entailment", [[10], [11, 12, 13]], tt)]
    batch = _batch("entailment", seqs, [0, 2])
    res = {lam: gpt1.task_forward(m, head, "entailment", batch, lm_coef=lam) for lam in (0.0, 0.5, 2.0)}
    lm = res[0.5]["lm_loss"]
    # L_LM is the mean next-token CE over each sequence (padding excluded)
    flat = [(s[t], s[t + 1]) for ex in seqs for s in ex for t in range(len(s) - 1)]
    ce = []
    for ex in seqs:
        for s in ex:
            logits = m(torch.tensor([s])).logits[0, :-1]
            ce.append(F.cross_entropy(logits, torch.tensor(s[1:]), reduction="sum"))
    torch.testing.assert_close(lm, torch.stack(ce).sum() / len(flat), atol=1e-5, rtol=1e-5)
    for lam in (0.5, 2.0):
        r = res[lam]
        torch.testing.assert_close(r["loss"], r["task_loss"] + lam * r["lm_loss"], atol=0, rtol=0)
        torch.testing.assert_close(r["loss"] - res[0.0]["loss"], lam * lm, atol=1e-6, rtol=1e-6)


def test_bad_inputs(tok, tmp_path):
    with pytest.raises(UserError, match="unknown task type"):
        gpt1.check_task("sentiment")
    rows = [(1, {"premise": "a", "label": "neutral"})]
    with pytest.raises(UserError, match="missing field 'hypothesis'"):
        gpt1.encode_rows("entailment", rows, tok, TT, ["neutral", "entailment"], 64, "f")
    rows = [(3, {"premise": "a", "hypothesis": "b", "label": "maybe"})]
    with pytest.raises(UserError, match="f:3: label 'maybe' is not in the label set"):
        gpt1.encode_rows("entailment", rows, tok, TT, ["neutral", "entailment"], 64, "f")
    rows = [(1, {"context": "a", "choices": ["x", "y"], "label": 2})]
    with pytest.raises(UserError, match="index of the right choice"):
        gpt1.encode_rows("multiple-choice", rows, tok, TT, [], 64, "f")
    with pytest.raises(UserError, match="at least two different labels"):
        gpt1.collect_labels("classification", [(1, {"text": "a", "label": 1}), (2, {"text": "b", "label": 1})], "f")
    long = [(1, {"text": "word " * 100, "label": "a"}), (2, {"text": "short", "label": "b"})]
    kept, dropped = gpt1.encode_rows("classification", long, tok, TT, ["a", "b"], 32, "f", too_long="drop")
    assert len(kept) == 1 and dropped == [1]
    kept, _ = gpt1.encode_rows("classification", long, tok, TT, ["a", "b"], 32, "f", too_long="truncate")
    assert [e.truncated for e in kept] == [True, False]  # reported, not silently cut
    assert len(kept[0].sequences[0]) == 32 and kept[0].sequences[0][0] == 900 and kept[0].sequences[0][-1] == 902
    with pytest.raises(UserError, match="more than the context of 32"):
        gpt1.encode_rows("classification", long, tok, TT, ["a", "b"], 32, "f", too_long="error")


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_cli_finetune_then_predict(tok, tmp_path, capsys):
    from gptqwen.cli import main

    tok.save(tmp_path / "tok")
    train = _write(tmp_path / "train.jsonl", entailment_examples(48, seed=1))
    dev = _write(tmp_path / "dev.jsonl", entailment_examples(16, seed=2))
    out = tmp_path / "ft"
    assert main(["finetune", "--task", "entailment", "--data", train, "--eval", dev, "--from", "gpt1-tiny",
                 "--tokenizer", str(tmp_path / "tok"), "--out", str(out), "--epochs", "1", "--batch-size", "16",
                 "--lr", "1e-3", "--threads", "1", "--json"]) == 0
    dev_accuracy = json.loads(capsys.readouterr().out)["eval_accuracy"]
    for f in ("config.json", "model.safetensors", "task_head/head.safetensors", "task.json", "tokenizer.json", "metrics.jsonl"):
        assert (out / f).exists(), f
    spec = json.loads((out / "task.json").read_text())
    assert spec["task"] == "entailment" and spec["labels"] == ["contradiction", "entailment", "neutral"]
    assert main(["predict", "--model", str(out), "--data", dev, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    gold = [r["label"] for r in entailment_examples(16, seed=2)]
    assert [p["line"] for p in res["predictions"]] == list(range(1, 17))
    # predict reloads the saved model and head: it scores the dev file as the trainer did at its end
    assert res["accuracy"] == sum(p["prediction"] == g for p, g in zip(res["predictions"], gold)) / 16 == dev_accuracy
    assert all(p["prediction"] in spec["labels"] and abs(sum(p["probabilities"]) - 1) < 1e-4 for p in res["predictions"])


def test_cli_reports_every_row_over_the_context_and_rejects_unknown_labels(tok, tmp_path, capsys):
    from gptqwen.cli import main

    tok.save(tmp_path / "tok")
    rows = entailment_examples(20, seed=1)
    rows[3]["premise"] = "the king loves the queen and " * 12 + "the fool trusts the nurse."
    train = _write(tmp_path / "train.jsonl", rows)
    base = ["--task", "entailment", "--from", "gpt1-tiny", "--tokenizer", str(tmp_path / "tok"), "--epochs", "0.1",
            "--threads", "1", "--max-len", "48"]
    assert main(["finetune", *base, "--data", train, "--eval", train, "--out", str(tmp_path / "ft")]) == 0
    out = capsys.readouterr().out
    assert "dropped 1 training rows longer than 48 tokens (lines [4])" in out
    assert "dropped 1 eval rows longer than 48 tokens (lines [4])" in out
    summary = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    assert summary["dropped_too_long"] == summary["eval_dropped_too_long"] == 1 and summary["train_examples"] == 19
    assert main(["predict", "--model", str(tmp_path / "ft"), "--data", train]) == 0
    assert "truncated 1 rows to the context (start of the text cut): [4]" in capsys.readouterr().out
    assert main(["predict", "--model", str(tmp_path / "ft"), "--data", train, "--too-long", "drop", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["skipped_lines"] == [4] and len(res["predictions"]) == 19 and 4 not in [p["line"] for p in res["predictions"]]
    # a label outside the set: from --labels for the training file, from the training file for --eval
    assert main(["finetune", *base, "--data", train, "--labels", "entailment,neutral", "--out", str(tmp_path / "x")]) == 2
    assert "label 'contradiction' is not in the label set" in capsys.readouterr().err
    dev = _write(tmp_path / "dev.jsonl", [{"premise": "a", "hypothesis": "b", "label": "maybe"}])
    assert main(["finetune", *base, "--data", train, "--eval", dev, "--out", str(tmp_path / "x")]) == 2
    assert "dev.jsonl:1: label 'maybe' is not in the label set" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    from gptqwen.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "x"}\n{not json}\n')
    base = ["finetune", "--from", "gpt1-tiny", "--out", str(tmp_path / "o")]
    assert main([*base, "--task", "classification", "--data", str(bad)]) == 2
    assert "bad.jsonl:2: malformed JSON" in capsys.readouterr().err
    assert main([*base, "--task", "classification", "--data", str(tmp_path / "missing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([*base, "--task", "sentiment", "--data", str(bad)]) == 2
    assert "task.task = 'sentiment' is out of range; it must be one of classification" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path), "--data", str(bad)]) == 2
    assert "not a fine-tuned task model" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---- learning and the from-scratch baseline ----------------------------------------------------------------
ROYAL, COMMON = ["king", "queen", "prince", "duke"], ["fool", "nurse", "knight", "lady"]


def _separable_rows(n: int, seed: int) -> list[dict]:
    """'the A loves the B.': royal if both people are royal, common if neither is (each name is one token)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = ("royal", "common")[i % 2]
        people = ROYAL if label == "royal" else COMMON
        rows.append({"text": f"the {rng.choice(people)} {rng.choice(['loves', 'hates', 'serves'])} the "
                             f"{rng.choice(people)}.", "label": label})
    return rows


def test_finetune_learns_a_separable_task(tok, tmp_path, capsys):
    """Every piece of the transfer path (task tokens, extract position, head, L_task + λ·L_LM, optimizer) has to
    work for this to reach the dev set: the chance level is 0.5. (A pre-norm base: a random post-norm one like
    gpt1-tiny needs several times the steps before the task loss moves.)"""
    from gptqwen.cli import main

    tok.save(tmp_path / "tok")
    train = _write(tmp_path / "train.jsonl", _separable_rows(96, seed=1))
    dev = _write(tmp_path / "dev.jsonl", _separable_rows(64, seed=2))
    assert main(["finetune", "--task", "classification", "--data", train, "--eval", dev, "--from", "qwen2-tiny",
                 "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "ft"), "--epochs", "4",
                 "--batch-size", "16", "--lr", "1e-3", "--threads", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 24 and summary["labels"] == ["common", "royal"]
    assert summary["eval_accuracy"] >= 0.9, summary


def test_from_scratch_reinitialises_every_weight(tok, tmp_path, monkeypatch, capsys):
    """`--from-scratch` keeps the architecture and tokenizer of --from but none of its weights; without it the
    run starts from exactly those weights."""
    from gptqwen.cli import main
    from gptqwen.finetune import transfer

    torch.manual_seed(3)
    pretrained = Transformer(Config.from_name("qwen2-tiny"))
    with torch.no_grad():
        for p in pretrained.parameters():  # unlike any initialisation, norm gains and zero biases included
            p.normal_(0.5, 0.3)
    pretrained.save_pretrained(tmp_path / "base")
    tok.save(tmp_path / "base")
    want = {k: v.clone() for k, v in pretrained.named_parameters()}
    started = []  # the weights each run starts from, as load_base hands them over

    def spy(*args, **kwargs):
        model, t = load_base(*args, **kwargs)
        started.append({k: v.detach().clone() for k, v in model.named_parameters()})
        return model, t

    load_base = transfer.load_base
    monkeypatch.setattr(transfer, "load_base", spy)
    train = _write(tmp_path / "train.jsonl", _separable_rows(8, seed=1))
    for extra in ([], ["--from-scratch"]):
        assert main(["finetune", "--task", "classification", "--data", train, "--from", str(tmp_path / "base"),
                     "--out", str(tmp_path / f"ft{len(extra)}"), "--max-steps", "1", "--threads", "1", "--json",
                     *extra]) == 0
        assert json.loads(capsys.readouterr().out)["from_scratch"] == bool(extra)
    pretrained_start, scratch_start = started
    assert set(scratch_start) == set(want) and all(torch.equal(pretrained_start[k], want[k]) for k in want)
    same = [k for k in want if torch.equal(scratch_start[k], want[k])]
    assert not same, f"--from-scratch kept the pretrained {same}"
