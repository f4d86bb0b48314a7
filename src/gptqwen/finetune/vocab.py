"""Growing a model's vocabulary by new rows (GPT-1's start/delimiter/extract tokens).

The token embedding and, when untied, the output layer get `n` new rows initialised N(0, std);
the existing rows are copied bit for bit, tying is preserved, and `model.config.vocab_size` follows.
"""

from __future__ import annotations

import torch
from torch import nn


def _find_vocab_layers(model: nn.Module, vocab: int) -> tuple[nn.Module, str, nn.Embedding, list[tuple[nn.Module, str]]]:
    emb_parent, emb_name, emb = None, None, None
    heads = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Embedding) and child.num_embeddings == vocab and emb is None:
                emb_parent, emb_name, emb = parent, name, child
            elif isinstance(child, nn.Linear) and child.out_features == vocab:
                heads.append((parent, name))
    if emb is None:
        raise RuntimeError(f"no token embedding with {vocab} rows found in the model")
    return emb_parent, emb_name, emb, heads


def grow_vocab(model: nn.Module, n: int, std: float = 0.02) -> int:
    """Append `n` rows to the vocabulary of `model`; returns the first new id."""
    old = model.config.vocab_size
    emb_parent, emb_name, emb, heads = _find_vocab_layers(model, old)
    w = emb.weight
    new_emb = nn.Embedding(old + n, w.shape[1], device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new_emb.weight[:old] = w
        nn.init.normal_(new_emb.weight[old:], std=std)
    setattr(emb_parent, emb_name, new_emb)
    for parent, name in heads:
        head = getattr(parent, name)
        if head.weight is w:  # tied: share the grown embedding
            new_head = nn.Linear(head.in_features, old + n, bias=head.bias is not None, device=w.device, dtype=w.dtype)
            new_head.weight = new_emb.weight
        else:
            new_head = nn.Linear(head.in_features, old + n, bias=head.bias is not None,
                                 device=head.weight.device, dtype=head.weight.dtype)
            with torch.no_grad():
                new_head.weight[:old] = head.weight
                nn.init.normal_(new_head.weight[old:], std=std)
        if head.bias is not None:
            with torch.no_grad():
                new_head.bias[:old] = head.bias
                new_head.bias[old:] = 0
        setattr(parent, name, new_head)
    cfg = model.config
    model.config = cfg.replace(vocab_size=old + n) if hasattr(cfg, "replace") else cfg
    return old
