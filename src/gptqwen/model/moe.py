"""Mixture-of-experts block (Qwen2-MoE / Qwen3-MoE) and its load-balancing losses.

Routing: softmax over all experts in fp32, top-k, optional renormalisation (`norm_topk_prob`). Tokens are
sorted by expert and each expert runs one matmul on its contiguous slice: the Python loop is over experts,
never over tokens. Qwen2-MoE adds a shared expert scaled by a sigmoid gate.

Balancing, over all MoE layers' rows as transformers counts them: L = E * sum_e f_e * P_e, f_e = C_e / N the
share of top-k choices that went to expert e (sum_e f_e = k), P_e = S_e / N the mean router probability.
`load_balancing_loss` (what the model's `aux_loss` holds) takes both from one forward: transformers'
`load_balancing_loss_func`, per micro-batch (`train.moe_balance=micro`). Qwen3 balances over the global batch
(Qiu et al., arXiv 2501.11873; `train.moe_balance=global`): C and N count every micro-batch of the optimizer
step on every data-parallel rank, f is a constant, and the gradient flows through each micro-batch's S.

How the trainer does it without keeping M graphs alive: with f fixed, L is linear in the micro-batches' S, so
micro-batch m of rank r contributes E * sum_e f_e * S_{r,m,e} * (M * W / N); after the loop's 1/M and DDP's 1/W
averaging the gradients add up to exactly those of L over the whole batch. Only f must be known before the
first backward. With one micro-batch per rank the counts are all-reduced inside that forward (E*L + 1 numbers,
no extra compute); with M > 1 the loop first runs a no-grad forward of each micro-batch to count (one extra
forward per step, no activation memory). The alternatives were worse: keeping every micro-batch's graph until
f is known costs the memory gradient accumulation exists to save, and the paper's buffer (f from the
micro-batches seen so far) is exact only for the last one. `ExpertBalance` holds that state for the training
loop, which installs it with `balancing(...)` around its forwards; `load_balancing_loss` then defers to it, so
every trainer whose loss uses `out.aux_loss` gets it. `global_load_balancing_loss` computes the same loss from
all micro-batches' router logits at once, for loops that keep them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

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
    """Top-k choices per layer and expert [L, E] (constants), router probabilities summed over layers and rows [E],
    and the rows summed over layers; padding (attention_mask 0) counts for nothing."""
    dev = router_logits[0].device
    probs = [F.softmax(logits.float(), dim=-1) for logits in router_logits]
    row_w = torch.ones(probs[0].shape[0], device=dev) if attention_mask is None else attention_mask.reshape(-1).to(dev, torch.float32)
    slot_w = row_w.repeat_interleave(top_k)
    counts = torch.stack([torch.zeros(n_experts, device=dev).scatter_add(0, torch.topk(p, top_k, dim=-1).indices.reshape(-1), slot_w)
                          for p in probs])  # fmt: skip
    prob_sum = sum((p * row_w[:, None]).sum(0) for p in probs)
    return counts, prob_sum, row_w.sum() * len(probs)


def _balance_loss(counts: torch.Tensor, rows: torch.Tensor, prob_sum: torch.Tensor, prob_rows: torch.Tensor) -> torch.Tensor:
    """E * sum_e f_e * P_e from counts [L, E] over `rows` and probabilities [E] summed over `prob_rows`."""
    return counts.shape[-1] * torch.sum((counts.sum(0) / rows) * (prob_sum / prob_rows))


def load_balancing_loss(router_logits: Sequence[torch.Tensor], n_experts: int, top_k: int,
                        attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """L_aux = E * sum_e f_e * P_e over all layers' rows (transformers' load_balancing_loss_func).

    Inside `balancing(b)` (the training loop's forwards) `b` computes it instead: see `ExpertBalance`."""
    if _ACTIVE is not None:
        return _ACTIVE(router_logits, n_experts, top_k, attention_mask)
    counts, prob_sum, rows = expert_load(router_logits, n_experts, top_k, attention_mask)
    return _balance_loss(counts, rows, prob_sum, rows)


class ExpertBalance:
    """The balancing loss of a training run's optimizer steps (`train.moe_balance`: micro | global) and the expert
    load each step measured; see the module docstring for the method. Per step the loop calls `start(M)`; for
    global with M > 1 it then runs `counting()`, a no-grad forward of each micro-batch; then the M training
    forwards inside `balancing(self)`. Afterwards `load()` is the step's choices per MoE layer and expert [L, E]
    over the global batch (both modes), for the metrics. Every MoE forward inside counts: a loss that runs the
    model twice per micro-batch (DPO's chosen and rejected rows) counts both, and with one micro-batch per rank
    `global` then takes f from the first forward alone."""

    def __init__(self, mode: str, group: dist.ProcessGroup | None = None):
        if mode not in ("micro", "global"):
            raise ValueError(f"moe_balance must be micro or global, not {mode!r}")
        self.mode, self.group = mode, group
        self.start(1)

    def start(self, n_micro: int) -> None:
        self.n_micro, self.is_counting, self.reduced = n_micro, False, False
        self.counts: torch.Tensor | None = None  # [L, E] this rank's choices so far; after reduce(), all ranks'
        self.rows: torch.Tensor | None = None

    @property
    def needs_counting(self) -> bool:
        """Whether the global frequencies need the counting pass (global balancing, several micro-batches)."""
        return self.mode == "global" and self.n_micro > 1

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        """The counting pass: forwards inside only count (their aux loss is 0); the counts are then all-reduced."""
        self.is_counting = True
        try:
            with balancing(self):
                yield
        finally:
            self.is_counting = False
        self.reduce()

    def reduce(self) -> None:
        """Sum the counts over the data-parallel ranks (once a step; every rank calls it at the same point)."""
        if self.reduced or self.counts is None:
            return
        if dist.is_available() and dist.is_initialized():
            stats = torch.cat([self.counts.flatten(), self.rows[None]])
            dist.all_reduce(stats, group=self.group)
            self.counts, self.rows = stats[:-1].view_as(self.counts), stats[-1]
        self.reduced = True

    def load(self) -> torch.Tensor | None:
        """This step's top-k choices per MoE layer and expert [L, E] over the global batch (None: no MoE forward)."""
        self.reduce()
        return self.counts

    def _add(self, counts: torch.Tensor, rows: torch.Tensor) -> None:
        self.counts = counts if self.counts is None else self.counts + counts
        self.rows = rows if self.rows is None else self.rows + rows

    @torch.compiler.disable  # Python state and a collective: run eagerly inside a compiled forward
    def __call__(self, router_logits: Sequence[torch.Tensor], n_experts: int, top_k: int,
                 attention_mask: torch.Tensor | None) -> torch.Tensor:
        counts, prob_sum, rows = expert_load(router_logits, n_experts, top_k, attention_mask)
        if self.is_counting:
            self._add(counts, rows)
            return prob_sum.new_zeros(())
        if self.mode == "micro":
            self._add(counts, rows)
            return _balance_loss(counts, rows, prob_sum, rows)
        if not self.reduced:  # one micro-batch per rank: its counts are the whole batch's once all-reduced
            if self.n_micro > 1:
                raise RuntimeError("global balancing over several micro-batches needs ExpertBalance.counting() first")
            self._add(counts, rows)
            self.reduce()
        world = dist.get_world_size(self.group) if dist.is_available() and dist.is_initialized() else 1
        return _balance_loss(self.counts, self.rows, prob_sum, self.rows) * (self.n_micro * world)


_ACTIVE: ExpertBalance | None = None  # set by `balancing` while the training loop's forwards run


@contextlib.contextmanager
def balancing(balance: ExpertBalance | None) -> Iterator[None]:
    """Route `load_balancing_loss` to `balance` inside the block (None: leave it as it is)."""
    global _ACTIVE
    previous = _ACTIVE
    _ACTIVE = balance if balance is not None else previous
    try:
        yield
    finally:
        _ACTIVE = previous


def global_load_balancing_loss(router_logits_list: Sequence[Sequence[torch.Tensor]], n_experts: int, top_k: int,
                               attention_masks: Sequence[torch.Tensor | None] | None = None,
                               group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Global-batch balancing from all micro-batches' router logits at once: expert frequencies f_e summed over
    the micro-batches (and all data-parallel ranks when torch.distributed is initialised) before the product
    with this rank's mean probabilities.

    `router_logits_list[m]` is `out.router_logits` of micro-batch m. In one process the result equals
    `load_balancing_loss` over the concatenated micro-batches; across ranks, averaging the per-rank losses (as
    DDP averages gradients) gives the loss of the whole global batch when every rank has as many rows.
    """
    masks = attention_masks or [None] * len(router_logits_list)
    counts = prob_sum = rows = None
    for logits, mask in zip(router_logits_list, masks):
        c, p, r = expert_load(logits, n_experts, top_k, mask)
        counts, prob_sum, rows = (c, p, r) if counts is None else (counts + c, prob_sum + p, rows + r)
    local_rows = rows.clone()
    if dist.is_available() and dist.is_initialized():
        stats = torch.cat([counts.flatten(), rows[None]]).detach()
        dist.all_reduce(stats, group=group)
        counts, rows = stats[:-1].view_as(counts), stats[-1]
    return _balance_loss(counts, rows, prob_sum, local_rows)
