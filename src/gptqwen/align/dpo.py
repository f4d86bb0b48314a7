"""Direct preference optimisation on the training core: `gptqwen dpo --from MODEL --data prefs.jsonl --out DIR`.

    from gptqwen.align.dpo import run_dpo
    from gptqwen.train.recipe import load_recipe
    run_dpo(load_recipe("dpo-qwen3", ["model.base=sft/", "pref.data=prefs.jsonl"], trainer="dpo"), "dpo/")

The reference model's log-probs of every pair (training and dev) are computed once, before the first
step, by the starting model — which with LoRA is exactly the model with its adapters off, since new
adapters start at zero — or by `dpo.reference` when given. Each step logs the loss, the implicit rewards
`β·(logπ − logπ_ref)` of chosen and rejected completions, their margin and the reward accuracy
(chosen above rejected), and the chosen completions' NLL, which `dpo.nll_weight` adds to the loss (TRL's
"sft" loss term; DPO + NLL is iterative RPO, which keeps DPO on reasoning chains from pushing the chosen
chains down with the rejected ones); with `pref.eval`, the same on the dev pairs at every eval interval and at the end.
The folder becomes an HF checkpoint with the tokenizer and `dpo.json` (LoRA adapters merged).
"""

from __future__ import annotations

from pathlib import Path

import torch

from gptqwen.align import prefs
from gptqwen.align.losses import dpo_loss
from gptqwen.errors import UserError
from gptqwen.finetune import lora as lora_mod
from gptqwen.finetune.common import export_run, load_base
from gptqwen.train.loop import EpochBatches, Workload, steps_for, train
from gptqwen.train.recipe import Recipe


@torch.no_grad()
def reference_logps(model: torch.nn.Module, pairs: list[prefs.Pair], batch_size: int, pad: int,
                    device: torch.device) -> torch.Tensor:  # fmt: skip
    """[len(pairs), 2] summed completion log-probs (chosen, rejected) of every pair under `model`."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        batch = prefs.collate(chunk, pad)
        lp = prefs.sequence_logps(model, {k: v.to(device) for k, v in batch.items()}).cpu()
        out.append(torch.stack([lp[:len(chunk)], lp[len(chunk):]], dim=1))
    model.train(was_training)
    return torch.cat(out)


def pair_batch(pairs: list[prefs.Pair], ref: torch.Tensor, idx: list[int], pad: int) -> dict[str, torch.Tensor]:
    batch = prefs.collate([pairs[i] for i in idx], pad)
    batch["ref"] = ref[idx]
    return batch


def preference_metrics(model: torch.nn.Module, batch: dict[str, torch.Tensor], d) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The DPO loss of a batch and its logged statistics (`d`: the recipe's dpo section)."""
    n = batch["ref"].shape[0]
    per_token = prefs.token_logps(model(batch["input_ids"]).logits, batch["targets"])
    logps = per_token.sum(-1)
    counts = batch["completion_mask"].sum(-1).float()
    losses, chosen, rejected = dpo_loss(logps[:n], logps[n:], batch["ref"][:, 0], batch["ref"][:, 1], d.beta, d.loss,
                                        d.label_smoothing, counts[:n], counts[n:])  # fmt: skip
    nll = -logps[:n].sum() / counts[:n].sum().clamp(min=1)  # mean over the chosen completions' tokens
    loss = losses.mean() + d.nll_weight * nll if d.nll_weight else losses.mean()
    return loss, {"loss": loss.detach(), "reward_chosen": chosen.mean(), "reward_rejected": rejected.mean(),
                  "margin": (chosen - rejected).mean(), "reward_accuracy": (chosen > rejected).float().mean(),
                  "nll_chosen": nll.detach()}


def _reference(recipe: Recipe, model: torch.nn.Module, tok, device: torch.device) -> torch.nn.Module:
    spec = recipe.dpo.reference
    if spec is None:
        return model
    ref, _ = load_base(spec, recipe.model.tokenizer, str(device))
    if ref.config.vocab_size != model.config.vocab_size:
        raise UserError(f"the reference model '{spec}' has {ref.config.vocab_size} embedding rows, the policy "
                        f"{model.config.vocab_size}; DPO needs both on the same tokenizer")  # fmt: skip
    return ref


def run_dpo(recipe: Recipe, out: str | Path, resume: bool = False, overwrite: bool = False, quiet: bool = False,
            stop_at: int | None = None) -> dict:  # fmt: skip
    """Train `recipe.model.base` on `recipe.pref.data` with DPO into `out`; returns the summary."""
    d, tc, lo = recipe.dpo, recipe.train, recipe.lora
    if d.label_smoothing and d.loss != "sigmoid":
        raise UserError(f"dpo.label_smoothing (cDPO) applies to the sigmoid loss only, not '{d.loss}'")
    run = prefs.start_preference_run(recipe, out, resume, overwrite, single="dpo")
    info, model, tok, pairs, dropped, dev, pad = run.info, run.model, run.tokenizer, run.pairs, run.dropped, run.dev, run.pad
    reference = _reference(recipe, model, tok, info.device)
    ref_train = reference_logps(reference, pairs, tc.batch_size, pad, info.device)
    ref_dev = reference_logps(reference, dev, tc.batch_size, pad, info.device) if dev else None
    del reference
    wrapped = lora_mod.apply_lora(model, lo.targets, lo.r, lo.alpha, lo.dropout) if lo.r is not None else []
    n_train = sum(q.numel() for q in model.parameters() if q.requires_grad)
    batches = EpochBatches(lambda e: [pair_batch(pairs, ref_train, idx, pad)
                                      for idx in prefs.epoch_order(len(pairs), tc.batch_size, tc.seed + e)])

    def loss(fwd: torch.nn.Module, batch: dict[str, torch.Tensor]):
        return preference_metrics(fwd, {k: v.to(info.device) for k, v in batch.items()}, d)

    def evaluate(fwd: torch.nn.Module) -> dict:
        return prefs.dev_metrics(len(dev), tc.batch_size, lambda idx: preference_metrics(
            fwd, {k: v.to(info.device) for k, v in pair_batch(dev, ref_dev, idx, pad).items()}, d)[1])

    work = Workload(
        model=model, model_config=model.config.to_dict(), steps=steps_for(tc, batches.per_epoch), micro_batches=batches,
        loss=loss, count_tokens=lambda b: int((b["input_ids"] != pad).sum()),
        order={"train.batch_size": tc.batch_size, "train.seed": tc.seed, "pref.max_len": run.max_len, "lora layers": wrapped},
        evaluate=evaluate if dev else None, epoch_of=batches.epoch_of,
        describe=f"[bold]{recipe.name}[/]: DPO ({d.loss}, β={d.beta}) of {model.config.name} from {recipe.model.base}, "
                 f"{n_train / 1e6:.2f}M trainable params, {len(pairs)} pairs, ",
    )  # fmt: skip
    summary = train(work, tc, out, recipe, info, resume, overwrite, quiet, stop_at, label="dpo")
    summary.update({"pairs": len(pairs), "dropped_too_long": dropped, "dev_pairs": len(dev), "steps": work.steps,
                    "trainable_params": n_train, "beta": d.beta, "loss_type": d.loss,
                    "lora": {"targets": list(lo.targets), "r": lo.r, "alpha": lo.alpha} if wrapped else None})  # fmt: skip
    if summary["step"] < work.steps:
        return summary
    return export_run(out, model, tok, summary, "dpo.json", lora=bool(wrapped))
