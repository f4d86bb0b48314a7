"""A plain PyTorch GPT-2, the kind of model file users compare training speed against (nanoGPT style).

Written for the benchmarks only: pre-norm blocks with LayerNorm, fused QKV, `F.scaled_dot_product_attention`
(causal), GELU (tanh) MLP, learned positions, tied embeddings, no dropout, and a full-vocabulary cross-entropy.
`load_from(model)` copies a gptqwen GPT-2-layout model's weights so both sides start from the same numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln_1 = nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.fc, self.fc_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(D, dim=2)
        q, k, v = (t.view(B, T, self.n_head, D // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, D))
        return x + self.fc_proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class PlainGPT2(nn.Module):
    def __init__(self, vocab_size: int, n_layer: int, n_embd: int, n_head: int, max_seq_len: int) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(max_seq_len, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)

    @torch.no_grad()
    def load_from(self, model: nn.Module) -> PlainGPT2:
        """Copy the weights of a gptqwen GPT-2-layout `Transformer` (names matched by position in each block)."""
        ours = dict(model.named_parameters())
        self.wte.weight.copy_(ours["wte.weight"])
        self.wpe.weight.copy_(ours["wpe.weight"])
        self.ln_f.load_state_dict({"weight": ours["ln_f.weight"], "bias": ours["ln_f.bias"]})
        for i, block in enumerate(self.blocks):
            src = [p for name, p in ours.items() if name.startswith(f"blocks.{i}.")]
            dst = list(block.parameters())
            if [p.shape for p in src] != [p.shape for p in dst]:
                raise ValueError("load_from expects a gptqwen GPT-2-layout model of the same shape")
            for d, s in zip(dst, src):
                d.copy_(s)
        return self
