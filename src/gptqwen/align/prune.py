"""Depth, head and width pruning of a trained model to a smaller shape, the starting point of a distillation from it
(Minitron: Muralidharan et al. 2024, "Compact Language Models via Pruning and Knowledge Distillation"; the recipe
behind Llama 3.2 1B/3B and the Minitron models).

    cal = calibration_ids(tok, synthetic=256)
    student, report = prune_model(teacher, cal, n_embd=64, head_dim=16, intermediate_size=192)
    shallow, report = prune_model(teacher, cal, n_layer=3)      # drop the blocks that change their input least
    fewer, report = prune_model(teacher, cal, n_head=4)         # keep the 4 query heads that write the most

Depth (`n_layer`): each block's importance is 1 − the mean cosine between the residual stream entering and leaving it
on the calibration text (Minitron's and ShortGPT's block importance); the least important blocks are removed and the
rest keep their order. Heads (`n_head`, query heads; the KV heads stay): each head's importance is the mean |attention
output| of its dimensions times the norms of the output projection's columns they feed (what the head writes to the
residual stream); every KV group keeps its `n_head / n_kv_head` most important query heads. Every width is then
ranked by its mean absolute activation in the kept blocks and heads, and the top ones are kept:
- residual channels (`n_embd`): the residual stream entering each block, summed over blocks;
- MLP neurons (`intermediate_size`): the input of the MLP's output projection (SiLU(gate)·up, or GELU(fc));
- value dimensions of each KV head (`head_dim`): the attention output of its query heads times the norm of the
  output projection's column;
- query/key dimensions: with RoPE, the head's highest rotary frequencies (the first `head_dim / 2` of each half of
  the rotate-half layout), and `rope_theta` becomes θ^(new / old) so that the smaller head rotates them at exactly
  the teacher's frequencies (f_j = θ^(-2j / d)); without RoPE, ranked by mean |q|·|k| over the KV head's group.
The kept slices of every weight (norm weights included) are copied into a model of the smaller shape. The pruned
model is a poor model at first; distillation from its teacher (`gptqwen distill --from`) restores it within a few
hundred steps, because it keeps the teacher's circuits (the reasoning demo: 0.055 → 1.000 in 270 steps).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from gptqwen.config import Config, config_from_hf
from gptqwen.errors import UserError
from gptqwen.model import Transformer
from gptqwen.utils import read_jsonl

PRUNABLE = ("n_layer", "n_head", "n_embd", "head_dim", "intermediate_size")


def pruned_config(cfg: Config, **shape: int) -> Config:
    """The teacher's config with the given sizes (each ≤ the teacher's); a UserError for anything else."""
    bad = sorted(set(shape) - set(PRUNABLE))
    if bad:
        raise UserError(f"cannot prune {', '.join(bad)}: pruning changes {', '.join(PRUNABLE)} only (the KV heads "
                        "stay the teacher's)")  # fmt: skip
    if cfg.n_experts:
        raise UserError("pruning mixture-of-experts models is not supported; prune a dense model")
    old = {k: getattr(cfg, k) for k in PRUNABLE}
    new = {**old, **{k: v for k, v in shape.items() if v is not None}}
    for k, v in new.items():
        if not isinstance(v, int) or not 1 <= v <= old[k]:
            raise UserError(f"{k}={v} must be a whole number from 1 to the teacher's {old[k]}")
    if new["n_head"] % cfg.n_kv_head:
        raise UserError(f"n_head={new['n_head']} must be a multiple of the {cfg.n_kv_head} KV heads (each KV group keeps "
                        "the same number of query heads)")
    if new["n_layer"] != old["n_layer"] and cfg.local_layers != "none":
        raise UserError(f"this model alternates dense and banded attention layers (local_layers={cfg.local_layers}), "
                        "which removing blocks would reorder; keep n_layer")
    rope_theta = cfg.rope_theta
    if new["head_dim"] != old["head_dim"] and cfg.pos != "rope" and cfg.qk_norm:
        raise UserError("pruning head_dim of a model with q/k norms but no RoPE is not supported; keep head_dim")
    if new["head_dim"] != old["head_dim"] and cfg.pos == "rope":
        if new["head_dim"] % 2:
            raise UserError(f"head_dim={new['head_dim']} must be even: RoPE rotates pairs of dimensions")
        if cfg.rope_scaling or cfg.dca or cfg.dynamic_ntk:
            raise UserError("this model scales RoPE (rope_scaling, DCA or dynamic NTK), whose frequencies depend on "
                            "head_dim; keep head_dim when pruning it")  # fmt: skip
        rope_theta = cfg.rope_theta ** (new["head_dim"] / old["head_dim"])  # the kept frequencies, unchanged
    return dataclasses.replace(cfg, rope_theta=rope_theta, **new)


def calibration_ids(tok, synthetic: int | None = None, data: str | None = None, seed: int = 0,
                    max_len: int = 256) -> list[list[int]]:  # fmt: skip
    """Token ids of the calibration texts: `synthetic` built-in reasoning conversations (both modes, in the chat
    template), or the rows of `data` — a JSONL file of {"messages": [...]} or {"text": ...} rows, or a text file
    (one text per paragraph) — each cut to `max_len` tokens."""
    if (synthetic is None) == (data is None):
        raise UserError("give the calibration texts: --synthetic N (built-in problems) or --data FILE")
    if synthetic is not None:
        from gptqwen.finetune.synthetic import reasoning_conversations

        if synthetic < 1:
            raise UserError(f"--synthetic {synthetic}: give at least one calibration conversation")
        rows = [tok.apply_chat_template(c["messages"], tokenize=True) for c in reasoning_conversations(synthetic, seed)]
    else:
        rows = _data_rows(tok, Path(data))
    rows = [r[:max_len] for r in rows if r]
    if not rows:
        raise UserError(f"calibration data '{data}' has no text; pass a file with at least one non-empty text")
    return rows


def _data_rows(tok, path: Path) -> list[list[int]]:
    if path.suffix == ".jsonl":
        rows = []
        for i, row in read_jsonl(path, "calibration data"):
            if isinstance(row.get("messages"), list):
                rows.append(tok.apply_chat_template(row["messages"], tokenize=True))
            elif isinstance(row.get("text"), str):
                rows.append(tok.encode(row["text"]))
            else:
                raise UserError(f"{path}:{i}: a calibration row needs \"messages\" (a chat) or \"text\" (a string)")
        return rows
    if not path.is_file():
        raise UserError(f"calibration data '{path}' is not a file; pass a .jsonl or text file")
    return [tok.encode(p) for p in path.read_text(encoding="utf-8", errors="replace").split("\n\n") if p.strip()]


def activations(model: Transformer, rows: list[list[int]]) -> dict[str, torch.Tensor]:
    """Mean |activation| per channel over all calibration tokens, at the points `prune_model` ranks, and each block's
    importance `block.{i}` (1 − mean cosine of the residual stream entering and leaving it)."""
    sums: dict[str, torch.Tensor] = {}
    count = 0

    def add(name: str, x: torch.Tensor) -> None:
        sums[name] = sums.get(name, 0) + x.detach().abs().flatten(0, -2).float().sum(0)

    def importance(i: int, x: torch.Tensor, y: torch.Tensor) -> None:
        cos = torch.nn.functional.cosine_similarity(x.detach().float(), y.detach().float(), dim=-1)
        sums[f"block.{i}"] = sums.get(f"block.{i}", 0) + (1 - cos).sum()

    handles = []
    for i, b in enumerate(model.blocks):
        out_proj = b.mlp.down if model.config.mlp == "swiglu" else b.mlp.proj
        handles += [
            b.register_forward_pre_hook(lambda m, a, i=i: add(f"resid.{i}", a[0])),
            b.register_forward_hook(lambda m, a, y, i=i: importance(i, a[0], y[0])),
            out_proj.register_forward_pre_hook(lambda m, a, i=i: add(f"mlp.{i}", a[0])),
            b.attn.proj.register_forward_pre_hook(lambda m, a, i=i: add(f"attn.{i}", a[0])),
            b.attn.qkv.register_forward_hook(lambda m, a, y, i=i: add(f"qkv.{i}", y)),
        ]
    try:
        with torch.no_grad():
            for r in rows:
                model(torch.tensor([r], device=model.wte.weight.device))
                count += len(r)
    finally:
        for h in handles:
            h.remove()
    return {k: v / max(1, count) for k, v in sums.items()}


def _top(score: torch.Tensor, k: int) -> torch.Tensor:
    return score.topk(k).indices.sort().values


def prune_model(model: Transformer, rows: list[list[int]], **shape: int) -> tuple[Transformer, dict]:
    """(the pruned model, a report): `model` cut to `shape` (the sizes of `PRUNABLE`) by activations on `rows`."""
    cfg = model.config
    new = pruned_config(cfg, **shape)
    act = activations(model.eval(), rows)
    hq, hk, d, ds = cfg.n_head, cfg.n_kv_head, cfg.head_dim, new.head_dim
    group, kept_group = hq // hk, new.n_head // hk
    importance = torch.stack([act[f"block.{i}"] for i in range(cfg.n_layer)])
    layers = _top(importance, new.n_layer).tolist()  # the kept blocks, in their order
    keep_c = _top(sum(act[f"resid.{i}"] for i in layers), new.n_embd)
    src = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, t in src.items():
        if key.split(".")[0] in ("wte", "wpe", "lm_head"):
            out[key] = t[:, keep_c]
        elif key.startswith("ln_f."):
            out[key] = t[keep_c]
    heads_kept: list[list[int]] = []
    for j, i in enumerate(layers):  # old block i becomes block j
        p, q = f"blocks.{i}.", f"blocks.{j}."
        w_o = src[p + "attn.proj.weight"].view(-1, hq, d)
        y = act[f"attn.{i}"].view(hq, d) * w_o.norm(dim=0)  # what each head dimension writes to the stream
        heads = torch.cat([g * group + _top(y[g * group:(g + 1) * group].sum(1), kept_group) for g in range(hk)])
        heads_kept.append(kept := heads.tolist())
        groups = [heads[g * kept_group:(g + 1) * kept_group] for g in range(hk)]  # the kept query heads of each KV head
        if cfg.pos == "rope":  # the highest frequencies: the first ds/2 dims of each half (rotate-half layout)
            qk = [torch.cat([torch.arange(ds // 2), torch.arange(ds // 2) + d // 2])] * hk
        else:
            a = act[f"qkv.{i}"].view(hq + 2 * hk, d)
            qk = [_top((a[groups[g]] * a[hq + g]).sum(0), ds) for g in range(hk)]
        vk = [_top(y[groups[g]].sum(0), ds) for g in range(hk)]
        # rows of the fused projection: q heads, k heads, v heads, each d wide
        rows_qkv = torch.cat([h * d + qk[h // group] for h in kept] + [(hq + h) * d + qk[h] for h in range(hk)]
                             + [(hq + hk + h) * d + vk[h] for h in range(hk)])  # fmt: skip
        cols_o = torch.cat([h * d + vk[h // group] for h in kept])
        keep_m = _top(act[f"mlp.{i}"], new.intermediate_size)
        inner = cfg.intermediate_size
        for key, t in src.items():
            if not key.startswith(p):
                continue
            name = key[len(p):]
            if name.startswith(("ln_1.", "ln_2.")):
                out[q + name] = t[keep_c]
            elif name in ("attn.q_norm.weight", "attn.k_norm.weight"):
                out[q + name] = t[qk[0]]  # one weight per head dim, shared by the heads (so are their dims)
            elif name == "attn.qkv.weight":
                out[q + name] = t[rows_qkv][:, keep_c]
            elif name == "attn.qkv.bias":
                out[q + name] = t[rows_qkv]
            elif name == "attn.proj.weight":
                out[q + name] = t[keep_c][:, cols_o]
            elif name in ("attn.proj.bias", "mlp.down.bias", "mlp.proj.bias"):
                out[q + name] = t[keep_c]
            elif name == "mlp.gate_up.weight":
                out[q + name] = torch.cat([t[:inner][keep_m], t[inner:][keep_m]])[:, keep_c]
            elif name == "mlp.gate_up.bias":
                out[q + name] = torch.cat([t[:inner][keep_m], t[inner:][keep_m]])
            elif name == "mlp.fc.weight":
                out[q + name] = t[keep_m][:, keep_c]
            elif name == "mlp.fc.bias":
                out[q + name] = t[keep_m]
            elif name in ("mlp.down.weight", "mlp.proj.weight"):
                out[q + name] = t[keep_c][:, keep_m]
            else:
                raise UserError(f"cannot prune weight '{key}' of this architecture")
    pruned = Transformer(new).to(model.wte.weight.device)
    missing, unexpected = pruned.load_state_dict(out, strict=False)
    if unexpected or [k for k in missing if not k.startswith("lm_head.") or not new.tie_embeddings]:
        raise UserError(f"pruning left weights unmatched ({', '.join(unexpected or missing)})")
    report = {"params_before": model.num_params(), "params_after": pruned.num_params(),
              "shape_before": {k: getattr(cfg, k) for k in PRUNABLE}, "shape_after": {k: getattr(new, k) for k in PRUNABLE},
              "rope_theta": [cfg.rope_theta, new.rope_theta] if cfg.pos == "rope" else None, "layers_kept": layers,
              "heads_kept": heads_kept,
              "block_importance": [round(float(x), 6) for x in importance],
              "calibration_rows": len(rows), "calibration_tokens": sum(map(len, rows))}  # fmt: skip
    return pruned.eval(), report


def run_prune(model_spec: str, out: str | Path, shape: dict, synthetic: int | None = None, data: str | None = None,
              seed: int = 0, overwrite: bool = False) -> dict:  # fmt: skip
    """`gptqwen prune`: load `model_spec`, prune it to `shape`, write an HF folder (tokenizer, prune.json) to `out`."""
    from gptqwen.align.flops import FlopCounter
    from gptqwen.hf import save_pretrained
    from gptqwen.loading import load_model_and_tokenizer
    from gptqwen.utils import atomic_dir, refuse_file_in_path, refuse_nonempty_folder

    out = Path(out)
    refuse_file_in_path(out)
    refuse_nonempty_folder(out, overwrite)
    cfg_file = Path(model_spec) / "config.json"
    if cfg_file.is_file():  # bad widths: an error before the weights are loaded
        pruned_config(config_from_hf(json.loads(cfg_file.read_text())), **shape)
    model, tok = load_model_and_tokenizer(model_spec)
    if tok is None:
        raise UserError(f"'{model_spec}' has no tokenizer; calibration needs one (a folder with tokenizer.json)")
    rows = calibration_ids(tok, synthetic, data, seed, model.config.max_seq_len)
    start = time.process_time()
    with FlopCounter() as flops:
        pruned, report = prune_model(model, rows, **shape)
    report.update(source=model_spec, out=str(out), flops=flops.total, cpu_s=round(time.process_time() - start, 2))
    with atomic_dir(out) as tmp:  # built aside, renamed into place whole
        save_pretrained(pruned, tmp, tokenizer=tok)
        (tmp / "prune.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
