"""Running chat SFT end to end: read conversations, train (full or LoRA), save, evaluate.

    gptqwen sft --data conversations.jsonl --from runs/qwen3 --out sft/ [--lora-r 8 --lora-targets q,k,v,o]

Loss: mean cross-entropy over assistant tokens of the batch, plus the MoE auxiliary loss for MoE
presets. The output directory is an HF checkpoint with the tokenizer (LoRA adapters merged into the
weights; the adapter alone is kept as `lora/adapter.safetensors`), `metrics.jsonl` and `sft.json`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gptqwen.errors import UserError
from gptqwen.finetune import lora as lora_mod
from gptqwen.finetune import sft as data
from gptqwen.finetune import train as loop
from gptqwen.finetune.common import load_base, save_model_dir, write_json, write_jsonl
from gptqwen.utils import read_jsonl


@dataclass
class LoraOptions:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q", "k", "v", "o")


def batch_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The SFT loss of one (packed or padded) batch: CE over assistant targets + MoE aux loss."""
    doc = batch["document_ids"]
    out = model(batch["input_ids"], targets=batch["targets"], position_ids=batch["position_ids"],
                document_ids=doc, attention_mask=(doc >= 0).long())  # the mask keeps padding out of MoE balancing
    losses = {"loss": out.loss, "ce": out.loss.detach()}
    if out.aux_loss is not None:
        losses["loss"] = out.loss + out.aux_loss
        losses["aux"] = out.aux_loss.detach()
    return losses


def run_sft(data_path: str, base: str, out: str, tokenizer: str | None = None, max_len: int | None = None,
            epochs: float = 1.0, batch_size: int = 8, packing: bool = True, too_long: str = "drop",
            flag_prob: float = 0.0, lora: LoraOptions | None = None, seed: int = 0, device: str | None = None,
            loop_cfg: loop.LoopConfig | None = None, max_steps: int | None = None, quiet: bool = False,
            after_training=None) -> dict:
    """Fine-tune `base` on a conversations file and save it to `out`; returns a summary.

    `after_training(model, tokenizer)` may add entries to the summary (e.g. held-out accuracy)
    before the model is saved.
    """
    rows = read_jsonl(data_path, "conversation data")
    for line, row in rows:  # fail on bad rows before spending time on loading the model
        data.validate_conversation(row, f"{data_path}:{line}")
    torch.manual_seed(seed)
    model, tok = load_base(base, tokenizer, device, seed)
    max_len = min(max_len or model.config.max_seq_len, model.config.max_seq_len)
    examples, stats = data.build_examples(tok, rows, max_len, data_path, too_long, flag_prob, seed)
    if not quiet:
        print(stats.summary())
    wrapped = []
    if lora is not None:
        wrapped = lora_mod.apply_lora(model, lora.targets, lora.r, lora.alpha, lora.dropout)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    pad = tok.pad_id if tok.pad_id is not None else 0
    dev = next(model.parameters()).device
    epoch_batches = lambda e: data.make_batches(examples, max_len, batch_size, packing, seed + e, pad)  # noqa: E731
    per_epoch = len(epoch_batches(0))
    steps = max_steps or max(1, round(epochs * per_epoch))

    def loss_fn(batch: dict) -> dict:
        model.train()
        return batch_loss(model, {k: v.to(dev) for k, v in batch.items()})

    history = loop.run(model, loop.cycle(epoch_batches), steps, loss_fn, loop_cfg or loop.LoopConfig(), quiet)
    summary = {
        "conversations": stats.rows, "kept": stats.kept, "thinking": stats.thinking,
        "direct": stats.kept - stats.thinking, "dropped_too_long": stats.dropped_too_long,
        "dropped_lines": stats.skipped_lines[:50], "truncated": stats.truncated, "flags_added": stats.flagged,
        "packing": packing, "rows_per_epoch": per_epoch * batch_size if packing else stats.kept,
        "steps": steps, "trainable_params": n_train, "final_loss": history[-1]["ce"],
        "lora": {"targets": list(lora.targets), "r": lora.r, "alpha": lora.alpha, "layers": len(wrapped)} if lora else None,
    }
    files = {"metrics.jsonl": write_jsonl(history)}
    if lora is not None:
        from safetensors.torch import save_file

        adapter = lora_mod.lora_state_dict(model)
        files["lora/adapter.safetensors"] = lambda p: save_file(adapter, p)
        lora_mod.merge_lora(model)
    model.eval()
    if after_training is not None:
        summary.update(after_training(model, tok))
    files["sft.json"] = write_json(summary)
    save_model_dir(out, model, tok, files)
    summary["out"] = str(out)
    return summary


def check_options(too_long: str, flag_prob: float, batch_size: int) -> None:
    if too_long not in data.TOO_LONG:
        raise UserError(f"--too-long must be one of {', '.join(data.TOO_LONG)}")
    if not 0 <= flag_prob <= 1:
        raise UserError(f"--flag-prob must be between 0 and 1, got {flag_prob}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
