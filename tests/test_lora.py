"""LoRA: starts as the base model, merges to the same logits, adapts only the chosen projections."""

import pytest
import torch

from gptqwen.config import Config
from gptqwen.errors import UserError
from gptqwen.finetune.lora import apply_lora
from gptqwen.model import Transformer
from gptqwen.model.lora import LoRALinear, lora_layers, merge_lora


def _randomize_adapters(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                for b in m.lora_B:
                    b.normal_(std=0.05)


@pytest.mark.parametrize("preset,targets", [
    ("qwen3-tiny", ["q", "k", "v", "o", "gate", "up", "down"]),
    ("qwen3-tiny", ["q", "v"]),
    ("gpt2-tiny", ["q", "o", "up", "down"]),
    ("qwen3-moe-tiny", ["k", "o", "router"]),
])
def test_merge_matches_unmerged_adapter(preset, targets):
    torch.manual_seed(0)
    model = Transformer(Config.from_name(preset)).eval()
    ids = torch.randint(0, 512, (2, 12))
    base = model(ids).logits
    wrapped = apply_lora(model, targets, r=4, alpha=8)
    assert wrapped
    torch.testing.assert_close(model(ids).logits, base, atol=0, rtol=0)  # B = 0: exactly the base model
    _randomize_adapters(model)
    adapted = model(ids).logits
    assert (adapted - base).abs().max() > 1e-3
    assert merge_lora(model) == len(wrapped)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(model(ids).logits, adapted, atol=2e-5, rtol=1e-5)


def test_only_adapters_train_and_slices_touch_only_their_rows():
    torch.manual_seed(0)
    model = Transformer(Config.from_name("qwen3-tiny"))
    apply_lora(model, ["q"], r=2, alpha=4)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    assert set(lora_layers(model)) == {f"blocks.{i}.attn.qkv" for i in range(model.config.n_layer)}
    layer = model.blocks[0].attn.qkv
    q = model.config.n_head * model.config.head_dim
    assert layer.slices == [(0, q)]
    _randomize_adapters(model)
    delta = layer.delta_weight()
    assert delta[:q].abs().sum() > 0 and delta[q:].abs().sum() == 0
    x = torch.randn(3, model.config.n_embd)
    torch.testing.assert_close(layer(x), x @ (layer.base.weight + delta).T, atol=1e-5, rtol=1e-5)


def test_lora_gradients_flow_to_adapters_only():
    torch.manual_seed(0)
    model = Transformer(Config.from_name("qwen3-tiny"))
    apply_lora(model, ["q", "v"], r=4, alpha=8)
    ids = torch.randint(0, 512, (2, 8))
    model(ids, targets=ids).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all(".lora_" in n for n in grads)


def test_bad_targets():
    model = Transformer(Config.from_name("qwen3-tiny"))
    with pytest.raises(UserError, match="matched no linear layer"):
        apply_lora(model, ["query"], r=4)
    with pytest.raises(UserError, match="positive"):
        apply_lora(model, ["q"], r=0)
