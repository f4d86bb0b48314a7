"""Reward models: a scalar head on any loadable model, trained with the Bradley–Terry loss.

    gptqwen reward train --from sft/ --data prefs.jsonl --eval dev.jsonl --out rm/
    gptqwen reward score --model rm/ --data rows.jsonl          # pairs -> accuracy; {"prompt","completion"} -> scores

    from gptqwen.align.reward import load_reward_model
    rm, tok = load_reward_model("rm/")
    rm.score_sequences([prompt_ids + completion_ids, ...])       # -> list of floats

The head reads the final hidden state (after the final norm) at the sequence's last token — for chat rows
the `<|im_end|>` closing the assistant turn. Loss: `−logσ(r_c − r_r − margin)` (a row's "margin" when
present) plus the optional centring term `c·mean((r_c + r_r)²)`; the logged accuracy is the share of pairs
ranked right. The folder is an HF checkpoint of the backbone plus `reward_head.safetensors` and `reward.json`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gptqwen.align import prefs
from gptqwen.align.losses import reward_loss
from gptqwen.errors import UserError
from gptqwen.finetune.common import save_model_dir, write_json
from gptqwen.loading import load_model_and_tokenizer
from gptqwen.train.loop import EpochBatches, Workload, steps_for, train
from gptqwen.train.recipe import Recipe
from gptqwen.utils import read_jsonl

HEAD_FILE = "reward_head.safetensors"


class RewardModel(nn.Module):
    """A decoder whose final hidden state at a chosen position goes through a linear head to one number."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config
        width = backbone.config.n_embd
        self.score = nn.Linear(width, 1, bias=False, device=next(backbone.parameters()).device)
        nn.init.normal_(self.score.weight, std=1 / (width + 1) ** 0.5)

    def forward(self, input_ids: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """Rewards [B] of right-padded sequences read at positions `last` [B]."""
        hidden = self.backbone(input_ids, return_hidden=True, logits_to_keep=1).hidden
        return self.score(hidden[torch.arange(hidden.shape[0], device=hidden.device), last]).squeeze(-1)

    @torch.no_grad()
    def score_sequences(self, seqs: list[list[int]], batch_size: int = 16, pad_id: int = 0) -> list[float]:
        """The reward of each token sequence (prompt + completion)."""
        device = next(self.parameters()).device
        out: list[float] = []
        for i in range(0, len(seqs), batch_size):
            batch = prefs.collate_sequences([(s[:-1], s[-1:]) for s in seqs[i:i + batch_size]], pad_id)
            out += self(batch["input_ids"].to(device), batch["last"].to(device)).float().tolist()
        return out


def load_reward_model(path: str, device: str | None = None) -> tuple[RewardModel, object]:
    """A trained reward model folder (`gptqwen reward train --out`) and its tokenizer."""
    from safetensors.torch import load_file

    head = Path(path) / HEAD_FILE
    if not head.is_file():
        raise UserError(f"'{path}' is not a reward model (no {HEAD_FILE}); train one with 'gptqwen reward train'")
    backbone, tok = load_model_and_tokenizer(path, device=device)
    model = RewardModel(backbone.float())
    model.score.load_state_dict({"weight": load_file(str(head))["score.weight"].to(model.score.weight.device)})
    return model.eval(), tok


def _batch_metrics(model: nn.Module, batch: dict[str, torch.Tensor], center: float | None):
    r = model(batch["input_ids"], batch["last"])
    n = r.shape[0] // 2
    loss = reward_loss(r[:n], r[n:], batch.get("margin"), center)
    return loss, {"loss": loss.detach(), "accuracy": (r[:n] > r[n:]).float().mean().detach(),
                  "margin": (r[:n] - r[n:]).mean().detach(), "reward_mean": r.mean().detach()}


def run_reward_training(recipe: Recipe, out: str | Path, resume: bool = False, overwrite: bool = False,
                        quiet: bool = False, stop_at: int | None = None) -> dict:  # fmt: skip
    """Train a reward model on `recipe.pref.data` into `out`; returns the summary (dev accuracy with pref.eval)."""
    tc = recipe.train
    run = prefs.start_preference_run(recipe, out, resume, overwrite, single="reward train")
    info, backbone, tok, pairs, dropped, dev, pad = run.info, run.model, run.tokenizer, run.pairs, run.dropped, run.dev, run.pad
    model = RewardModel(backbone)
    center = recipe.reward.center_coef
    batches = EpochBatches(lambda e: [prefs.collate([pairs[i] for i in idx], pad)
                                      for idx in prefs.epoch_order(len(pairs), tc.batch_size, tc.seed + e)])

    def loss(fwd: nn.Module, batch: dict[str, torch.Tensor]):
        return _batch_metrics(fwd, {k: v.to(info.device) for k, v in batch.items()}, center)

    def evaluate(fwd: nn.Module) -> dict:
        return prefs.dev_metrics(len(dev), tc.batch_size, lambda idx: _batch_metrics(
            fwd, {k: v.to(info.device) for k, v in prefs.collate([dev[i] for i in idx], pad).items()}, center)[1])

    work = Workload(
        model=model, model_config=backbone.config.to_dict(), steps=steps_for(tc, batches.per_epoch), micro_batches=batches,
        loss=loss, count_tokens=lambda b: int((b["input_ids"] != pad).sum()),
        order={"train.batch_size": tc.batch_size, "train.seed": tc.seed, "pref.max_len": run.max_len},
        evaluate=evaluate if dev else None, epoch_of=batches.epoch_of,
        describe=f"[bold]{recipe.name}[/]: reward model on {backbone.config.name} from {recipe.model.base}, {len(pairs)} pairs, ",
    )  # fmt: skip
    summary = train(work, tc, out, recipe, info, resume, overwrite, quiet, stop_at, label="reward")
    summary.update({"pairs": len(pairs), "dropped_too_long": dropped, "dev_pairs": len(dev), "steps": work.steps})
    if summary["step"] < work.steps:
        return summary
    from safetensors.torch import save_file

    head = {"score.weight": model.score.weight.detach().cpu().contiguous()}
    model.eval()
    save_model_dir(out, backbone, tok, {HEAD_FILE: lambda path: save_file(head, str(path)), "reward.json": write_json(summary)})
    summary["out"] = str(out)
    return summary


def score_file(model_dir: str, data: str, enable_thinking: bool = True, device: str | None = None) -> dict:
    """Score a JSONL file: preference pairs → pairwise accuracy and margins; {"prompt", "completion"} rows
    (text or chat, like a pair's side) → one reward per row."""
    model, tok = load_reward_model(model_dir, device)
    pad = tok.pad_id if tok.pad_id is not None else 0
    rows = read_jsonl(data, "rows to score")
    if all("chosen" in r for _, r in rows):
        pairs = [prefs.encode_row(tok, r, f"{data}:{line}", enable_thinking) for line, r in rows]
        chosen = model.score_sequences([p.prompt_chosen + p.chosen for p in pairs], pad_id=pad)
        rejected = model.score_sequences([p.prompt_rejected + p.rejected for p in pairs], pad_id=pad)
        margins = [c - r for c, r in zip(chosen, rejected)]
        return {"pairs": len(pairs), "accuracy": sum(m > 0 for m in margins) / len(pairs),
                "mean_margin": sum(margins) / len(margins), "margins": margins}
    seqs = []
    for line, r in rows:
        where = f"{data}:{line}"
        if "completion" not in r:
            raise UserError(f"{where}: rows to score need \"prompt\" and \"completion\" (or \"chosen\"/\"rejected\" pairs)")
        p = prefs.encode_row(tok, {**r, "chosen": r["completion"], "rejected": r["completion"]}, where, enable_thinking)
        seqs.append(p.prompt_chosen + p.chosen)
    return {"rows": len(seqs), "rewards": model.score_sequences(seqs, pad_id=pad)}

