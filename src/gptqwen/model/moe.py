"""Mixture-of-experts block (Qwen2-MoE / Qwen3-MoE) and its load-balancing losses.

Routing: softmax over all experts in fp32, top-k, optional renormalisation (`norm_topk_prob`). Tokens are
sorted by expert and each expert runs one matmul on its contiguous slice: the Python loop is over experts,
never over tokens. Qwen2-MoE adds a shared expert scaled by a sigmoid gate.

`load_balancing_loss` reproduces transformers' `load_balancing_loss_func`; `global_load_balancing_loss`
sums the expert frequencies over micro-batches and data-parallel ranks first (Qwen, arXiv 2501.11873).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from gptqwen import ops
from gptqwen.config import Config
from gptqwen.model.mlp import MLP


class MoE(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        E, H, I = cfg.n_experts, cfg.n_embd, cfg.moe_intermediate_size
        self.n_experts, self.top_k, self.norm_topk_prob = E, cfg.n_experts_per_tok, cfg.norm_topk_prob
        self.router = nn.Linear(H, E, bias=False)
        # experts stacked like transformers >= 5 keeps them in memory: gate|up [E, 2I, H], down [E, H, I]
        self.w_gate_up = nn.Parameter(torch.empty(E, 2 * I, H))
        self.w_down = nn.Parameter(torch.empty(E, H, I))
        self.shared = None
        if cfg.shared_expert_intermediate_size:
            self.shared = MLP("swiglu", H, cfg.shared_expert_intermediate_size, bias=False)
            self.shared_gate = nn.Linear(H, 1, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, H] -> (y [B, T, H], router_logits [B*T, E])."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits = self.router(x)
        probs = F.softmax(logits, dim=-1, dtype=torch.float32)
        weights, experts = torch.topk(probs, self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights.to(x.dtype)

        flat = experts.reshape(-1)
        order = torch.argsort(flat, stable=True)
        token = order // self.top_k  # which token each sorted slot belongs to
        counts = torch.bincount(flat, minlength=self.n_experts).tolist()
        xs = x[token]
        outs, start = [], 0
        for e, n in enumerate(counts):
            if n == 0:
                continue
            outs.append(F.linear(ops.swiglu(F.linear(xs[start:start + n], self.w_gate_up[e])), self.w_down[e]))
            start += n
        ys = torch.cat(outs) * weights.reshape(-1)[order, None]
        y = torch.zeros_like(x).index_add_(0, token, ys)
        if self.shared is not None:
            y = y + torch.sigmoid(self.shared_gate(x)) * self.shared(x)
        return y.view(shape), logits


def expert_load(router_logits: Sequence[torch.Tensor], n_experts: int, top_k: int,
                attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sum over layers and rows of (top-k counts [E], router probabilities [E], number of rows)."""
    dev = router_logits[0].device
    counts = torch.zeros(n_experts, dtype=torch.float32, device=dev)
    prob_sum = torch.zeros(n_experts, dtype=torch.float32, device=dev)
    rows = torch.zeros((), dtype=torch.float32, device=dev)
    w = None if attention_mask is None else attention_mask.reshape(-1).to(dev, torch.float32)
    for logits in router_logits:
        probs = F.softmax(logits.float(), dim=-1)
        chosen = torch.topk(probs, top_k, dim=-1).indices
        row_w = torch.ones(probs.shape[0], device=dev) if w is None else w
        counts = counts.scatter_add(0, chosen.reshape(-1), row_w.repeat_interleave(top_k))
        prob_sum = prob_sum + (probs * row_w[:, None]).sum(0)
        rows = rows + row_w.sum()
    return counts, prob_sum, rows


def load_balancing_loss(router_logits: Sequence[torch.Tensor], n_experts: int, top_k: int,
                        attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """L_aux = E * sum_e f_e * P_e over all layers' rows (transformers' load_balancing_loss_func)."""
    counts, prob_sum, rows = expert_load(router_logits, n_experts, top_k, attention_mask)
    return n_experts * torch.sum((counts / rows) * (prob_sum / rows))


def global_load_balancing_loss(router_logits_list: Sequence[Sequence[torch.Tensor]], n_experts: int, top_k: int,
                               attention_masks: Sequence[torch.Tensor | None] | None = None,
                               group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Global-batch balancing: expert frequencies f_e summed over all micro-batches (and all data-parallel
    ranks when torch.distributed is initialised) before the product with this rank's mean probabilities.

    `router_logits_list[m]` is `out.router_logits` of micro-batch m. In one process the result equals
    `load_balancing_loss` over the concatenated micro-batches; across ranks, averaging the per-rank losses (as
    DDP averages gradients) gives the loss of the whole global batch.
    """
    masks = attention_masks or [None] * len(router_logits_list)
    counts = prob_sum = rows = None
    for logits, mask in zip(router_logits_list, masks):
        c, p, r = expert_load(logits, n_experts, top_k, mask)
        counts, prob_sum, rows = (c, p, r) if counts is None else (counts + c, prob_sum + p, rows + r)
    local_rows = rows.clone()
    if dist.is_available() and dist.is_initialized():
        stats = torch.cat([counts, rows[None]]).detach()
        dist.all_reduce(stats, group=group)
        counts, rows = stats[:-1], stats[-1]
    return n_experts * torch.sum((counts / rows) * (prob_sum / local_rows))
