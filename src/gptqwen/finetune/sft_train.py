"""Running chat SFT end to end: read conversations, train (full or LoRA) on the training core, export, evaluate.

    gptqwen sft --data conversations.jsonl --from runs/qwen3 --out sft/ [--lora-r 8 --lora-targets q,k,v,o]

    from gptqwen.train.recipe import load_recipe
    run_sft(load_recipe("sft-qwen3", ["model.base=qwen3-tiny", "sft.synthetic=200"], trainer="sft"), "sft/")

Loss: mean cross-entropy over assistant tokens of the batch, plus the MoE auxiliary loss for MoE
presets. Training runs on the shared core (`gptqwen.train.loop`): metrics.jsonl, checkpoints and exact
`--resume` in the output folder. At the end the folder also becomes an HF checkpoint with the tokenizer
(LoRA adapters merged into the weights; the adapter alone is kept in PEFT's format as `adapter/`) and `sft.json`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gptqwen.errors import UserError
from gptqwen.finetune import lora as lora_mod
from gptqwen.finetune import sft as data
from gptqwen.finetune.common import export_run, load_base
from gptqwen.finetune.synthetic import GENERATORS, reasoning_conversations
from gptqwen.train.loop import EpochBatches, Workload, check_run_dir, setup_process, steps_for, train
from gptqwen.train.recipe import Recipe
from gptqwen.utils import read_jsonl


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The forward's keyword arguments for one (packed or padded) SFT batch, besides the input ids."""
    doc = batch["document_ids"]  # the mask keeps padding out of MoE balancing
    return {"position_ids": batch["position_ids"], "document_ids": doc, "attention_mask": (doc >= 0).long()}


def with_aux(out: Any, objective: torch.Tensor, **logged: torch.Tensor) -> dict[str, torch.Tensor]:
    """A `loss_of` result: the objective (+ the MoE aux loss), the CE of the targets and any other logged values."""
    losses = {"loss": objective, "ce": out.loss.detach(), **logged}
    if out.aux_loss is not None:
        losses.update(loss=objective + out.aux_loss, aux=out.aux_loss.detach())
    return losses


def batch_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The SFT loss of one (packed or padded) batch: CE over assistant targets + MoE aux loss."""
    out = model(batch["input_ids"], targets=batch["targets"], **model_inputs(batch))
    return with_aux(out, out.loss)


def conversations(recipe: Recipe) -> tuple[list[tuple[int, dict]], str]:
    """The training rows `(line, row)` and their source name: the --data file or built-in synthetic ones."""
    s = recipe.sft
    if (s.data is None) == (s.synthetic is None):
        raise UserError("pass exactly one of --data FILE or --synthetic N (sft.data or sft.synthetic)")
    if s.synthetic is not None:
        unknown = [k for k in s.synthetic_kinds if k not in GENERATORS]
        if unknown or not s.synthetic_kinds:
            raise UserError(f"unknown --synthetic-kinds {unknown}; choose from {', '.join(GENERATORS)}")
        rows = reasoning_conversations(s.synthetic, recipe.train.seed, s.think_ratio, s.flag_prob, tuple(s.synthetic_kinds))
        return list(enumerate(rows, 1)), "synthetic"
    rows = read_jsonl(s.data, "conversation data")
    for line, row in rows:  # fail on bad rows before spending time on loading the model
        data.validate_conversation(row, f"{s.data}:{line}")
    return rows, s.data


def run_sft(recipe: Recipe, out: str | Path, resume: bool = False, overwrite: bool = False, quiet: bool = False,
            stop_at: int | None = None,
            after_training: Callable[[torch.nn.Module, Any, list[tuple[int, dict]]], dict] | None = None,
            loss_of: Callable[[torch.nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]] = batch_loss) -> dict:  # fmt: skip
    """Fine-tune `recipe.model.base` on conversations into the run folder `out`; returns a summary.

    `after_training(model, tokenizer, rows)` may add entries to the summary (e.g. held-out accuracy)
    before the model is exported. `loss_of(model, batch)` replaces `batch_loss` (same keys; any other detached
    entries are logged too: distillation's dense teacher loss adds its KL)."""
    s, tc, lo = recipe.sft, recipe.train, recipe.lora
    if not recipe.model.base:
        raise UserError("no model to start from; pass --from (a run dir, HF dir, .gguf or preset) or set model.base")
    rows, source = conversations(recipe)
    check_run_dir(Path(out), resume, overwrite)
    info = setup_process(tc, single="sft")
    torch.manual_seed(tc.seed)
    model, tok = load_base(recipe.model.base, recipe.model.tokenizer, info.device, tc.seed, recipe.model.from_scratch)
    max_len = min(s.max_len or model.config.max_seq_len, model.config.max_seq_len)
    flag_prob = 0.0 if s.synthetic is not None else s.flag_prob  # synthetic rows carry their flags already
    examples, stats = data.build_examples(tok, rows, max_len, source, s.too_long, flag_prob, tc.seed)
    if not quiet:
        print(stats.summary())
    wrapped = lora_mod.apply_lora(model, lo.targets, lo.r, lo.alpha, lo.dropout) if lo.r is not None else []
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    pad = tok.pad_id if tok.pad_id is not None else 0
    batches = EpochBatches(lambda e: data.make_batches(examples, max_len, tc.batch_size, s.packing, tc.seed + e, pad))

    def loss(fwd: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        losses = loss_of(fwd, {k: v.to(info.device) for k, v in batch.items()})
        logged = {"loss": losses["ce"], **{("aux_loss" if k == "aux" else k): v for k, v in losses.items() if k not in ("loss", "ce")}}
        return losses["loss"], logged

    work = Workload(
        model=model, model_config=model.config.to_dict(), steps=steps_for(tc, batches.per_epoch),
        micro_batches=batches, loss=loss, count_tokens=lambda b: int((b["document_ids"] >= 0).sum()),
        order={"train.batch_size": tc.batch_size, "train.seed": tc.seed, "sft.max_len": max_len, "sft.packing": s.packing,
               "lora layers": wrapped},
        epoch_of=batches.epoch_of,
        describe=f"[bold]{recipe.name}[/]: {model.config.name} from {recipe.model.base}, {n_train / 1e6:.2f}M trainable params, "
                 f"{stats.kept} conversations, {batches.per_epoch} batches of {tc.batch_size} per epoch, ",
    )  # fmt: skip
    # one process (setup_process refused torchrun), so there is no process group to clean up afterwards
    summary = train(work, tc, out, recipe, info, resume, overwrite, quiet, stop_at, label="sft")
    summary.update({
        "conversations": stats.rows, "kept": stats.kept, "thinking": stats.thinking,
        "direct": stats.kept - stats.thinking, "dropped_too_long": stats.dropped_too_long,
        "dropped_lines": stats.skipped_lines[:50], "truncated": stats.truncated, "flags_added": stats.flagged,
        "packing": s.packing, "rows_per_epoch": batches.per_epoch * tc.batch_size if s.packing else stats.kept,
        "steps": work.steps, "trainable_params": n_train, "final_loss": summary.get("loss"),
        "lora": {"targets": list(lo.targets), "r": lo.r, "alpha": lo.alpha, "layers": len(wrapped)} if wrapped else None,
    })  # fmt: skip
    if summary["step"] < work.steps:  # stopped early (--stop-at): no export until the run is finished
        return summary
    after = (lambda m: after_training(m, tok, rows)) if after_training is not None else None
    return export_run(out, model, tok, summary, "sft.json", lora=bool(wrapped), after_merge=after)
