"""Evaluation on a real (tiny, random) checkpoint: parity with transformers and lm-evaluation-harness."""

from __future__ import annotations

import json
import math

import pytest
import torch

from gptqwen.errors import UserError
from gptqwen.eval import ScoringModel, evaluate, load_task
from gptqwen.eval.lm import rolling_windows
from gptqwen.eval.taskspec import Task

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures" / "eval"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models are tiny: extra threads only add synchronisation (and stall on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tokenizer():
    from gptqwen.data.corpus import shakespeare_text
    from gptqwen.tokenizer.train import train_tokenizer

    return train_tokenizer([shakespeare_text()[:40000]], vocab_size=320, style="gpt2", show_progress=False)


def _hf_model(family: str, vocab: int, eos: int, context: int):
    transformers = pytest.importorskip("transformers")  # the reference these tests score against
    torch.manual_seed(0)
    if family == "qwen2":
        cfg = transformers.Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
                                       tie_word_embeddings=False, eos_token_id=eos)
        return transformers.Qwen2ForCausalLM(cfg).eval()
    cfg = transformers.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=context,
                                  eos_token_id=eos, bos_token_id=eos)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _save(family: str, tokenizer, tmp_path_factory):
    hf = _hf_model(family, tokenizer.vocab_size, tokenizer.eos_id, context=512)
    path = tmp_path_factory.mktemp(family)
    hf.save_pretrained(path)
    tokenizer.save(path)
    return path, hf


@pytest.fixture(scope="module", params=["qwen2", "gpt2"])
def checkpoint(request, tokenizer, tmp_path_factory):
    """(directory, transformers model) of a tiny random checkpoint with our tokenizer beside it."""
    return _save(request.param, tokenizer, tmp_path_factory)


def _load(path) -> ScoringModel:
    from gptqwen import from_pretrained
    from gptqwen.loading import load_tokenizer

    return ScoringModel(from_pretrained(path), load_tokenizer(path), batch_size=3, progress=False, name=str(path))


@pytest.fixture(scope="module")
def lm(checkpoint):
    return _load(checkpoint[0])


@pytest.fixture(scope="module")
def qwen_lm(tokenizer, tmp_path_factory):
    return _load(_save("qwen2", tokenizer, tmp_path_factory)[0])


def _hf_logprob(hf, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    with torch.no_grad():
        logits = hf(torch.tensor([ctx + cont])).logits[0].double()
    lp = torch.log_softmax(logits[len(ctx) - 1:-1], -1)
    target = torch.tensor(cont)
    return float(lp.gather(-1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all())


REQUESTS = [("To be, or not to be", " that is the question"), ("", "Romeo"), ("Good morrow, ", "sweet lord"),
            ("O", " Romeo, Romeo! wherefore art thou Romeo?"), ("The king", " is dead"), ("The king", " lives"),
            ("What light through yonder window breaks?\n", "It is the east")]


def test_loglikelihood_matches_transformers(lm, checkpoint):
    _, hf = checkpoint
    ours = lm.loglikelihood(REQUESTS)
    for (ctx, cont), got in zip(REQUESTS, ours):
        c, x = lm.encode_pair(ctx, cont)
        want, greedy = _hf_logprob(hf, c, x)
        assert got.logprob == pytest.approx(want, abs=1e-4) and got.is_greedy == greedy and got.n_tokens == len(x)
    assert lm.encode_pair("", "Romeo")[0] == [lm.prefix_id]  # an empty context conditions on <|endoftext|>
    assert lm.encode_pair("Good morrow, ", "x")[1] == lm.encode(" x")  # trailing space moves to the continuation
    one_by_one = ScoringModel(lm.model, lm.tokenizer, batch_size=1, progress=False).loglikelihood(REQUESTS)
    assert [s.logprob for s in one_by_one] == pytest.approx([s.logprob for s in ours], abs=1e-5)  # padding-free


def test_greedy_match_is_the_models_argmax(lm):
    ctx = "To be, or not to be"
    ids = lm.encode(ctx)
    with torch.no_grad():
        best = int(lm.model(torch.tensor([ids])).logits[0, -1].argmax())
    greedy = lm.tokenizer.decode([best])
    assert lm.loglikelihood([(ctx, greedy)])[0].is_greedy


def test_rolling_perplexity_scores_each_token_once(lm, checkpoint):
    _, hf = checkpoint
    tokens = lm.encode("Now is the winter of our discontent made glorious summer by this sun of York; " * 3)
    seq = [lm.prefix_id] + tokens
    full = _hf_logprob(hf, [lm.prefix_id], tokens)[0]
    assert lm.rolling_loglikelihood([tokens])[0] == pytest.approx(full, abs=1e-3)  # fits: one window
    for stride in (None, 5):
        short = ScoringModel(lm.model, lm.tokenizer, batch_size=4, max_length=16, progress=False)
        want = sum(_hf_logprob(hf, seq[s:e + 1 - n], seq[e + 1 - n:e + 1])[0]
                   for s, e, n in rolling_windows(len(tokens), 16, stride))
        assert short.rolling_loglikelihood([tokens], stride=stride)[0] == pytest.approx(want, abs=1e-3)
        assert sum(n for *_, n in rolling_windows(len(tokens), 16, stride)) == len(tokens)


def test_generation_matches_transformers_greedy(lm, checkpoint):
    _, hf = checkpoint
    prompt = "Question: Who wrote Hamlet?\nAnswer:"
    ids = lm.encode(prompt)
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, pad_token_id=lm.prefix_id)
    want = lm.tokenizer.decode(out[0, len(ids):].tolist())
    assert lm.generate_until([prompt], until=["\x00"], max_new_tokens=6)[0] == want.split("<|endoftext|>")[0]


def test_generation_task_scores_what_was_generated(qwen_lm, monkeypatch):
    """TriviaQA-style scoring on answers chosen so that F1 and exact match are not 0 or 1 (a random model's
    answers score 0 whatever the scorer does): the values are worked out by hand below."""
    answers = {"Who wrote Hamlet?": " shakespeare wrote it", "What is the capital of France?": " Paris"}
    seen = []

    def generate_until(prompts, until, max_new_tokens, desc=None):
        seen.append((until, max_new_tokens))
        return [answers[p.rsplit("Question: ", 1)[1].removesuffix("\nAnswer:")] for p in prompts]

    monkeypatch.setattr(qwen_lm, "generate_until", generate_until)
    r = evaluate(qwen_lm, load_task(FIXTURES / "triviaqa.yaml"), shots=1)
    assert seen == [(("\n", ".", ","), 8)] and r.n == 2
    # Hamlet: tokens {shakespeare, wrote, it} against the alias "Shakespeare": P = 1/3, R = 1, F1 = 0.5 (the
    # alias "William Shakespeare" gives 0.4); Paris: exact. Mean F1 (0.5 + 1) / 2, exact match (0 + 1) / 2.
    assert r.metrics["f1"]["value"] == pytest.approx(0.75) and r.metrics["exact_match"]["value"] == 0.5
    assert r.samples[0]["prompt"].startswith("Question: How many legs has a spider?\nAnswer: Eight\n\n")


def _word_choice_task(n: int = 24) -> Task:
    """A local multiple-choice task: which word follows the arrow? (four Shakespeare words each)."""
    from gptqwen.data.corpus import shakespeare_words

    words = shakespeare_words(4, 8)[::97]
    docs = [{"q": f"{words[i]} ->", "options": [words[(i + k) % len(words)] for k in range(4)], "gold": i % 4}
            for i in range(n)]
    return Task(name="word_choice", output_type="multiple_choice", splits={"test": docs[6:], "train": docs[:6]},
                fewshot_split="train", fewshot_sampler="first_n", doc_to_text="q", doc_to_choice="options",
                doc_to_target="gold", metrics=("acc", "acc_norm"), description="Choose the word.")


def test_harness_and_lm_eval_agree(qwen_lm, monkeypatch):
    evaluator = pytest.importorskip("lm_eval.evaluator")

    from gptqwen.eval.lm_eval_adapter import evaluate_with_lm_eval

    # simple_evaluate runs `pip list` for an environment report on every call; irrelevant here and slow
    monkeypatch.setattr(evaluator, "add_env_info", lambda results: None)
    lm = qwen_lm

    cases = [(_word_choice_task(), 0), (_word_choice_task(), 2), (load_task(FIXTURES / "hellaswag.yaml"), 0),
             (load_task(FIXTURES / "winogrande.yaml"), 0), (load_task(FIXTURES / "lambada.yaml"), 0)]
    for task, shots in cases:
        ours = evaluate(lm, task, shots=shots)
        theirs = evaluate_with_lm_eval(lm, task, shots=shots)
        assert theirs.n == ours.n
        for m in theirs.metrics:
            assert theirs.metrics[m]["value"] == pytest.approx(ours.metrics[m]["value"], rel=1e-6), (task.name, m)
        if task.name == "word_choice":  # a non-degenerate score, so agreement is not 0 == 0
            assert 0 < ours.metrics["acc"]["value"] < 1
    assert set(theirs.metrics) == {"acc", "perplexity"}


def test_prompt_longer_than_context_is_a_user_error(lm):
    short = ScoringModel(lm.model, lm.tokenizer, max_length=24, progress=False)
    with pytest.raises(UserError, match="does not fit the model's context of 24; use fewer --shots"):
        evaluate(short, load_task(FIXTURES / "hellaswag.yaml"), shots=2)
    with pytest.raises(UserError, match="does not fit"):
        short.generate_until(["word " * 20], until=["\n"], max_new_tokens=8)


def test_heldout_blocks_follow_data_prepare(tokenizer, tmp_path):
    from gptqwen.eval.perplexity import heldout_blocks

    text = "Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise him.\n" * 8
    (tmp_path / "a.txt").write_text(text)
    blocks = heldout_blocks([str(tmp_path / "a.txt")], tokenizer, val_fraction=0.25, block_tokens=16)
    stream = tokenizer.encode(text)
    stream.append(tokenizer.token_to_id("<|endoftext|>"))
    want = [stream[j * 16:(j + 1) * 16] for j in range(math.ceil(len(stream) / 16)) if int((j + 1) / 4) > int(j / 4)]
    assert blocks == want


def test_cli_end_to_end(checkpoint, lm, tmp_path, capsys):
    from gptqwen.cli import main

    path, hf = checkpoint
    text = tmp_path / "t.txt"
    verse = "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.\n"
    text.write_text(verse)
    png, samples = tmp_path / "shots.png", tmp_path / "s.jsonl"
    rc = main(["eval", "--model", str(path), "--task", str(FIXTURES / "hellaswag.yaml"), "--shots", "0", "1",
               "--perplexity", str(text), "--json", "--plot", str(png), "--samples", str(samples), "--no-progress"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and [(r["task"], r["shots"]) for r in out["results"]] == [
        ("hellaswag_mini", 0), ("hellaswag_mini", 1), ("t.txt", 0)]
    assert set(out["results"][0]["metrics"]) == {"acc", "acc_norm", "acc_norm_tokens", "acc_uncond"}
    # bits per byte from transformers' log-probabilities of the file's tokens (one window, after <|endoftext|>)
    ll = _hf_logprob(hf, [lm.prefix_id], lm.encode(verse))[0]
    assert out["results"][2]["metrics"]["bits_per_byte"]["value"] == pytest.approx(-ll / len(verse) / math.log(2),
                                                                                   rel=1e-5)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(samples.read_text().splitlines()) == 3 + 3 + 1


@pytest.mark.parametrize("extra, message", [
    (["--task", "nope"], "unknown task 'nope'"),
    (["--task", "FIX/hellaswag.yaml", "--shots", "3"], "only 2 few-shot examples"),
    (["--task", "FIX/hellaswag.yaml", "--plot", "x.jpg"], "ending in .png"),
    (["--task", "FIX/lambada.yaml", "--limit", "0"], "--limit must be >= 1"),
    (["--perplexity", "missing.txt"], "does not exist"),
])
def test_cli_bad_input(checkpoint, capsys, extra, message):
    from gptqwen.cli import main

    path, _ = checkpoint
    rc = main(["eval", "--model", str(path), *[e.replace("FIX", str(FIXTURES)) for e in extra], "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and message in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_lm_eval_command_line_launcher(qwen_lm, tmp_path):
    """`python -m gptqwen.eval.lm_eval_adapter` registers model `gptqwen` and runs lm-eval's own CLI."""
    import os
    import subprocess
    import sys

    root = FIXTURES.parents[2]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "gptqwen.eval.lm_eval_adapter", "--model", "gptqwen", "--model_args",
           f"path={qwen_lm.name}", "--tasks", "hellaswag_mini_lmeval", "--include_path", str(FIXTURES / "lm_eval"),
           "--device", "cpu", "--output_path", str(out)]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    [result_file] = out.rglob("results_*.json")
    got = json.loads(result_file.read_text())["results"]["hellaswag_mini_lmeval"]
    ours = evaluate(qwen_lm, load_task(FIXTURES / "hellaswag.yaml"), shots=0)
    assert got["acc,none"] == pytest.approx(ours.metrics["acc"]["value"])
    assert got["acc_norm,none"] == pytest.approx(ours.metrics["acc_norm"]["value"])


def test_lm_eval_model_args_refuse_a_preset_unless_random_weights():
    pytest.importorskip("lm_eval")
    from gptqwen.eval.lm_eval_adapter import GptqwenLM

    with pytest.raises(UserError, match="preset"):
        GptqwenLM(path="gpt2-tiny")
    # lm-eval hands model_args over as text; the untrained model is then built, and a tiny preset has no vocabulary
    with pytest.raises(UserError, match="has no tokenizer"):
        GptqwenLM(path="gpt2-tiny", random_weights="true")
