"""Mixture of experts: routing and expert grouping, the auxiliary load-balancing loss against transformers,
and the global-batch variant."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gptqwen.config import Config
from gptqwen.model import Transformer, global_load_balancing_loss, load_balancing_loss
from gptqwen.model.moe import MoE


def _ids(cfg: Config, B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def _per_token_moe(moe: MoE, cfg: Config, x: torch.Tensor) -> torch.Tensor:
    """The MoE layer the slow, obvious way: each token through its top-k experts, one at a time."""
    flat = x.reshape(-1, cfg.n_embd)
    probs = F.softmax(flat @ moe.router.weight.T, -1)
    w, idx = probs.topk(cfg.n_experts_per_tok, -1)
    if cfg.norm_topk_prob:
        w = w / w.sum(-1, keepdim=True)
    rows = []
    for t in range(flat.shape[0]):
        row = torch.zeros(cfg.n_embd)
        for j in range(cfg.n_experts_per_tok):
            e = idx[t, j]
            gate, up = (moe.w_gate_up[e] @ flat[t]).chunk(2)
            row = row + w[t, j] * (moe.w_down[e] @ (F.silu(gate) * up))
        rows.append(row)
    want = torch.stack(rows)
    if moe.shared is not None:
        want = want + torch.sigmoid(moe.shared_gate(flat)) * moe.shared(flat)
    return want


def _random_moe(cfg: Config) -> MoE:
    torch.manual_seed(0)
    moe = MoE(cfg)
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0, 0.1)
    return moe


@torch.no_grad()
def test_grouped_experts_equal_per_token_reference():
    cfg = Config.from_name("qwen2-moe-tiny", norm_topk_prob=True)
    moe = _random_moe(cfg)
    x = torch.randn(3, 5, cfg.n_embd)
    y, logits = moe(x)
    assert logits.shape == (15, cfg.n_experts)
    assert torch.allclose(y.reshape(-1, cfg.n_embd), _per_token_moe(moe, cfg, x), rtol=1e-5, atol=1e-5)


def test_sparse_step_and_mlp_only_layers():
    cfg = Config.from_name("qwen2-moe-tiny", n_layer=4, decoder_sparse_step=2, mlp_only_layers=[3])
    model = Transformer(cfg)
    assert [b.is_moe for b in model.blocks] == [False, True, False, False]
    assert model.num_params() == cfg.num_params()
    out = model(_ids(cfg, 2, 6))
    assert len(out.router_logits) == 1 and out.router_logits[0].shape == (12, cfg.n_experts)


@pytest.mark.parametrize("name", ["qwen3-moe-tiny", "qwen2-moe-tiny"])
def test_expert_and_router_gradients_equal_per_token_reference(name):
    """The grouped experts' backward (and the router's, through the top-k weights) is the per-token one."""
    cfg = Config.from_name(name)
    moe = _random_moe(cfg)
    x = torch.randn(2, 8, cfg.n_embd, requires_grad=True)
    upstream = torch.randn(16, cfg.n_embd)
    got = torch.autograd.grad((moe(x)[0].reshape(16, -1) * upstream).sum(), [x, *moe.parameters()])
    want = torch.autograd.grad((_per_token_moe(moe, cfg, x) * upstream).sum(), [x, *moe.parameters()])
    names = ["x", *(n for n, _ in moe.named_parameters())]
    for n, g, w in zip(names, got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5, msg=n)
    assert all(w.abs().sum() > 0 for w in want)  # no gradient is all zeros: no comparison is 0 == 0


@pytest.mark.parametrize("name", ["qwen3-moe-tiny", "qwen2-moe-tiny"])
def test_aux_loss_matches_transformers(name, tmp_path):
    cfg = Config.from_name(name)
    torch.manual_seed(0)
    ours = Transformer(cfg).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.3)
    ours.save_pretrained(tmp_path)
    transformers = pytest.importorskip("transformers")  # only this test compares with it
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = _ids(cfg, 2, 20)
    mask = torch.ones_like(ids)
    mask[1, :7] = 0
    for m in (None, mask):
        with torch.no_grad():
            want = ref(ids, attention_mask=m, output_router_logits=True).aux_loss
            got = ours(ids, attention_mask=m)
        assert got.aux_loss.item() == pytest.approx(cfg.router_aux_loss_coef * want.item(), abs=1e-6 * cfg.router_aux_loss_coef)
        assert abs(got.aux_loss.item() / cfg.router_aux_loss_coef - want.item()) <= 1e-6


def test_global_batch_loss_equals_concatenated_batch():
    cfg = Config.from_name("qwen3-moe-tiny")
    model = Transformer(cfg)
    micro = [_ids(cfg, 2, 8, seed=s) for s in range(4)]
    logits = [model(ids).router_logits for ids in micro]
    E, k = cfg.n_experts, cfg.n_experts_per_tok
    concat = tuple(torch.cat([lg[layer] for lg in logits]) for layer in range(len(logits[0])))
    want = load_balancing_loss(concat, E, k)
    got = global_load_balancing_loss(logits, E, k)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    # the per-micro-batch mean differs in general: that is the point of the global variant
    local = sum(load_balancing_loss(lg, E, k) for lg in logits) / len(logits)
    assert got.requires_grad and local.item() != pytest.approx(want.item(), rel=1e-9)
    # with padding masks the frequencies cover real tokens only, like one concatenated masked batch
    masks = [torch.ones(2, 8, dtype=torch.long) for _ in micro]
    masks[2][0, :5] = 0
    masked = global_load_balancing_loss(logits, E, k, attention_masks=masks)
    assert masked.item() == pytest.approx(load_balancing_loss(concat, E, k, torch.cat(masks)).item(), rel=1e-6)
