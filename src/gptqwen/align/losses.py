"""Alignment losses on per-sequence / per-token log-probabilities (formulas: the DPO, IPO, DeepSeekMath GRPO,
DAPO and Dr. GRPO papers; the Qwen2.5 and Qwen3 technical reports).

    from gptqwen.align.losses import dpo_loss, reward_loss, group_advantages, grpo_loss
    loss, chosen_r, rejected_r = dpo_loss(pc, pr, rc, rr, beta=0.1, kind="sigmoid")

Pure tensor functions, no model: the trainers (`align.dpo`, `align.reward`, `align.grpo`) compute the
log-probs and call these. tests/test_align_losses.py checks each against TRL's own trainer code on the
same inputs (1e-5):

- DPO: `delta = (logπ(y_w) − logπ_ref(y_w)) − (logπ(y_l) − logπ_ref(y_l))`; sigmoid `−logσ(β·delta)`,
  with label smoothing ε (cDPO) `−(1−ε)·logσ(β·delta) − ε·logσ(−β·delta)`; hinge `relu(1 − β·delta)`;
  IPO `(delta' − 1/(2β))²` where delta' uses log-ratios averaged per completion token (as TRL does).
- Reward model (Bradley–Terry): `−logσ(r_c − r_r − margin)` + optional centring `c·mean((r_c + r_r)²)`.
- GRPO: group-normalised advantages (std of the group, of the batch, or none = Dr. GRPO), the clipped
  ratio objective, the k3 KL estimator, and the aggregations grpo / bnpo / dr_grpo / dapo.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DPO_LOSSES = ("sigmoid", "ipo", "hinge")
GRPO_LOSSES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1, kind: str = "sigmoid", label_smoothing: float = 0.0,
             chosen_tokens: torch.Tensor | None = None,
             rejected_tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Per-pair DPO losses and the implicit rewards `β·(logπ − logπ_ref)` of chosen and rejected.

    Inputs are per-sequence log-probs summed over completion tokens, shape [B]. IPO also needs the
    completion token counts (`chosen_tokens`, `rejected_tokens`)."""
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    delta = chosen_ratio - rejected_ratio
    if kind == "sigmoid":
        losses = -F.logsigmoid(beta * delta)
        if label_smoothing:
            losses = (1 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-beta * delta)
    elif kind == "hinge":
        losses = torch.relu(1 - beta * delta)
    elif kind == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("the IPO loss needs the completion token counts")
        per_token = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        losses = (per_token - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss '{kind}'; choose one of {', '.join(DPO_LOSSES)}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def reward_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None,
                center_coef: float | None = None) -> torch.Tensor:
    """Bradley–Terry loss of scalar rewards [B] (mean over pairs), with optional margin and centring."""
    diff = chosen - rejected if margin is None else chosen - rejected - margin
    loss = -F.logsigmoid(diff).mean()
    if center_coef:
        loss = loss + center_coef * torch.mean((chosen + rejected) ** 2)
    return loss


def _unbiased_std(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sample std ignoring NaNs (Bessel-corrected; NaN with fewer than two values)."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dim, keepdim=True)
    var = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True) * count / (count - 1)
    var = torch.where(count > 1, var, torch.full_like(var, float("nan")))
    return var.sqrt() if dim is None else var.sqrt().squeeze(dim)


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """GRPO advantages `(r − mean_group) / (std + 1e-4)` for rewards [N·G] laid out group after group.

    `scale`: std of each group (GRPO), of the whole batch, or none (Dr. GRPO). NaN rewards (unscorable
    completions) stay out of the statistics and get advantage 0."""
    if scale not in SCALE_REWARDS:
        raise ValueError(f"unknown scale '{scale}'; choose one of {', '.join(SCALE_REWARDS)}")
    grouped = rewards.view(-1, group_size)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(group_size)
    adv = rewards - mean
    if scale == "group":
        std = _unbiased_std(grouped, dim=1).repeat_interleave(group_size) if group_size > 1 else torch.zeros_like(rewards)
        adv = adv / (std + 1e-4)
    elif scale == "batch":
        std = _unbiased_std(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
        adv = adv / (std + 1e-4)
    return torch.nan_to_num(adv, nan=0.0)


def group_variance(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Population variance of each group's rewards [N] (Qwen2.5's query selection orders by it)."""
    return rewards.view(-1, group_size).var(dim=1, unbiased=False)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(π‖π_ref) estimate `exp(ref − logp) − (ref − logp) − 1` (Schulman's k3; ≥ 0)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              kind: str = "dapo", epsilon_low: float = 0.2, epsilon_high: float = 0.2, beta: float = 0.0,
              ref_logp: torch.Tensor | None = None, max_completion_length: int | None = None,
              num_items: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
    """The clipped GRPO objective over completion tokens, and its statistics (kl, clip ratios).

    `logp`, `old_logp`, `ref_logp`, `mask`: [B, T]; `advantages`: [B]. Aggregation `kind`: grpo (mean per
    sequence, then over sequences), bnpo (mean over the batch's tokens), dr_grpo (sum ÷ B·max_completion_length),
    dapo (sum ÷ `num_items`, the active tokens of the whole generation batch; default: this batch's)."""
    mask = mask.to(logp.dtype)
    adv = advantages.unsqueeze(1)
    ratio = torch.exp(logp - old_logp)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    stats: dict[str, torch.Tensor] = {}
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs the reference log-probs")
        kl = k3_kl(logp, ref_logp)
        per_token = per_token + beta * kl
        stats["kl"] = ((kl * mask).sum() / mask.sum().clamp(min=1.0)).detach()
    if kind == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif kind == "bnpo":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1.0)
    elif kind == "dr_grpo":
        loss = (per_token * mask).sum() / (per_token.size(0) * (max_completion_length or per_token.size(1)))
    elif kind == "dapo":
        loss = (per_token * mask).sum() / max(float(num_items if num_items is not None else mask.sum()), 1.0)
    else:
        raise ValueError(f"unknown GRPO loss '{kind}'; choose one of {', '.join(GRPO_LOSSES)}")
    with torch.no_grad():
        low = ((ratio < 1 - epsilon_low) & (adv < 0)).to(mask.dtype)
        high = ((ratio > 1 + epsilon_high) & (adv > 0)).to(mask.dtype)
        n = mask.sum().clamp(min=1.0)
        stats["clip_low"] = (low * mask).sum() / n
        stats["clip_high"] = (high * mask).sum() / n
    return loss, stats
