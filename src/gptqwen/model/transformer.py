"""The one decoder-only Transformer for every GPT and Qwen generation, driven by `Config`.

    from gptqwen.config import Config
    from gptqwen.model import Transformer
    model = Transformer(Config.from_name("qwen3-tiny"))
    out = model(input_ids, targets=targets)          # out.logits, out.loss, out.aux_loss
    cache = model.new_cache(batch_size=1, max_len=256)
    out = model(prompt_ids, cache=cache, logits_to_keep=1)   # prefill, then one token at a time

Interface: docs/contracts.md "Model". Family differences are switches read here and in the submodules.
A training forward with targets fuses the LM head with the loss (`ops.linear_cross_entropy`); `out.logits` is
then built on first access.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gptqwen import ops
from gptqwen.config import Config
from gptqwen.errors import UserError
from gptqwen.hf import save_pretrained
from gptqwen.model.attention import Attention, AttnContext, KVCache, build_masks
from gptqwen.model.dca import dca_context
from gptqwen.model.mlp import MLP
from gptqwen.model.moe import MoE, load_balancing_loss
from gptqwen.model.norms import make_norm
from gptqwen.model.rope import Rotary, logn_scale, qwen_ntk_alpha


@dataclass(eq=False)
class ModelOutput:
    """Forward results. A forward with targets returns the loss, not the logits (the loss may even be fused with the
    LM head, `ops.linear_cross_entropy`, so that they are never built): `logits` then runs the head on first access
    (differentiable, same values)."""

    _logits: torch.Tensor | None = field(default=None, repr=False)
    loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    router_logits: tuple[torch.Tensor, ...] | None = None
    hidden: torch.Tensor | None = None
    _head: Callable[[], torch.Tensor] | None = field(default=None, repr=False)

    @property
    def logits(self) -> torch.Tensor:
        if self._logits is None and self._head is not None:
            self._logits, self._head = self._head(), None
        return self._logits


class Block(nn.Module):
    """Attention + MLP with residuals; pre-norm (GPT-2, Qwen) or post-norm (GPT-1)."""

    def __init__(self, cfg: Config, i: int) -> None:
        super().__init__()
        self.pre_norm = cfg.pre_norm
        self.ln_1 = make_norm(cfg.norm, cfg.n_embd, cfg.norm_eps)
        self.attn = Attention(cfg, i)
        self.ln_2 = make_norm(cfg.norm, cfg.n_embd, cfg.norm_eps)
        self.is_moe = cfg.is_moe_layer(i)
        self.mlp = MoE(cfg) if self.is_moe else MLP(cfg.mlp, cfg.n_embd, cfg.intermediate_size, cfg.bias)

    def _ffn(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.mlp(x) if self.is_moe else (self.mlp(x), None)

    def forward(self, x: torch.Tensor, ctx: AttnContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.pre_norm:
            x = x + self.attn(self.ln_1(x), ctx)
            y, router_logits = self._ffn(self.ln_2(x))
            return x + y, router_logits
        x = self.ln_1(x + self.attn(x, ctx))
        y, router_logits = self._ffn(x)
        return self.ln_2(x + y), router_logits


class Transformer(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        cfg = self.config = config
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.max_seq_len, cfg.n_embd) if cfg.pos == "learned" else None
        self.rotary = Rotary(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, cfg.max_seq_len) if cfg.pos == "rope" else None
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = make_norm(cfg.norm, cfg.n_embd, cfg.norm_eps) if cfg.pre_norm else None
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        if not self.wte.weight.is_meta:  # a meta-built model is about to be loaded: nothing to initialise
            self.apply(self._init_module)
            self._init_residual_projections()

    # ---- initialisation -----------------------------------------------------------------------
    def _init_module(self, m: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, MoE):
            nn.init.normal_(m.w_gate_up, 0.0, std)
            nn.init.normal_(m.w_down, 0.0, std)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _init_residual_projections(self) -> None:
        # GPT-2: projections that write into the residual stream get std / sqrt(2 * n_layer)
        std = self.config.init_std / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.proj.weight", "down.weight", "w_down")):
                nn.init.normal_(p, 0.0, std)

    # ---- public helpers -----------------------------------------------------------------------
    def num_params(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.wte.weight.numel() + (self.wpe.weight.numel() if self.wpe is not None else 0)
        return n

    def new_cache(self, batch_size: int, max_len: int, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None) -> KVCache:
        """A static KV cache for `batch_size` sequences of up to `max_len` tokens (prompt + generation)."""
        cfg = self.config
        if cfg.pos == "learned" and max_len > cfg.max_seq_len:
            max_len = cfg.max_seq_len  # learned positions cannot go further anyway
        ref = self.wte.weight
        return KVCache(cfg.n_layer, batch_size, cfg.n_kv_head, max_len, cfg.head_dim,
                       dtype or ref.dtype, device or ref.device)

    def save_pretrained(self, path: str) -> None:
        """Write a Hugging Face checkpoint directory (config.json + model.safetensors)."""
        save_pretrained(self, path)

    # ---- forward ------------------------------------------------------------------------------
    def _positions(self, B: int, T: int, past: int, attention_mask, document_ids, device) -> torch.Tensor:
        if attention_mask is not None:  # left padding: positions count real tokens only
            return (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)[:, -T:]
        idx = torch.arange(past, past + T, device=device)
        if document_ids is not None:  # packed documents restart their positions at each boundary
            starts = torch.ones_like(document_ids, dtype=torch.bool)
            starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
            first = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
            return idx - first
        return idx.expand(B, T)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                document_ids: torch.Tensor | None = None, cache: KVCache | None = None,
                logits_to_keep: int = 0, return_hidden: bool = False,
                inputs_embeds: torch.Tensor | None = None) -> ModelOutput:
        """`inputs_embeds` [B, T, n_embd] replaces the token embeddings of `input_ids` (a VLM scatters image
        features into them); `input_ids` still gives the shape and device."""
        cfg = self.config
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        device = input_ids.device
        if document_ids is not None and cache is not None:
            raise ValueError("document_ids (packed sequences) cannot be combined with a KV cache")
        if attention_mask is not None and attention_mask.shape[-1] != past + T:
            raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} slots, expected cache fill + T = {past + T}")
        explicit_positions = position_ids is not None
        if position_ids is None:
            position_ids = self._positions(B, T, past, attention_mask, document_ids, device)
        # an upper bound of the positions: static with a cache (no host sync per decode step, no graph break
        # under torch.compile: positions never exceed cache slots); read from the ids only without one
        if cache is not None:
            bound = cache.max_len
        else:
            bound = max(past + T, int(position_ids.max()) + 1 if explicit_positions else 0)
        longest = past + T if cache is not None else bound
        if cfg.pos == "learned" and longest > cfg.max_seq_len:
            raise UserError(f"sequence of {longest} tokens is longer than the model's context of {cfg.max_seq_len}")

        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds
        cos = sin = q_scale = dca = None
        if self.wpe is not None:
            x = x + self.wpe(position_ids)
        else:
            alpha = 1.0
            if cfg.dynamic_ntk and not self.training:
                alpha = qwen_ntk_alpha(past + T, cfg.max_seq_len) if past == 0 else cache.ntk_alpha
                if cache is not None:
                    cache.ntk_alpha = alpha
            gather = explicit_positions or attention_mask is not None or document_ids is not None
            cos, sin = self.rotary(position_ids if gather else None, bound, device, alpha, start=past, length=T)
            cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # once per forward, not per layer
            dca = dca_context(cfg, self.rotary, position_ids, past, T, attention_mask, document_ids, x.dtype)
            if cfg.logn_attn and not self.training and past + T > cfg.max_seq_len:
                q_scale = logn_scale(torch.arange(past, past + T, device=device), cfg.max_seq_len)[None, :, None, None]
        dense_mask, local_mask, is_causal = build_masks(cfg, T, past, attention_mask, document_ids, device)
        ctx = AttnContext(cos, sin, dense_mask, local_mask, is_causal, cache, q_scale, dca)

        router_logits = []
        for block in self.blocks:
            x, rl = block(x, ctx)
            if rl is not None:
                router_logits.append(rl)
        if self.ln_f is not None:
            x = self.ln_f(x)
        if cache is not None:
            cache.length = past + T

        logits = loss = head = None
        if targets is not None and not logits_to_keep:
            # the logits are not an output of a training forward: a compiled graph would otherwise return them and
            # its backward add a zero-filled [B, T, vocab] gradient for them; they are rebuilt on first access
            if self._fused_loss_applies(x):
                loss = ops.linear_cross_entropy(x.flatten(0, 1), self.lm_head.weight, targets.flatten())
            else:
                loss = F.cross_entropy(self.lm_head(x).flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
            head = lambda: self.lm_head(x)  # noqa: E731
        else:
            logits = self.lm_head(x[:, -logits_to_keep:] if logits_to_keep else x)
            if targets is not None:
                loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        aux = None
        if router_logits and cache is None:  # balancing is a training signal: skip it while decoding
            mask = attention_mask[:, -T:] if attention_mask is not None else None
            aux = cfg.router_aux_loss_coef * load_balancing_loss(router_logits, cfg.n_experts, cfg.n_experts_per_tok, mask)
        return ModelOutput(logits, loss, aux, tuple(router_logits) or None, x if return_hidden else None, head)

    def _fused_loss_applies(self, x: torch.Tensor) -> bool:
        """Whether the loss may skip the logits: a plain head (not quantised, LoRA-wrapped or hooked) that
        `ops.linear_cross_entropy` fuses (training in fp32, or in bf16 on the CPU)."""
        head = self.lm_head
        return (type(head) is nn.Linear and head.bias is None and not (head._forward_hooks or head._forward_pre_hooks)
                and ops.fuses_linear_cross_entropy(x, head.weight))
