"""Pretraining: token shards in, a model out; one process, or DDP / FSDP2 under torchrun, with exact resume.

    from gptqwen.train.recipe import load_recipe
    from gptqwen.train.trainer import run_recipe
    run_recipe(load_recipe("qwen3-shakespeare"), "runs/qwen3-shakespeare")

Each optimizer step reads one global batch (`train.batch_size` sequences) from the deterministic
sampler (`train.loader`), split over ranks and gradient-accumulation micro-batches. Validation loss,
perplexity and bits per byte, and samples come at their intervals. The loop itself — schedule,
logging, checkpoints, resume — is the training core (`train.loop`) that every trainer shares.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from gptqwen.config import Config
from gptqwen.data.prepare import ensure_dataset
from gptqwen.data.shards import TokenDataset
from gptqwen.errors import UserError
from gptqwen.infer.sampling import Sampler, SamplingParams
from gptqwen.model import Transformer
from gptqwen.tokenizer import Tokenizer
from gptqwen.train import checkpoint as ckpt_io
from gptqwen.train import distributed as D
from gptqwen.train.loader import WindowSampler, eval_windows, read_windows
from gptqwen.train.loop import Workload, check_run_dir, setup_process, steps_for, train
from gptqwen.train.metrics import bits_per_byte
from gptqwen.train.recipe import Recipe, model_name


def model_config(recipe: Recipe, vocab_size: int, eos_id: int | None):
    """The model `Config`: the recipe's preset and overrides (checked with the recipe); vocab and context follow the data."""
    overrides = dict(recipe.model)
    preset = overrides.pop("preset")
    overrides.setdefault("vocab_size", vocab_size)
    overrides.setdefault("max_seq_len", recipe.train.seq_len)
    overrides.setdefault("eos_token_id", eos_id)
    if overrides["vocab_size"] < vocab_size:
        raise UserError(f"model.vocab_size {overrides['vocab_size']} is smaller than the tokenizer's {vocab_size}")
    if overrides["max_seq_len"] < recipe.train.seq_len:
        raise UserError(f"train.seq_len {recipe.train.seq_len} exceeds model.max_seq_len {overrides['max_seq_len']}")
    return Config.from_name(preset, **overrides).replace(name=model_name(recipe.model))  # overrides shown in the name


def _prepare_data(recipe: Recipe, info: D.DistInfo, progress: bool) -> tuple[Any, Any]:
    d = recipe.data
    if info.is_main:
        ensure_dataset(d.sources, d.dir, progress=progress, tokenizer=d.tokenizer, train_vocab=None if d.tokenizer else d.train_vocab,
                       style=d.style, val_fraction=d.val_fraction, on_error=d.on_error, text_key=d.text_key)  # fmt: skip
    D.barrier(info)
    train = TokenDataset(d.dir, "train", verify=True)
    val = TokenDataset(d.dir, "val") if train.index["splits"].get("val") else None
    return train, val


@torch.no_grad()
def evaluate(model, val, windows: list[int], seq_len: int, micro: int, info: D.DistInfo) -> float:
    """Mean validation loss over fixed windows, shared out over ranks (every rank runs equally many forwards)."""
    per_rank = math.ceil(len(windows) / info.world_size)
    mine = [windows[i] if i < len(windows) else None for i in range(info.rank, per_rank * info.world_size, info.world_size)]
    total = torch.zeros(2, dtype=torch.float64, device=info.device)
    for i in range(0, len(mine), micro):
        chunk = mine[i : i + micro]
        starts = [s if s is not None else windows[0] for s in chunk]
        x, y = read_windows(val, starts, seq_len)
        out = model(x.to(info.device), targets=y.to(info.device))
        real = sum(s is not None for s in chunk)
        total += torch.tensor([out.loss.double().item() * real, real], dtype=torch.float64, device=info.device) if real else 0
    if info.enabled:
        torch.distributed.all_reduce(total)
    return float(total[0] / total[1])


def sample(model, tokenizer, prompt: str, max_new: int, temperature: float, top_k: int, seed: int, device) -> str:
    """Sample a continuation with a KV cache and the engine's sampler (every rank runs it so FSDP all-gathers line up)."""
    context = D.unwrap(model).config.max_seq_len
    max_new = min(max_new, context - 1)
    ids = (tokenizer.encode(prompt) or [tokenizer.eos_id])[-(context - max_new) :]
    cache = D.unwrap(model).new_cache(1, len(ids) + max_new, device=device)
    params = SamplingParams(max_new_tokens=max_new, temperature=temperature, top_k=top_k, seed=seed)
    draw = Sampler([params], D.unwrap(model).config.vocab_size, torch.device(device))
    x, out_ids = torch.tensor([ids], device=device), []
    with torch.no_grad():
        for _ in range(max_new):
            nxt = draw(model(x, cache=cache, logits_to_keep=1).logits[:, -1]).tokens
            out_ids.append(int(nxt[0]))
            x = nxt[:, None]
    return tokenizer.decode(out_ids, skip_special=True)


def pretrain(recipe: Recipe, out: str | Path, resume: bool = False, overwrite: bool = False,
             init_from: Path | None = None, quiet: bool = False, stop_at: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Train `recipe` into run folder `out`; returns a summary (final losses, tokens/s, checkpoint).

    `stop_at` ends the run early at that step with a checkpoint (for time-sliced jobs); `resume=True`
    later finishes it exactly as if it had never stopped."""
    tc, out = recipe.train, Path(out)
    check_run_dir(out, resume, overwrite)  # before the dataset is built
    info = setup_process(tc)
    try:
        work = _workload(recipe, info, init_from if not resume else None, quiet)
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            shutil.copytree(Path(recipe.data.dir) / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
        if init_from is not None and not resume:
            work.describe += f"starting from {init_from}, "
        return train(work, tc, out, recipe, info, resume, overwrite, quiet, stop_at)
    finally:
        D.cleanup(info)


def lm_loss(fwd: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor],
            device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The pretraining objective of one micro-batch (inputs, targets): next-token cross-entropy, plus the MoE
    balancing loss where the model has experts."""
    x, y = batch
    res = fwd(x.to(device, non_blocking=True), targets=y.to(device, non_blocking=True))
    if res.aux_loss is None:
        return res.loss, {"loss": res.loss}
    return res.loss + res.aux_loss, {"loss": res.loss, "aux_loss": res.aux_loss}


def _workload(recipe: Recipe, info: D.DistInfo, init_from: Path | None, quiet: bool) -> Workload:
    tc = recipe.train
    if tc.batch_size % info.world_size:
        raise UserError(f"train.batch_size {tc.batch_size} must be divisible by the {info.world_size} processes")
    local_rows = tc.batch_size // info.world_size
    micro = min(tc.micro_batch or local_rows, local_rows)
    if local_rows % micro:
        raise UserError(f"each process's {local_rows} sequences per step must be divisible by train.micro_batch {micro}")
    train_ds, val_ds = _prepare_data(recipe, info, progress=not quiet)
    tokenizer = Tokenizer.from_file(Path(recipe.data.dir) / "tokenizer")
    cfg = model_config(recipe, train_ds.vocab_size, train_ds.eos_id)
    sampler = WindowSampler(train_ds, tc.seq_len, tc.seed, doc_starts=tc.doc_windows)
    steps = steps_for(tc, sampler.n / tc.batch_size)
    torch.manual_seed(tc.seed)
    model = Transformer(cfg).to(info.device)
    if init_from is not None:  # a later stage starts from the previous stage's weights
        ckpt_io.load_weights_into(model, init_from)
    windows = eval_windows(val_ds, tc.seq_len, tc.eval_tokens) if val_ds is not None else []

    def micro_batches(step: int, info: D.DistInfo) -> list[tuple[torch.Tensor, torch.Tensor]]:
        first = step * tc.batch_size + info.rank * local_rows
        return [sampler.batch(first + m, micro) for m in range(0, local_rows, micro)]

    def validate(fwd: torch.nn.Module) -> dict[str, Any]:
        value = evaluate(fwd, val_ds, windows, tc.seq_len, micro, info)
        return {"val_loss": value, "val_ppl": math.exp(min(value, 50)), "val_bpb": bits_per_byte(value, train_ds.bytes_per_token)}

    def show_sample(model: torch.nn.Module, step: int) -> str:
        text = sample(model, tokenizer, tc.sample_prompt, tc.sample_tokens, tc.temperature, tc.top_k, tc.seed + step, info.device)
        return f"{tc.sample_prompt.lstrip()}{text}".rstrip()

    return Workload(
        model=model, model_config=cfg.to_dict(), steps=steps, micro_batches=micro_batches,
        loss=lambda fwd, batch: lm_loss(fwd, batch, info.device),
        count_tokens=lambda batch: batch[0].numel(),
        order={"train.seq_len": tc.seq_len, "train.batch_size": tc.batch_size, "train.seed": tc.seed},
        flops_per_token=cfg.flops_per_token(tc.seq_len), evaluate=validate if windows else None, sample=show_sample,
        epoch_of=lambda done: sampler.epoch_of(done * tc.batch_size),
        describe=f"[bold]{recipe.name}[/]: {cfg.name} {model.num_params() / 1e6:.2f}M params, {len(train_ds):,} train tokens, "
                 f"{tc.batch_size}x{tc.seq_len} tokens/step ({local_rows // micro} micro-batches x {info.world_size} procs), ",
    )  # fmt: skip


def run_recipe(recipe: Recipe, out: str | Path, resume: bool = False, overwrite: bool = False,
               stage: str | None = None, quiet: bool = False, stop_at: int | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Run a recipe; a staged recipe runs its stages in order, each from the previous stage's weights."""
    out = Path(out)
    if not recipe.stages:
        return [pretrain(recipe, out, resume, overwrite, quiet=quiet, stop_at=stop_at)]
    names = [s["name"] for s in recipe.stages]
    if stage is not None and stage not in names:
        raise UserError(f"recipe '{recipe.name}' has no stage '{stage}'; its stages are: {', '.join(names)}")
    if int(os.environ.get("RANK", 0)) == 0:
        ckpt_io.write_config(out, recipe.to_dict())
    results, previous = [], None
    for i, name in enumerate(names):
        sub, stage_dir = recipe.stage(i), out / name
        done = [p for p in ckpt_io.list_checkpoints(stage_dir) if ckpt_io.read_state(p)["step"] >= (sub.train.max_steps or math.inf)]
        if (stage is None or stage == name) and not (done and resume):
            results.append(pretrain(sub, stage_dir, resume=resume and bool(ckpt_io.list_checkpoints(stage_dir)),
                                    overwrite=overwrite, init_from=previous, quiet=quiet))  # fmt: skip
        latest = ckpt_io.list_checkpoints(stage_dir)
        if stage is not None and stage != name and not latest:
            raise UserError(f"stage '{stage}' starts from stage '{name}', which has not been trained; run it first")
        previous = latest[-1] if latest else None
        if stage == name:
            break
    return results
