"""Sampling parameters and the batched logits → next-token step.

`SamplingParams` holds one request's settings and validates them (bad values → UserError).
`Sampler` turns the list of a batch's params into per-row tensors once, then each decode step does
penalties → greedy or (temperature → top-k → top-p → min-p → draw) for all rows at once. Each filter is a
threshold on the logit (tokens tied with the last kept one stay), found on the row's largest logits rather than a
full sort (exact: see `Sampler.cutoff`). The draw is an inverse CDF over the kept probabilities in token-id order
with one uniform from the row's own `torch.Generator`, so a seeded request gives the same tokens whatever else
shares its batch.
Conventions follow vLLM/OpenAI: repetition penalty (CTRL/transformers: divide positive logits, multiply
negative ones) counts prompt and output tokens; presence and frequency penalties count output tokens.
Log-probs are of the model's raw distribution (before penalties and temperature).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

from gptqwen.errors import UserError

# One default everywhere a user does not choose: SamplingParams, `gptqwen generate` / `chat`, and the trainer's
# samples (`train.temperature`) — between Qwen3's recommended 0.6 (thinking) and 0.7 (non-thinking).
# Deliberately different: the HTTP server (1.0, the OpenAI API's default, which clients expect), GRPO rollouts and
# synthetic-data generation (1.0: the model's own distribution), and evaluation (0, greedy).
DEFAULT_TEMPERATURE = 0.7


@dataclass
class SamplingParams:
    """Settings of one generation request. `temperature=0` means greedy decoding."""

    max_new_tokens: int = 256
    temperature: float = DEFAULT_TEMPERATURE
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: Sequence[str] = ()  # stop strings; the text ends before the first one
    stop_token_ids: Sequence[int] = ()  # in addition to the tokenizer's end-of-sequence tokens
    ignore_eos: bool = False
    logprobs: int | None = None  # None = off; 0 = chosen token only; k = also the k most likely tokens
    truncate_prompt: bool = False  # keep the end of a prompt longer than the context instead of failing

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        checks = [
            ("max_new_tokens", self.max_new_tokens >= 1, "an integer >= 1"),
            ("temperature", math.isfinite(self.temperature) and self.temperature >= 0, "a number >= 0"),
            ("top_k", self.top_k >= 0, "an integer >= 0 (0 = off)"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("min_p", 0 <= self.min_p < 1, "in [0, 1)"),
            ("repetition_penalty", math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0, "> 0"),
            ("presence_penalty", -2 <= self.presence_penalty <= 2, "in [-2, 2]"),
            ("frequency_penalty", -2 <= self.frequency_penalty <= 2, "in [-2, 2]"),
            ("logprobs", self.logprobs is None or 0 <= self.logprobs <= 20, "None or an integer in [0, 20]"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise UserError(f"sampling parameter {name}={getattr(self, name)!r} is invalid; it must be {want}")
        if any(not s for s in self.stop):
            raise UserError("stop strings must be non-empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def replace(self, **changes) -> SamplingParams:
        return replace(self, **changes)


@dataclass
class Draw:
    """The tokens chosen in one step, with log-probs when asked for."""

    tokens: torch.Tensor  # [B] long
    logprobs: torch.Tensor | None = None  # [B] raw log-prob of each chosen token
    top: list[list[tuple[int, float]]] | None = None  # per row: the k most likely (token, log-prob)


@dataclass
class Sampler:
    """Per-row sampling state of one batch: settings as tensors, generators, token counts for penalties."""

    params: list[SamplingParams]
    vocab_size: int
    device: torch.device
    counts_all: torch.Tensor | None = field(default=None, init=False)  # prompt + output, for repetition
    counts_out: torch.Tensor | None = field(default=None, init=False)  # output only, presence/frequency

    def __post_init__(self) -> None:
        p, dev = self.params, self.device
        col = lambda xs: torch.tensor(xs, dtype=torch.float32, device=dev)[:, None]  # noqa: E731
        self.greedy = torch.tensor([q.greedy for q in p], device=dev)
        self.all_greedy = bool(self.greedy.all())
        self.temperature = col([q.temperature if q.temperature > 0 else 1.0 for q in p])
        self.top_k = torch.tensor([q.top_k if q.top_k > 0 else self.vocab_size for q in p], device=dev)
        self.top_p, self.min_p = col([q.top_p for q in p]), col([q.min_p for q in p])
        self.use_top_k = any(0 < q.top_k < self.vocab_size for q in p)
        self.use_top_p = any(q.top_p < 1 for q in p)
        self.use_min_p = any(q.min_p > 0 for q in p)
        self.repetition = col([q.repetition_penalty for q in p])
        self.presence, self.frequency = col([q.presence_penalty for q in p]), col([q.frequency_penalty for q in p])
        self.use_repetition = any(q.repetition_penalty != 1 for q in p)
        self.use_out_penalty = any(q.presence_penalty or q.frequency_penalty for q in p)
        self.top_n = max((q.logprobs or 0) for q in p)
        self.want_logprobs = any(q.logprobs is not None for q in p)
        self.generators = []
        for q in p:
            # Unseeded rows still get their own generator, seeded from the global RNG, so
            # `torch.manual_seed` makes a whole run reproducible.
            seed = q.seed if q.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
            g = torch.Generator(device=dev)
            g.manual_seed(seed)
            self.generators.append(g)

    def observe_prompt(self, prompts: list[list[int]]) -> None:
        if self.use_repetition:
            self.counts_all = torch.zeros(len(prompts), self.vocab_size, dtype=torch.int32, device=self.device)
            for i, ids in enumerate(prompts):
                t = torch.tensor(ids, dtype=torch.long, device=self.device)
                self.counts_all[i].index_add_(0, t, torch.ones_like(t, dtype=torch.int32))
        if self.use_out_penalty:
            self.counts_out = torch.zeros(len(prompts), self.vocab_size, dtype=torch.int32, device=self.device)

    def observe(self, tokens: torch.Tensor) -> None:
        """Count the tokens just appended to each row (sampled or forced)."""
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        for counts in (self.counts_all, self.counts_out):
            if counts is not None:
                counts[rows, tokens] += 1

    def __call__(self, logits: torch.Tensor) -> Draw:
        """Choose one token per row from `logits` [B, V] (any float dtype)."""
        raw = logits.float()
        x = raw
        if self.counts_all is not None:
            seen = self.counts_all > 0
            x = torch.where(seen, torch.where(x > 0, x / self.repetition, x * self.repetition), x)
        if self.counts_out is not None:
            c = self.counts_out.float()
            x = x - self.presence * (c > 0) - self.frequency * c
        tokens = x.argmax(-1)
        if not self.all_greedy:
            tokens = torch.where(self.greedy, tokens, self._draw(x))
        draw = Draw(tokens)
        if self.want_logprobs:
            lp = torch.log_softmax(raw, -1)
            draw.logprobs = lp.gather(1, tokens[:, None])[:, 0]
            if self.top_n:
                v, i = lp.topk(self.top_n, dim=-1)
                draw.top = [list(zip(ii.tolist(), vv.tolist())) for ii, vv in zip(i, v)]
        return draw

    def _draw(self, x: torch.Tensor) -> torch.Tensor:
        x = x / self.temperature
        top = x.amax(-1, keepdim=True)
        weights = (x - top).exp_()  # unnormalised probabilities; the top token has weight 1
        if self.use_top_k or self.use_top_p or self.use_min_p:
            weights.masked_fill_(x < self.cutoff(x, top, weights), 0.0)
        # Inverse CDF in token-id order with one uniform per row from the row's own generator: a row's token
        # depends only on its logits, its settings and its generator, never on the rest of the batch.
        u = torch.cat([torch.rand(1, generator=g, device=g.device) for g in self.generators]).to(x.device)
        cdf = weights.cumsum_(-1)
        tokens = torch.searchsorted(cdf, u[:, None] * cdf[:, -1:], right=True)[:, 0]
        over = tokens >= x.shape[-1]  # u * total rounded up to total: take the last token with weight
        if bool(over.any()):
            tokens = torch.where(over, cdf.argmax(-1), tokens)
        return tokens

    def cutoff(self, x: torch.Tensor, top: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The smallest logit each row keeps after top-k, top-p and min-p ([B, 1]; -inf = keeps all).

        `x` are the tempered logits, `top` their row maxima, `weights` exp(x - top). Every filter is a threshold
        on the logit, so tokens tied with the last kept one are kept too (top-k as in transformers/vLLM). The
        filters look at a candidate set, a row's k0 largest logits, widened (for the rows that need it) until the
        threshold lies above the smallest candidate: then nothing outside the candidates could be kept, and the
        result equals a full sort's. Prefix sums over the candidates do not depend on k0, so neither does a row's
        threshold, whatever the other rows make k0.
        """
        V = x.shape[-1]
        by_k = self.top_k < V
        filtering = by_k | (self.top_p[:, 0] < 1) | (self.min_p[:, 0] > 0)
        todo = torch.nonzero(filtering & ~self.greedy)[:, 0]  # greedy rows are overwritten by the argmax
        cut = torch.full_like(top, -math.inf)
        z_row = weights.sum(-1, keepdim=True).double() if self.use_top_p else None  # torch sums pairwise: ~1e-7
        # The candidates must hold each top-k row's k tokens and one more; rows with only top-p/min-p start wider.
        ks = self.top_k[todo][by_k[todo]]
        k0 = int(ks.max()) + 1 if len(ks) else 0
        k0 = max(k0, 256) if len(ks) < len(todo) else k0
        while len(todo):
            k0 = min(V, k0)
            sub = x if len(todo) == len(x) else x[todo]
            vals = sub.topk(k0, dim=-1).values  # sorted, largest first
            c, exact = self._threshold(todo, vals, top[todo], None if z_row is None else z_row[todo], V)
            if k0 == V:
                exact[:] = True
            cut[todo[exact[:, 0]]] = c[exact[:, 0]]
            todo, k0 = todo[~exact[:, 0]], k0 * 8
        return cut

    def _threshold(
        self, rows: torch.Tensor, vals: torch.Tensor, top: torch.Tensor, z_row: torch.Tensor | None, V: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`cutoff` for `rows` on their candidates `vals` [R, k0], and which thresholds are exact ([R, 1] bools)."""
        top_k, top_p, min_p = self.top_k[rows, None], self.top_p[rows], self.min_p[rows]
        cut = torch.full_like(top, -math.inf)
        by_k = top_k < V
        if self.use_top_k:
            cut = torch.where(by_k, vals.gather(1, top_k.clamp(max=vals.shape[-1]) - 1), cut)
        # top-p's normaliser needs all the tokens top-k keeps: ties of the k-th logit may reach past the candidates
        k_inside = ~by_k | (cut > vals[:, -1:])
        if self.use_top_p:
            w = (vals - top).double().exp()
            c = w.cumsum(-1)
            # normaliser: the mass top-k keeps (all of it among the candidates), else the whole row's
            z = torch.where(by_k, c.gather(1, (vals >= cut).sum(-1, keepdim=True) - 1), z_row)
            # mass strictly before each candidate; the first of a run of ties sees the mass of larger logits only
            before = torch.cat([torch.zeros_like(c[:, :1]), c[:, :-1]], -1) / z
            last = vals.gather(1, (before < top_p).sum(-1, keepdim=True) - 1)
            cut = torch.where(top_p < 1, torch.maximum(cut, last), cut)
        if self.use_min_p:
            # p_i >= min_p * p_max  <=>  x_i >= x_max + log(min_p); renormalising after top-k/top-p keeps ratios
            cut = torch.where(min_p > 0, torch.maximum(cut, top + min_p.clamp(min=1e-30).log()), cut)
        return cut, k_inside & (cut > vals[:, -1:])
