"""Parity of the alignment losses with TRL: TRL's own trainer loss code runs on the same log-probs.

TRL's `_compute_loss` methods are called unbound with a stand-in trainer (`SimpleNamespace`) whose model
returns the log-probs we choose, so the code path under test is TRL's, line for line; our functions
(`gptqwen.align.losses`) get the same numbers and must agree within 1e-5.
"""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from gptqwen.align import losses as L

trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer")
trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")
trl_reward = pytest.importorskip("trl.trainer.reward_trainer")
trl_utils = pytest.importorskip("trl.trainer.utils")


def _accelerator():
    same = lambda x: x  # noqa: E731  (one process: gathering is the identity)
    return SimpleNamespace(device=torch.device("cpu"), gather=same, gather_for_metrics=same, num_processes=1,
                           reduce=lambda x, reduction="sum": x, sync_gradients=True)


def _metrics():
    return defaultdict(lambda: defaultdict(list))


def _pref_batch(seed: int = 0, b: int = 3, t: int = 9):
    """Per-token log-probs on completion positions of [2B, T] sequences (chosen rows, then rejected)."""
    g = torch.Generator().manual_seed(seed)
    completion_mask = torch.zeros(2 * b, t, dtype=torch.long)
    for i in range(2 * b):
        start = int(torch.randint(2, 5, (1,), generator=g))
        end = int(torch.randint(start + 1, t + 1, (1,), generator=g))
        completion_mask[i, start:end] = 1
    per_token = -torch.rand(2 * b, t - 1, generator=g) * 3 * completion_mask[:, 1:]
    ref = -torch.rand(2 * b, generator=g) * 10
    return completion_mask, per_token, ref


@pytest.mark.parametrize("kind", ["sigmoid", "hinge", "ipo"])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_matches_trl(kind, beta):
    completion_mask, per_token, ref = _pref_batch(seed=int(beta * 10))
    b = completion_mask.shape[0] // 2
    out = SimpleNamespace(log_probs=per_token, entropy=torch.zeros_like(per_token),
                          mean_logits=torch.zeros_like(per_token), is_top1=torch.zeros_like(per_token, dtype=torch.bool))
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=_accelerator(), ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=[kind], loss_weights=[1.0], beta=beta, label_smoothing=0.0,
        use_weighting=False, aux_loss_enabled=False, _metrics=_metrics(), _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros_like(completion_mask), "attention_mask": torch.ones_like(completion_mask),
              "completion_mask": completion_mask, "ref_chosen_logps": ref[:b], "ref_rejected_logps": ref[b:]}
    theirs = trl_dpo.DPOTrainer._compute_loss(trainer, lambda **kw: out, inputs, False)
    logps = per_token.sum(1)
    counts = completion_mask[:, 1:].sum(1).float()
    ours, chosen_r, rejected_r = L.dpo_loss(logps[:b], logps[b:], ref[:b], ref[b:], beta, kind,
                                            chosen_tokens=counts[:b], rejected_tokens=counts[b:])
    assert ours.mean().item() == pytest.approx(theirs.item(), abs=1e-5)
    m = trainer._metrics["train"]
    assert chosen_r.mean().item() == pytest.approx(m["rewards/chosen"][0], abs=1e-5)
    assert rejected_r.mean().item() == pytest.approx(m["rewards/rejected"][0], abs=1e-5)
    assert (chosen_r > rejected_r).float().mean().item() == pytest.approx(m["rewards/accuracies"][0])


def test_cdpo_label_smoothing_formula():
    """cDPO (TRL 1.16 has it no longer; the formula of its earlier `sigmoid` + label_smoothing)."""
    pc, pr, rc, rr = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0]), torch.tensor([-3.5, -4.0]), torch.tensor([-3.0, -3.0])
    eps, beta = 0.1, 0.5
    d = (pc - rc) - (pr - rr)
    want = -(1 - eps) * torch.nn.functional.logsigmoid(beta * d) - eps * torch.nn.functional.logsigmoid(-beta * d)
    got, _, _ = L.dpo_loss(pc, pr, rc, rr, beta, "sigmoid", label_smoothing=eps)
    torch.testing.assert_close(got, want)
    plain, _, _ = L.dpo_loss(pc, pr, rc, rr, beta, "sigmoid")
    assert not torch.allclose(got, plain)


@pytest.mark.parametrize("margin", [False, True])
@pytest.mark.parametrize("center", [None, 0.01])
def test_reward_loss_matches_trl(margin, center):
    g = torch.Generator().manual_seed(3)
    rewards = torch.randn(8, 1, generator=g)
    inputs = {"input_ids": torch.zeros(8, 4, dtype=torch.long), "attention_mask": torch.ones(8, 4, dtype=torch.long)}
    if margin:
        inputs["margin"] = torch.rand(4, generator=g)
    trainer = SimpleNamespace(model=SimpleNamespace(training=True), accelerator=_accelerator(), _metrics=_metrics(),
                              _total_train_tokens=0, _tp_size=1,
                              args=SimpleNamespace(center_rewards_coefficient=center))
    theirs = trl_reward.RewardTrainer.compute_loss(trainer, lambda **kw: SimpleNamespace(logits=rewards), dict(inputs))
    ours = L.reward_loss(rewards[:4, 0], rewards[4:, 0], inputs.get("margin"), center)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_match_trl_formula(scale):
    """TRL computes advantages inline in `_generate_and_score_completions`; these are its statements with its
    `nanstd`, on group rewards with ties, a zero-variance group and an unscorable (NaN) completion."""
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 2.0, float("nan"), 0.0, 1.0])
    g = 4
    mean = torch.nanmean(rewards.view(-1, g), dim=1).repeat_interleave(g)
    std = trl_utils.nanstd(rewards.view(-1, g), dim=1).repeat_interleave(g) if scale != "batch" else \
        trl_utils.nanstd(rewards).expand_as(rewards)  # fmt: skip
    want = rewards - mean
    if scale != "none":
        want = want / (std + 1e-4)
    want = torch.nan_to_num(want, nan=0.0)
    torch.testing.assert_close(L.group_advantages(rewards, g, scale), want, atol=1e-6, rtol=0)
    assert L.group_advantages(rewards, g, scale)[4:8].abs().max() == 0  # equal rewards carry no signal


def _grpo_trainer(kind, beta, eps_low, eps_high, max_len):
    return SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=_accelerator(), top_entropy_quantile=1.0,
        off_policy_mask_threshold=None, importance_sampling_level="token", beta=beta, loss_type=kind,
        epsilon_low=eps_low, epsilon_high=eps_high, use_vllm=False, current_gradient_accumulation_steps=1,
        max_completion_length=max_len, _entropy_bonus_enabled=False, aux_loss_enabled=False, _metrics=_metrics(),
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1))


@pytest.mark.parametrize("kind", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_matches_trl(kind, beta):
    g = torch.Generator().manual_seed(7)
    b, t = 6, 10
    mask = (torch.arange(t)[None] < torch.randint(2, t + 1, (b, 1), generator=g)).long()
    logp = -torch.rand(b, t, generator=g) * 2
    old = logp + torch.randn(b, t, generator=g) * 0.3  # ratios on both sides of the clip range
    ref = logp + torch.randn(b, t, generator=g) * 0.2
    adv = torch.randn(b, generator=g)
    trainer = _grpo_trainer(kind, beta, 0.2, 0.28, t)
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (logp, torch.zeros_like(logp), None)
    inputs = {"prompt_ids": torch.zeros(b, 3, dtype=torch.long), "prompt_mask": torch.ones(b, 3, dtype=torch.long),
              "completion_ids": torch.zeros(b, t, dtype=torch.long), "completion_mask": mask, "advantages": adv,
              "old_per_token_logps": old, "ref_per_token_logps": ref, "num_items_in_batch": mask.sum().float()}
    theirs = trl_grpo.GRPOTrainer._compute_loss(trainer, None, inputs)
    ours, stats = L.grpo_loss(logp, old, adv, mask, kind, 0.2, 0.28, beta, ref, max_completion_length=t)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)
    m = trainer._metrics["train"]
    if beta:
        assert stats["kl"].item() == pytest.approx(m["kl"][0], abs=1e-6)
    assert stats["clip_low"].item() == pytest.approx(m["clip_ratio/low_mean"][0], abs=1e-6)
    assert stats["clip_high"].item() == pytest.approx(m["clip_ratio/high_mean"][0], abs=1e-6)


def test_k3_kl_is_nonnegative_and_zero_on_equal():
    a, b = torch.randn(100), torch.randn(100)
    assert (L.k3_kl(a, b) >= 0).all()
    assert L.k3_kl(a, a).abs().max() == 0
    assert math.isclose(L.k3_kl(torch.tensor(0.0), torch.tensor(math.log(2))).item(), 2 - math.log(2) - 1, rel_tol=1e-6)


def test_unknown_loss_names_the_choices():
    with pytest.raises(ValueError, match="sigmoid, ipo, hinge"):
        L.dpo_loss(*[torch.zeros(1)] * 4, kind="nope")
    with pytest.raises(ValueError, match="grpo, bnpo"):
        L.grpo_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1), torch.ones(1, 2), kind="nope")


def test_dpo_with_nll_term_matches_trl_sigmoid_plus_sft():
    """`dpo.nll_weight`: TRL's loss_type=["sigmoid", "sft"] with weights [1, w]."""
    from gptqwen.align.dpo import preference_metrics

    completion_mask, per_token, ref = _pref_batch(seed=5)
    b, w = completion_mask.shape[0] // 2, 0.7
    out = SimpleNamespace(log_probs=per_token, entropy=torch.zeros_like(per_token),
                          mean_logits=torch.zeros_like(per_token), is_top1=torch.zeros_like(per_token, dtype=torch.bool))
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=_accelerator(), ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=["sigmoid", "sft"], loss_weights=[1.0, w], beta=0.1, label_smoothing=0.0,
        use_weighting=False, aux_loss_enabled=False, _metrics=_metrics(), _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros_like(completion_mask), "attention_mask": torch.ones_like(completion_mask),
              "completion_mask": completion_mask, "ref_chosen_logps": ref[:b], "ref_rejected_logps": ref[b:]}
    theirs = trl_dpo.DPOTrainer._compute_loss(trainer, lambda **kw: out, inputs, False)
    # our batch layout: targets aligned to the positions that predict them (position t predicts t + 1)
    targets = torch.full_like(completion_mask, -100)
    targets[:, :-1] = torch.where(completion_mask[:, 1:] == 1, 1, -100)
    logits = torch.zeros(*targets.shape, 3)
    logits[..., 1] = torch.nn.functional.pad(per_token, (0, 1))  # log-softmax is then exactly per_token below
    logits[..., 1] = torch.log(torch.exp(logits[..., 1]).clamp(max=1 - 1e-6))
    lse_rest = torch.log((1 - torch.exp(logits[..., 1])) / 2)
    logits[..., 0], logits[..., 2] = lse_rest, lse_rest
    batch = {"input_ids": torch.zeros_like(targets), "targets": targets, "completion_mask": (targets != -100).long(),
             "ref": torch.stack([ref[:b], ref[b:]], dim=1)}
    d = SimpleNamespace(beta=0.1, loss="sigmoid", label_smoothing=0.0, nll_weight=w)
    ours, _ = preference_metrics(lambda ids: SimpleNamespace(logits=logits), batch, d)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)
