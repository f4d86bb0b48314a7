"""Strong-to-weak distillation (`gptqwen distill`, align/distill.py): the on-policy loss equals a direct per-token KL
on a fixed batch (both directions), so does the dense off-policy loss (CE + forward KL on packed teacher answers),
the vocabulary check before any work, the FLOP counter both commands report (6·N·tokens with gradients, 2·N·tokens
without, the C decode step counted like the PyTorch one), and a tiny end-to-end run with resume (dense off-policy loss
on)."""

from __future__ import annotations

import json

import pytest
import torch

import _align_fixtures
from gptqwen.align import prefs
from gptqwen.align.distill import _modes, check_same_vocabulary, dense_loss, on_policy_workload, teacher_conversations
from gptqwen.align.flops import FlopCounter
from gptqwen.config import Config
from gptqwen.errors import UserError
from gptqwen.finetune import sft
from gptqwen.finetune.synthetic import demo_tokenizer
from gptqwen.infer import Engine, SamplingParams
from gptqwen.infer.thinking import chat_many
from gptqwen.model import Transformer
from gptqwen.train.recipe import load_recipe

tok, model_dir = _align_fixtures.tok, _align_fixtures.model_dir  # shared fixtures


def _direct_kl(student, teacher, prompt: list[int], completion: list[int], vocab: int, direction: str) -> list[float]:
    """KL at each completion token, one sequence at a time, in float64 with torch.distributions."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        s, t = student(ids).logits[0, :, :vocab].double(), teacher(ids).logits[0, :, :vocab].double()
    out = []
    for pos in range(len(prompt) - 1, len(prompt) + len(completion) - 1):  # the logits that predict each completion token
        ps, pt = torch.distributions.Categorical(logits=s[pos]), torch.distributions.Categorical(logits=t[pos])
        out.append(float(torch.distributions.kl_divergence(*((ps, pt) if direction == "reverse" else (pt, ps)))))
    return out


@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_on_policy_loss_is_the_per_token_kl(tok, direction):
    torch.manual_seed(0)
    # embeddings wider than the vocabulary: the padded rows must not enter the KL
    student = Transformer(Config.from_name("qwen3-tiny", vocab_size=tok.vocab_size + 24, n_layer=1, n_embd=64))
    teacher = Transformer(Config.from_name("qwen3-tiny", vocab_size=tok.vocab_size + 8, n_layer=2)).eval()
    recipe = load_recipe("distill-qwen3", [f"distill.kl={direction}", "distill.synthetic=8"], trainer="distill")
    rows = [{"prompt": [{"role": "user", "content": f"What is {i} + 1?"}]} for i in range(8)]
    work = on_policy_workload(recipe, student, teacher, tok, rows, torch.device("cpu"))
    seqs = [([5, 17, 33, 2], [40, 41, 42]), ([7, 8], [9, 10, 11, 12, 13]), ([3, 4, 5, 6, 7, 8], [99])]
    batch = prefs.collate_sequences([(list(p), list(c)) for p, c in seqs], pad_id=0)
    loss, logged = work.loss(student, batch)
    per_token = [kl for p, c in seqs for kl in _direct_kl(student, teacher, p, c, tok.vocab_size, direction)]
    assert loss.item() == pytest.approx(sum(per_token) / len(per_token), rel=1e-5, abs=1e-7)
    assert loss.item() > 0 and logged["loss"] == loss.detach()
    loss.backward()  # gradients reach the student only
    assert any(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


@pytest.mark.parametrize(("weight", "temperature"), [(1.0, 1.0), (0.3, 1.0), (0.5, 3.0)])
def test_dense_off_policy_loss(tok, weight, temperature):
    torch.manual_seed(0)
    student = Transformer(Config.from_name("qwen3-tiny", vocab_size=tok.vocab_size + 24, n_layer=1, n_embd=64))
    teacher = Transformer(Config.from_name("qwen3-tiny", vocab_size=tok.vocab_size + 8, n_layer=2)).eval()
    convs = [{"messages": [{"role": "user", "content": f"What is {i} + 2?"},
                           {"role": "assistant", "content": f"The answer is {i + 2}.",
                            **({"reasoning_content": f"{i} + 2 = {i + 2}."} if i % 2 else {})}]} for i in range(3)]
    examples, _ = sft.build_examples(tok, list(enumerate(convs, 1)), 256)
    (batch,) = sft.make_batches(examples, 256, 8, packing=True)
    assert batch["input_ids"].shape[0] == 1  # all three packed in one row: the teacher must read them apart too
    losses = dense_loss(teacher, weight, tok.vocab_size, temperature)(student, batch)
    ce, kl = [], []  # direct: each conversation alone, every assistant token, float64 with torch.distributions
    for ex in examples:
        ids = torch.tensor([ex.ids])
        with torch.no_grad():
            full, t = student(ids).logits[0].double(), teacher(ids).logits[0, :, : tok.vocab_size].double()
        s = full[:, : tok.vocab_size]  # the KL over the tokenizer's ids; the CE over every row, as the model's loss
        for pos, target in enumerate(ex.targets):
            if target != sft.IGNORE:
                ps, pt = (torch.distributions.Categorical(logits=x[pos] / temperature) for x in (s, t))
                ce.append(-float(full[pos].log_softmax(-1)[target]))
                kl.append(float(torch.distributions.kl_divergence(pt, ps)) * temperature**2)  # Hinton: softened, x T²
    want = (1 - weight) * sum(ce) / len(ce) + weight * sum(kl) / len(kl)
    assert losses["loss"].item() == pytest.approx(want, rel=1e-5)
    assert losses["kl"].item() == pytest.approx(sum(kl) / len(kl), rel=1e-5) and losses["kl"] > 0
    assert losses["ce"].item() == pytest.approx(sum(ce) / len(ce), rel=1e-5)
    losses["loss"].backward()  # gradients reach the student only
    assert any(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_teacher_answers_come_back_in_row_order(tok):
    torch.manual_seed(0)
    teacher = Transformer(Config.from_name("qwen3-tiny", vocab_size=tok.vocab_size, n_layer=1)).eval()
    with torch.no_grad():  # random weights repeat the last token ("\n": no content); this gives prompt-dependent text
        teacher.ln_f.weight.normal_()
    rows = [{"prompt": [{"role": "user", "content": "What is " + " + 1" * (i % 5) + "?"}]} for i in range(12)]
    convs, stats = teacher_conversations(teacher, tok, rows, 0.5, 3, 10, verify=False)  # batched by mode and length
    want = []  # direct: each row alone, in the rows' order, with the same modes
    for row, thinking in zip(rows, _modes(len(rows), 0.5, 3)):
        [r] = chat_many(Engine(teacher, tok), [row["prompt"]], [thinking], params=SamplingParams(temperature=0.0, max_new_tokens=10))
        if r.content and not (thinking and r.finish_reason == "length"):
            want.append([*row["prompt"], {"role": "assistant", "content": r.content,
                                          **({"reasoning_content": r.reasoning_content} if thinking and r.reasoning_content else {})}])
    assert [c["messages"] for c in convs] == want and stats["kept"] == len(want) > 0


def test_flop_counter(tok):
    torch.manual_seed(0)
    student = Transformer(Config.from_name("qwen3-tiny", vocab_size=tok.vocab_size, n_layer=1, n_embd=64))
    teacher = Transformer(Config.from_name("qwen3-tiny", vocab_size=tok.vocab_size, n_layer=2)).eval()
    n_s, n_t = (sum(p.numel() for p in m.parameters()) for m in (student, teacher))
    ids = torch.randint(0, tok.vocab_size, (3, 10))
    with FlopCounter() as flops:
        student(ids).logits.sum().backward()  # a training forward: 6·N per token
        with torch.no_grad():
            teacher(ids)  # scoring: 2·N per token
    assert flops.by_kind == {"train": 6 * n_s * 30, "forward": 2 * n_t * 30}
    student(ids)  # after the block: not counted
    assert flops.total == 6 * n_s * 30 + 2 * n_t * 30
    prompts = [[5, 6, 7], [8, 9]]  # generation: prefill and every decode step, C kernel or PyTorch alike
    params = SamplingParams(temperature=1.0, max_new_tokens=6, seed=3, ignore_eos=True)
    counted = []
    for native in (True, False):
        with FlopCounter() as flops:
            Engine(student, native=native).generate(prompts, params)
        counted.append(flops.total)
    assert counted[0] == counted[1] == 2 * n_s * (2 * 3 + 2 * 5)  # a left-padded prefill of 2 x 3, then 5 steps of 2


def test_vocabulary_check(tok, model_dir, tmp_path, capsys):
    other = demo_tokenizer(300)
    with pytest.raises(UserError, match="different vocabularies"):
        check_same_vocabulary(other, tok)
    check_same_vocabulary(tok, demo_tokenizer(400))  # the same vocabulary built twice is the same
    d = tmp_path / "other"
    Transformer(Config.from_name("qwen3-tiny", vocab_size=other.vocab_size)).save_pretrained(d)
    other.save(d)
    from gptqwen.cli import main

    assert main(["distill", "--teacher", str(d), "--from", str(model_dir), "--out", str(tmp_path / "out")]) == 2
    assert "different vocabularies" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before any work


@pytest.mark.slow
def test_distill_end_to_end_and_resume(model_dir, tmp_path, capsys):
    from gptqwen.cli import main
    from gptqwen.loading import load_model_and_tokenizer

    args = ["distill", "--teacher", str(model_dir), "--from", "qwen3-tiny", "--tokenizer", str(model_dir),
            "--synthetic", "16", "--max-steps", "2", "--batch-size", "4", "--prompts-per-step", "4", "--max-new-tokens",
            "8", "distill.teacher_max_new_tokens=12", "distill.verify=false", "distill.teacher_temperature=1", "distill.dense_kl=0.5",
            "--threads", "1", "--json"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    full = json.loads(capsys.readouterr().out)
    off, on = full["stages"]["1-off-policy"], full["stages"]["2-on-policy"]
    assert off["teacher_data"]["kept"] > 0 and off["steps"] == 2 and on["steps"] == 2 and on["kl"] == "reverse"
    assert off["dense_kl"] == 0.5 and "kl" in json.loads(open(f"{off['out']}/metrics.jsonl").readline())
    assert off["flops"] > 0 and on["flops"] > 0 and full["flops"] == off["flops"] + on["flops"]  # compute recorded
    assert 0 < off["flops_train"] < off["flops"] and off["cpu_s"] > off["teacher_data"]["cpu_s"] > 0  # teacher: no grads
    model, t = load_model_and_tokenizer(full["out"])
    assert t is not None and model.config.vocab_size == 512
    # stop in the on-policy phase, then resume: the same weights as the run that never stopped
    assert main([*args, "--out", str(tmp_path / "b"), "--stop-at", "1", "--max-steps", "2"]) == 0
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "b"), "--resume"]) == 0
    stopped = json.loads(capsys.readouterr().out)
    a = load_model_and_tokenizer(full["out"])[0].state_dict()
    b = load_model_and_tokenizer(stopped["out"])[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
