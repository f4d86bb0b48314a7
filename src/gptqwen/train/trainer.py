"""The pretraining loop: one process, or DDP / FSDP2 under torchrun, with exact resume.

    from gptqwen.train.config import load_recipe
    from gptqwen.train.trainer import run_recipe
    run_recipe(load_recipe("qwen3-shakespeare"), "runs/qwen3-shakespeare")

Each optimizer step reads one global batch (`train.batch_size` sequences) from the deterministic
sampler, splits it over ranks and gradient-accumulation micro-batches, and runs AdamW with clipping
and the warmup + cosine / WSD schedule. Every step's loss goes to metrics.jsonl; validation loss,
perplexity and bits per byte, samples and checkpoints come at their intervals. Everything that
decides the next step — weights, optimizer moments, step, data position, RNG — is in a checkpoint,
so `resume=True` continues bit-identically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from gptqwen.errors import UserError
from gptqwen.train import checkpoint as ckpt_io
from gptqwen.train import distributed as D
from gptqwen.train.config import Recipe
from gptqwen.train.loader import WindowSampler, eval_windows, read_windows
from gptqwen.train.metrics import MetricsLog, bits_per_byte, measure_matmul_peak, plot_losses
from gptqwen.train.optim import build_optimizer, lr_at, set_lr


def model_config(recipe: Recipe, vocab_size: int, eos_id: int | None):
    """The model `Config`: the recipe's preset and overrides; vocab and context follow the data."""
    from gptqwen.config import Config

    overrides = dict(recipe.model)
    preset = overrides.pop("preset")
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UserError(f"unknown model setting(s) {unknown}; valid: {', '.join(sorted(known))}")
    overrides.setdefault("vocab_size", vocab_size)
    overrides.setdefault("max_seq_len", recipe.train.seq_len)
    overrides.setdefault("eos_token_id", eos_id)
    if overrides["vocab_size"] < vocab_size:
        raise UserError(f"model.vocab_size {overrides['vocab_size']} is smaller than the tokenizer's {vocab_size}")
    if overrides["max_seq_len"] < recipe.train.seq_len:
        raise UserError(f"train.seq_len {recipe.train.seq_len} exceeds model.max_seq_len {overrides['max_seq_len']}")
    return Config.from_name(preset, **overrides)


def _prepare_data(recipe: Recipe, info: D.DistInfo, progress: bool):
    from gptqwen.data.prepare import ensure_dataset
    from gptqwen.data.shards import TokenDataset

    d = recipe.data
    if info.is_main:
        ensure_dataset(d.sources, d.dir, progress=progress, tokenizer=d.tokenizer, train_vocab=None if d.tokenizer else d.train_vocab,
                       style=d.style, val_fraction=d.val_fraction, on_error=d.on_error, text_key=d.text_key)  # fmt: skip
    D.barrier(info)
    train = TokenDataset(d.dir, "train", verify=True)
    val = TokenDataset(d.dir, "val") if train.index["splits"].get("val") else None
    return train, val


def _autocast(train_dtype: str, device: torch.device):
    bf16 = train_dtype == "bf16" or (train_dtype == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    if not bf16:
        return contextlib.nullcontext, "fp32"
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)), "bf16"


@torch.no_grad()
def evaluate(model, val, windows: list[int], seq_len: int, micro: int, info: D.DistInfo, autocast) -> float:
    """Mean validation loss over fixed windows, shared out over ranks (every rank runs equally many forwards)."""
    per_rank = math.ceil(len(windows) / info.world_size)
    mine = [windows[i] if i < len(windows) else None for i in range(info.rank, per_rank * info.world_size, info.world_size)]
    total = torch.zeros(2, dtype=torch.float64, device=info.device)
    for i in range(0, len(mine), micro):
        chunk = mine[i : i + micro]
        starts = [s if s is not None else windows[0] for s in chunk]
        x, y = read_windows(val, starts, seq_len)
        with autocast():
            out = model(x.to(info.device), targets=y.to(info.device))
        real = sum(s is not None for s in chunk)
        total += torch.tensor([out.loss.double().item() * real, real], dtype=torch.float64, device=info.device) if real else 0
    if info.enabled:
        torch.distributed.all_reduce(total)
    return float(total[0] / total[1])


@torch.no_grad()
def sample(model, tokenizer, prompt: str, max_new: int, temperature: float, top_k: int, seed: int, device) -> str:
    """Sample a continuation with a KV cache (plain loop; every rank runs it so FSDP all-gathers line up)."""
    context = D.unwrap(model).config.max_seq_len
    max_new = min(max_new, context - 1)
    ids = (tokenizer.encode(prompt) or [tokenizer.eos_id])[-(context - max_new) :]
    cache = D.unwrap(model).new_cache(1, len(ids) + max_new, device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    x, out_ids = torch.tensor([ids], device=device), []
    for _ in range(max_new):
        logits = model(x, cache=cache, logits_to_keep=1).logits[0, -1].float()
        if temperature <= 0:
            nxt = int(logits.argmax())
        else:
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=g))
        out_ids.append(nxt)
        x = torch.tensor([[nxt]], device=device)
    return tokenizer.decode(out_ids, skip_special=True)


def _check_resume(state: dict[str, Any], cfg, recipe: Recipe, ckpt: Path) -> None:
    saved = state.get("model_config", {})
    diff = {k: (saved.get(k), v) for k, v in cfg.to_dict().items() if saved.get(k) != v}
    if diff:
        shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(diff.items())[:4])
        raise UserError(f"cannot resume {ckpt}: the model config differs from the checkpoint's ({shown}); "
                        "use the original settings or start a new run with --out")  # fmt: skip
    saved_train = state.get("train", {})
    for key in ("seq_len", "batch_size", "seed"):
        if key in saved_train and saved_train[key] != getattr(recipe.train, key):
            raise UserError(f"cannot resume {ckpt}: train.{key} was {saved_train[key]}, now {getattr(recipe.train, key)}; "
                            "the data order depends on it. Use the original value or start a new run with --out")  # fmt: skip


class Console:
    """Rank-0 output: a rich progress bar with ETA, and lines printed above it."""

    def __init__(self, enabled: bool, total: int, start: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.enabled = enabled
        self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), disable=not enabled)  # fmt: skip
        self.task = self.progress.add_task("train", total=total, completed=start, info="")

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self.enabled:
            self.progress.console.print(*args, **kwargs)

    def advance(self, step: int, info: str) -> None:
        self.progress.update(self.task, completed=step, info=info)


def pretrain(recipe: Recipe, out: str | Path, resume: bool = False, overwrite: bool = False,
             init_from: Path | None = None, quiet: bool = False, stop_at: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Train `recipe` into run folder `out`; returns a summary (final losses, tokens/s, checkpoint).

    `stop_at` ends the run early at that step with a checkpoint (for time-sliced jobs); `resume=True`
    later finishes it exactly as if it had never stopped."""
    tc, out = recipe.train, Path(out)
    info = D.setup(tc.device)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    try:
        return _pretrain(recipe, tc, out, info, resume, overwrite, init_from, quiet, stop_at or tc.max_steps)
    finally:
        D.cleanup(info)


def _pretrain(recipe, tc, out: Path, info: D.DistInfo, resume, overwrite, init_from, quiet, stop_at: int) -> dict[str, Any]:
    from gptqwen.data.prepare import load_tokenizer
    from gptqwen.model import Transformer

    existing = ckpt_io.list_checkpoints(out)
    if existing and not (resume or overwrite):
        raise UserError(f"'{out}' already holds checkpoints; pass --resume to continue that run, --overwrite to start over, or --out NEW_DIR")
    if resume and not existing:
        raise UserError(f"nothing to resume in '{out}' (no ckpt_<step> folder)")
    if tc.batch_size % info.world_size:
        raise UserError(f"train.batch_size {tc.batch_size} must be divisible by the {info.world_size} processes")
    local_rows = tc.batch_size // info.world_size
    micro = min(tc.micro_batch or local_rows, local_rows)
    if local_rows % micro:
        raise UserError(f"each process's {local_rows} sequences per step must be divisible by train.micro_batch {micro}")
    accum = local_rows // micro

    train_ds, val_ds = _prepare_data(recipe, info, progress=not quiet)
    tokenizer = load_tokenizer(str(Path(recipe.data.dir) / "tokenizer"))
    cfg = model_config(recipe, train_ds.vocab_size, train_ds.eos_id)
    sampler = WindowSampler(train_ds, tc.seq_len, tc.seed)

    state: dict[str, Any] = {}
    if resume:
        ckpt = existing[-1]
        state = ckpt_io.read_state(ckpt)
        _check_resume(state, cfg, recipe, ckpt)
    torch.manual_seed(tc.seed)
    model = Transformer(cfg).to(info.device)
    if init_from is not None and not resume:  # a later stage starts from the previous stage's weights
        ckpt_io.load_weights_into(model, init_from)
    model = D.wrap_model(model, info, tc.dist)
    optimizer = build_optimizer(model, tc.lr, tc.weight_decay, (tc.beta1, tc.beta2))
    if resume:
        ckpt_io.restore_training_state(ckpt, model, optimizer)
    step = int(state.get("step", 0))
    fwd = torch.compile(model) if tc.compile else model

    log = None
    if info.is_main:
        if overwrite and existing:
            for p in existing:
                shutil.rmtree(p)
            (out / "metrics.jsonl").unlink(missing_ok=True)
            shutil.rmtree(out / "tb", ignore_errors=True)
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".ckpt_*.tmp"):  # a checkpoint whose writer was killed mid-way
            shutil.rmtree(stale, ignore_errors=True)
        ckpt_io.write_config(out, recipe.to_dict())
        shutil.copytree(Path(recipe.data.dir) / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
        log = MetricsLog(out, tc.tensorboard, start_step=step)

    autocast, precision = _autocast(tc.dtype, info.device)
    peak = tc.peak_flops or measure_matmul_peak(info.device, torch.bfloat16 if precision == "bf16" else torch.float32)
    flops_per_token = cfg.flops_per_token(tc.seq_len)
    windows = eval_windows(val_ds, tc.seq_len, tc.eval_tokens) if val_ds is not None else []
    tokens_per_step = tc.batch_size * tc.seq_len
    console = Console(info.is_main and not quiet, tc.max_steps, step)
    origin = f"resuming at step {step}" if step else f"starting from {init_from}" if init_from else "from scratch"
    if resume and state.get("world_size", info.world_size) != info.world_size:
        origin += f" (checkpoint written by {state['world_size']} processes; resharded)"
    if info.is_main and not quiet:
        console.print(f"[bold]{recipe.name}[/]: {cfg.name} {D.unwrap(model).num_params() / 1e6:.2f}M params, "
                      f"{len(train_ds):,} train tokens, {tc.batch_size}x{tc.seq_len} tokens/step ({accum} micro-batches x "
                      f"{info.world_size} procs), {precision} on {info.device}, {origin}")  # fmt: skip

    def evaluate_now() -> dict[str, Any]:
        model.eval()
        loss = evaluate(fwd, val_ds, windows, tc.seq_len, micro, info, autocast)
        model.train()
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50)), "val_bpb": bits_per_byte(loss, train_ds.bytes_per_token)}

    def show_sample(at: int) -> None:
        model.eval()
        with autocast():
            text = sample(model, tokenizer, tc.sample_prompt, tc.sample_tokens, tc.temperature, tc.top_k, tc.seed + at, info.device)
        model.train()
        console.print(f"[dim]--- sample at step {at} ---[/]")
        console.print(f"{tc.sample_prompt.lstrip()}{text}".rstrip(), markup=False, highlight=False)
        console.print("[dim]---[/]")

    def save(at: int) -> Path:
        meta = {"samples": at * tc.batch_size, "model_config": cfg.to_dict(), "train": dataclasses.asdict(tc)}
        return ckpt_io.save_training_checkpoint(out, at, model, optimizer, meta, tc.keep_last, tc.ckpt_format)

    summary: dict[str, Any] = {"run_dir": str(out), "start_step": step}
    model.train()
    last = {"time": time.perf_counter(), "step": step}
    with console:
        while step < min(stop_at, tc.max_steps):
            lr = lr_at(step, tc.lr, tc.max_steps, tc.warmup_steps, tc.min_lr, tc.schedule, tc.decay_fraction)
            set_lr(optimizer, lr)
            first = step * tc.batch_size + info.rank * local_rows
            loss_sum = torch.zeros((), device=info.device)
            aux_sum = torch.zeros((), device=info.device)
            for m in range(accum):
                x, y = sampler.batch(first + m * micro, micro)
                with _grad_sync(model, info, tc.dist, last_micro=m == accum - 1), autocast():
                    res = fwd(x.to(info.device, non_blocking=True), targets=y.to(info.device, non_blocking=True))
                    total = res.loss + (res.aux_loss if res.aux_loss is not None else 0)
                (total / accum).backward()
                loss_sum += res.loss.detach() / accum
                if res.aux_loss is not None:
                    aux_sum += res.aux_loss.detach() / accum
            params = [p for p in model.parameters() if p.grad is not None]
            gnorm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip if tc.grad_clip > 0 else float("inf"))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss = D.all_reduce_mean(loss_sum, info).item()
            if not math.isfinite(loss):
                raise UserError(f"the loss became {loss} at step {step}; lower train.lr or raise train.warmup_steps")
            record = {"step": step, "loss": loss, "lr": lr, "grad_norm": float(gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm),
                      "epoch": round(sampler.epoch_of(step * tc.batch_size), 4)}  # fmt: skip
            if aux_sum.item():
                record["aux_loss"] = D.all_reduce_mean(aux_sum, info).item()
            if step % tc.log_interval == 0 or step == tc.max_steps:
                now = time.perf_counter()
                tps = (step - last["step"]) * tokens_per_step / (now - last["time"])
                record.update(tokens_per_s=round(tps, 1), mfu=round(tps * flops_per_token / (peak * info.world_size), 4))
                last.update(time=now, step=step)
                console.print(f"step {step:>6} | loss {loss:.4f} | lr {lr:.2e} | grad {record['grad_norm']:.2f} | "
                              f"{tps:,.0f} tok/s | MFU {100 * record['mfu']:.1f}%")  # fmt: skip
            if windows and ((tc.eval_interval and step % tc.eval_interval == 0) or step == tc.max_steps):
                record.update(evaluate_now())
                bpb = f", {record['val_bpb']:.3f} bits/byte" if record["val_bpb"] else ""
                console.print(f"[green]step {step}: val loss {record['val_loss']:.4f}, ppl {record['val_ppl']:.1f}{bpb}[/]")
            if log is not None:
                log.write(record)
            console.advance(step, f"loss {loss:.3f}")
            if tc.sample_tokens and ((tc.sample_interval and step % tc.sample_interval == 0) or step == tc.max_steps):
                show_sample(step)
            if (tc.ckpt_interval and step % tc.ckpt_interval == 0) or step in (tc.max_steps, stop_at):
                summary["checkpoint"] = str(save(step))
                if log is not None:
                    plot_losses(log.path, out / "loss.png", recipe.name)
            summary.update(record)
    if log is not None:
        log.close()
    summary["step"] = step
    return summary


def _grad_sync(model, info: D.DistInfo, strategy: str, last_micro: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of a step."""
    if not info.enabled:
        return contextlib.nullcontext()
    if strategy == "fsdp":
        model.set_requires_gradient_sync(last_micro)
        return contextlib.nullcontext()
    return contextlib.nullcontext() if last_micro else model.no_sync()


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
        done = [p for p in ckpt_io.list_checkpoints(stage_dir) if ckpt_io.read_state(p)["step"] >= sub.train.max_steps]
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
