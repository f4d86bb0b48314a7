"""Long-context evaluation and memory: haystack construction, answer scoring, perplexity by position against the
plain loss, chunked prefill against one-piece prefill, the `gptqwen eval --task passkey` command and its errors;
the retrieval training data and the document-aligned training windows that keep its keys in view.

    OMP_NUM_THREADS=1 .venv/bin/pytest -q tests/test_long_context.py
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gptqwen.cli import main
from gptqwen.config import Config
from gptqwen.data.retrieval import FILLER, INTRO, PASSKEY_QUESTION, retrieval_documents
from gptqwen.data.sources import iter_documents
from gptqwen.errors import UserError
from gptqwen.eval.long_context import (
    LongContextEval,
    LongContextSettings,
    _first_number,
    haystack,
    plot_passkey_heatmap,
)
from gptqwen.infer import Engine, SamplingParams
from gptqwen.infer import engine as engine_module
from gptqwen.model import Transformer
from gptqwen.train.loader import WindowSampler
from gptqwen.train.recipe import load_recipe
from test_eval import _one_thread  # noqa: F401  (autouse: tiny models run on one thread)

NEEDLE = "The pass key is 31415. Remember it."
QUESTION = PASSKEY_QUESTION


@pytest.fixture(scope="module")
def tokenizer():
    from gptqwen.data.corpus import shakespeare_text
    from gptqwen.tokenizer.train import train_tokenizer

    # the prompt texts repeated so that they merge into few tokens, as a real vocabulary would have them
    text = shakespeare_text()[:20000] + (INTRO + FILLER + NEEDLE + QUESTION) * 30
    return train_tokenizer([text], vocab_size=400, style="gpt2", show_progress=False)


def _model(preset: str, vocab: int, **overrides) -> Transformer:
    torch.manual_seed(0)
    return Transformer(Config.from_name(preset, vocab_size=vocab, **overrides)).eval()


@pytest.fixture(scope="module")
def checkpoint(tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3")
    _model("qwen3-tiny", tokenizer.vocab_size, n_layer=2).save_pretrained(str(path))
    tokenizer.save(path)
    return path


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_haystack_is_exactly_the_length_with_the_needle_at_its_depth(tokenizer, depth):
    ids = haystack(tokenizer, 1500, [(depth, NEEDLE)], QUESTION)
    assert len(ids) == 1500
    text = tokenizer.decode(ids)
    assert text.startswith(INTRO) and text.endswith(QUESTION) and text.count("31415") == 1
    filler = len(text) - len(INTRO) - len(QUESTION) - len(NEEDLE) - 1  # depth is relative to the filler
    assert abs((text.index(NEEDLE) - 1 - len(INTRO)) / filler - depth) <= len(FILLER) / filler  # whole sentences
    with pytest.raises(UserError, match="cannot hold"):
        haystack(tokenizer, 40, [(depth, NEEDLE)], QUESTION)


def _sentences(doc: str) -> int:
    return sum(doc.count(x + ".") for x in FILLER.split(".")[:-1])


def test_retrieval_documents_answer_the_evals_questions():
    """synthetic:retrieval documents end in the evals' own questions, each followed by its answer; deterministic."""
    docs = [p.text for p in iter_documents(["synthetic:retrieval:30", "synthetic:needles:30"])]
    assert docs == [p.text for p in iter_documents(["synthetic:retrieval:30", "synthetic:needles:30"])]
    assert len(docs) == 60
    kinds = set()
    for doc in docs:
        assert doc.startswith(INTRO) and _sentences(doc) <= 7 * 5
        m = re.search(r"The pass key is (\d{5})\. Remember it\. \1 is the pass key\.", doc)
        if m:
            kinds.add("passkey")
            assert doc.endswith(PASSKEY_QUESTION + f" {m.group(1)}.")
            continue
        kinds.add("needle")
        keys = dict(re.findall(r"The pass key for (\w+) is (\d{5})\.", doc))
        asked = re.findall(r"What is the pass key for (\w+)\? The pass key for \1 is (\d{5})\.", doc)
        assert len(keys) == 4 and sorted(asked) == sorted(keys.items())
    assert kinds == {"passkey", "needle"}
    long = [p.text for p in iter_documents(["synthetic:retrieval-long:40"])]
    assert max(map(_sentences, long)) > 7 * 5
    gaps = {len(d) - d.index("Remember it.") for d in docs[:30]}  # key-to-question distances: any, not per group
    assert len(gaps) > 20
    with pytest.raises(UserError, match="needle_fraction"):
        next(retrieval_documents(3, needle_fraction=2))


def test_long_retrieval_documents_put_far_keys_as_often_as_near_ones():
    """synthetic:retrieval-long: the key-to-question distance is uniform (a uniform length with the key anywhere
    made keys more than half the longest distance back rare: ~15% of documents instead of ~50%)."""
    long = [p.text for p in iter_documents(["synthetic:retrieval-long:400"])]
    gaps = np.array([_sentences(d[d.index("Remember it."):]) for d in long])  # filler sentences after the key
    assert 0.4 < np.mean(gaps > gaps.max() / 2) < 0.6
    near = [_sentences(d[d.index("Remember it."):]) for d in retrieval_documents(400, max_units=41, seed=1)]
    assert np.mean(np.array(near) > gaps.max() / 2) < 0.25


def test_far_short_retrieval_documents_keep_the_short_length_with_far_keys():
    """synthetic:retrieval-far: synthetic:retrieval's lengths (≤ 7 groups) and wording, the answer right, deterministic,
    other documents than synthetic:retrieval's, and keys more than half the longest distance back in about half of
    them (synthetic:retrieval: far fewer)."""
    far = [p.text for p in iter_documents(["synthetic:retrieval-far:400"])]
    assert far == [p.text for p in iter_documents(["synthetic:retrieval-far:400"])]
    near = [p.text for p in iter_documents(["synthetic:retrieval:400"])]
    assert not set(far) & set(near)
    for doc in far:
        m = re.search(r"The pass key is (\d{5})\. Remember it\. \1 is the pass key\.", doc)
        assert doc.startswith(INTRO) and _sentences(doc) <= 7 * 5
        assert m and doc.endswith(PASSKEY_QUESTION + f" {m.group(1)}.")
    gaps = {kind: np.array([_sentences(d[d.index("Remember it."):]) for d in docs])
            for kind, docs in (("far", far), ("near", near))}
    assert len({len(d) - d.index("Remember it.") for d in far[:30]}) > 20  # distances: any, not per group
    assert 0.4 < np.mean(gaps["far"] > 35 / 2) < 0.6
    assert np.mean(gaps["near"] > 35 / 2) < 0.3


class _Tokens:
    """A token split in memory: what WindowSampler reads of a TokenDataset."""

    def __init__(self, ids: list[int], eos_id: int | None) -> None:
        self.ids, self.eos_id, self.directory, self.split = np.array(ids), eos_id, "memory", "train"

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, start: int, n: int) -> np.ndarray:
        return self.ids[start:start + n].astype(np.int64)


def test_doc_windows_start_every_sequence_at_a_document_start():
    """train.doc_windows: every training sequence opens a document (none is cut before its question), each
    document start whose window fits is used once per epoch, and recipe qwen3-long turns it on after its first stage
    (and settles on far keys, and raises the base with the 4x length in its long stage)."""
    rng, eos = np.random.default_rng(0), 0
    docs = [[*rng.integers(1, 50, int(rng.integers(5, 40))), eos] for _ in range(60)]
    ids = [t for d in docs for t in d]
    doc_starts = np.cumsum([0] + [len(d) for d in docs[:-1]])
    sampler = WindowSampler(_Tokens(ids, eos), 32, seed=1, doc_starts=True)
    fits = doc_starts[doc_starts + 33 <= len(ids)]
    assert sampler.n == len(fits) and sorted(sampler._window_start(k) for k in range(sampler.n)) == list(fits)
    x, y = sampler.batch(0, 4)
    assert all(int(row[0]) == ids[s] for row, s in zip(x, (sampler._window_start(k) for k in range(4))))
    assert torch.equal(x[:, 1:], y[:, :-1])
    fixed = WindowSampler(_Tokens(ids, eos), 32, seed=1)
    assert {fixed._window_start(k) for k in range(fixed.n)} - set(doc_starts)  # most fixed windows open mid-document
    with pytest.raises(UserError, match="doc_windows"):
        WindowSampler(_Tokens(ids, None), 32, seed=1, doc_starts=True)
    recipe = load_recipe("qwen3-long")
    assert not recipe.stage(0).train.doc_windows and recipe.stage(1).train.doc_windows and recipe.stage(2).train.doc_windows
    # settle on far keys, then Qwen3's long stage: 4x the length with a raised base (README, Long context)
    assert [s.split(":")[1] for s in recipe.stage(1).data.sources] == ["retrieval-far"]
    short, long = recipe.stage(0).model, recipe.stage(2).model
    assert long["max_seq_len"] == 4 * short["max_seq_len"] and long["rope_theta"] > short["rope_theta"]


def test_answer_scoring_takes_the_first_number():
    assert _first_number(" 31415.\nThe pass key is 2") == "31415"
    assert _first_number(" the pass key.") is None


def test_ppl_by_position_equals_the_plain_token_losses(tokenizer, tmp_path):
    model = _model("qwen3-tiny", tokenizer.vocab_size, n_layer=2)
    doc = tmp_path / "doc.txt"
    doc.write_text((INTRO + FILLER * 40 + NEEDLE) * 3, encoding="utf-8")
    ev = LongContextEval(model, tokenizer, LongContextSettings([200], trials=2, buckets=4, document=str(doc)))
    [row] = ev.ppl_by_position()
    ids = tokenizer.encode(doc.read_text(encoding="utf-8"))
    windows = torch.tensor([ids[:200], ids[200:400]])
    with torch.no_grad():
        logits = model(windows).logits
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), windows[:, 1:].flatten(), reduction="none").view(2, 199)
    mean = nll.mean(0).double()
    assert row["windows"] == 2 and len(row["buckets"]) == 4
    for b in row["buckets"]:
        assert b["nll"] == pytest.approx(float(mean[b["start"] - 1:b["end"]].mean()), abs=1e-5)


@pytest.mark.parametrize("dca", [None, {"chunk_size": 48, "local_size": 16}])
def test_chunked_prefill_equals_one_piece_prefill(monkeypatch, dca):
    model = _model("qwen2-tiny", 512, dca=dca)
    prompts = [list(range(3, 200)), list(range(50, 180))]  # left padding too
    params = SamplingParams(max_new_tokens=6, temperature=0, logprobs=0)
    one = Engine(model, native=False).generate(prompts, params)
    monkeypatch.setattr(engine_module, "PREFILL_CHUNK", 37)
    chunked = Engine(model, native=False).generate(prompts, params)
    for a, b in zip(one, chunked):
        assert a.token_ids == b.token_ids
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-4


def test_passkey_heatmap_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [{"context_length": L, "depth": d, "correct": 1, "trials": 2, "accuracy": 0.5}
            for L in (256, 512) for d in (0.0, 1.0)]
    out = plot_passkey_heatmap(rows, tmp_path / "pk.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_passkey_needle_and_dca(checkpoint, tmp_path, capsys):
    out = tmp_path / "pk.json"
    assert main(["eval", "--model", str(checkpoint), "--task", "passkey", "--context-lengths", "256", "512",
                 "--depths", "0", "1", "--trials", "2", "--dca", "96", "32", "--output", str(out), "--json",
                 "--no-progress"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads(out.read_text())
    cells = {(r["context_length"], r["depth"]): r["trials"] for r in doc["results"]}
    assert cells == {(256, 0.0): 2, (256, 1.0): 2, (512, 0.0): 2, (512, 1.0): 2}
    assert all(r["dca"] == [96, 32] and 0 <= r["correct"] <= 2 for r in doc["results"])
    assert main(["eval", "--model", str(checkpoint), "--task", "needle", "--context-lengths", "250", "--keys", "3",
                 "--trials", "2", "--json", "--no-progress"]) == 0
    [row] = json.loads(capsys.readouterr().out)["results"]
    assert row["task"] == "needle" and row["trials"] == 2


@pytest.mark.parametrize("extra, message", [
    (["--context-lengths", "1024"], "longer than the model's 256"),
    (["--context-lengths", "512", "--dca", "250", "32"], "exceeds the trained context of 256"),
    (["--context-lengths", "512", "--dca", "32", "64"], "local_size <= chunk_size"),
    (["--context-lengths", "32"], "at least 64"),
])
def test_cli_bad_long_context_input(checkpoint, capsys, extra, message):
    assert main(["eval", "--model", str(checkpoint), "--task", "passkey", "--no-progress", *extra]) == 2
    assert message in capsys.readouterr().err


def test_dca_on_learned_positions_is_a_cli_error(tokenizer, tmp_path, capsys):
    _model("gpt2-tiny", tokenizer.vocab_size).save_pretrained(str(tmp_path))
    tokenizer.save(tmp_path)
    assert main(["eval", "--model", str(tmp_path), "--task", "passkey", "--context-lengths", "512",
                 "--dca", "128", "32"]) == 2
    assert "learned positions" in capsys.readouterr().err


def test_generate_takes_yarn_and_dca_through_the_evals_extension(checkpoint, tokenizer, capsys):
    """`gptqwen generate --yarn --dca` answers a prompt past the trained 256 tokens exactly as a model extended by
    `extend_context` (what `gptqwen eval` calls) does; without the flags the prompt does not fit."""
    from gptqwen.loading import load_model_and_tokenizer
    from gptqwen.model.dca import extend_context

    prompt = tokenizer.decode(haystack(tokenizer, 400, [(0.3, NEEDLE)], QUESTION))
    args = ["generate", "--model", str(checkpoint), "--prompt", prompt, "--temperature", "0", "--max-new-tokens", "4",
            "--json"]
    assert main(args) == 2 and "does not fit the context window of 256" in capsys.readouterr().err
    assert main([*args, "--yarn", "2", "--dca", "96", "32"]) == 0
    got = json.loads(capsys.readouterr().out)
    model, tok = load_model_and_tokenizer(str(checkpoint))
    extend_context(model, 512, yarn=2.0, dca=(96, 32))
    want = Engine(model, tok).generate([tok.encode(prompt)], SamplingParams(temperature=0, max_new_tokens=4))[0]
    assert got["prompt_tokens"] > 256 and got["tokens"] == want.token_ids
    assert main([*args, "--context", "300"]) == 2 and "--context needs --yarn" in capsys.readouterr().err


@pytest.mark.parametrize("verb", ["chat", "serve", "tools"])
def test_chat_serve_and_tools_take_the_context_flags(verb, capsys):
    with pytest.raises(SystemExit):
        main([verb, "--help"]) if verb != "tools" else main([verb, "eval", "--help"])
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--yarn FACTOR", "--dca CHUNK LOCAL", "--allow-longer", "--context TOKENS"))


def test_hf_dual_chunk_attention_config_round_trips(tmp_path):
    """config.json's `dual_chunk_attention_config` (Qwen2.5-1M, vLLM) counts chunk_size as the whole window
    chunk + local; ours counts the chunk alone."""
    from gptqwen.loading import from_pretrained

    model = _model("qwen2-tiny", 256, max_seq_len=128, dca={"chunk_size": 96, "local_size": 32})
    model.save_pretrained(str(tmp_path))
    hf = json.loads((tmp_path / "config.json").read_text())
    assert hf["dual_chunk_attention_config"] == {"chunk_size": 128, "local_size": 32,
                                                 "original_max_position_embeddings": 128}
    assert from_pretrained(str(tmp_path)).config.dca == {"chunk_size": 96, "local_size": 32}
    hf["dual_chunk_attention_config"] = {"chunk_size": 100, "local_size": "x"}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(UserError, match="dual_chunk_attention_config"):
        from_pretrained(str(tmp_path))
