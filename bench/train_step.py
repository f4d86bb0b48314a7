"""Training throughput: the step `gptqwen pretrain` runs vs a plain `transformers` loop and a plain PyTorch GPT-2.

    python bench/train_step.py                               # CPU or the first GPU; prints ms/step, MFU and ratios
    python bench/train_step.py --ours fp32 bf16-compile --reference all --steps 8
    python bench/train_step.py --nanogpt ~/src/nanoGPT/model.py   # also a nanoGPT checkout's model.py, run beside ours

Every side trains the same GPT-2-style model (6 layers, 384 wide, 6 heads, T 256, batch 8, vocabulary 50304) from
the same initial weights on the same batch, with AdamW (lr 3e-4, betas 0.9/0.95, weight decay 0.1 on matrices,
the fused kernel on every side) and gradient clipping at 1.0. The first-step losses are asserted to agree.

* gptqwen: `gptqwen.train.loop.optimizer_step` — the very function the trainer's loop calls — on the pretraining
  objective (`train.trainer.lm_loss`), in the precision / compile settings named by --ours (fp32 = the trainer's
  default on CPU; bf16-compile = `train.dtype=bf16 train.compile=true`).
* transformers: `GPT2LMHeadModel` (SDPA attention) in fp32, eager, a plain loop.
* plain: a plain PyTorch GPT-2 written for this bench (`bench/plain_gpt2.py`, nanoGPT style) at the settings users
  pick for it on a CPU: bf16 autocast + `torch.compile` (and fp32 eager with --reference all).
* nanogpt (with --nanogpt FILE): nanoGPT's own `GPT` class from a checkout you point at, bf16 autocast + compile;
  its code is loaded from that file at run time, never copied here.
Steps interleave across sides (a shared machine's load hits all alike); the median of --steps timed steps is kept
after --warmup (compilation happens in the warm-up); `--clock cpu` times CPU seconds instead of wall seconds.
MFU uses 6N + 12·L·H·Q·T FLOPs per token (PaLM, appendix B) against the best of three measured dense matmul
peaks (fp32 for fp32 sides, bf16 for bf16 sides), capped at 100%.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gptqwen.config import Config  # noqa: E402
from gptqwen.hf import save_pretrained  # noqa: E402
from gptqwen.model import Transformer  # noqa: E402
from gptqwen.train import distributed as D  # noqa: E402
from gptqwen.train.loop import Workload, optimizer_step  # noqa: E402
from gptqwen.train.metrics import measure_matmul_peak  # noqa: E402
from gptqwen.train.optim import build_optimizer  # noqa: E402
from gptqwen.train.recipe import TrainConfig  # noqa: E402
from gptqwen.train.trainer import lm_loss  # noqa: E402
from plain_gpt2 import PlainGPT2  # noqa: E402

LR, BETAS, WD = 3e-4, (0.9, 0.95), 0.1


def settings(name: str) -> tuple[str, bool]:
    """'fp32' | 'bf16' | 'fp32-compile' | 'bf16-compile' -> (dtype, compile)."""
    dtype, _, comp = name.partition("-")
    return dtype, comp == "compile"


def autocast_ctx(device: torch.device, dtype: str):
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if dtype == "bf16" else contextlib.nullcontext


def ours_step(model: Transformer, batch, device: torch.device, setting: str):
    """A closure running one trainer step (gptqwen.train.loop.optimizer_step) in `setting`."""
    dtype, comp = settings(setting)
    tc = TrainConfig(dtype=dtype, compile=comp, lr=LR, beta1=BETAS[0], beta2=BETAS[1], weight_decay=WD, grad_clip=1.0)
    info = D.DistInfo(device=device)
    work = Workload(model=model, model_config={}, steps=1, micro_batches=lambda *a: [batch],
                    loss=partial(lm_loss, device=device), count_tokens=lambda b: b[0].numel())
    optimizer = build_optimizer(model, LR, WD, BETAS)
    fwd = torch.compile(model) if comp else model
    trainable = [p for p in model.parameters() if p.requires_grad]
    autocast = autocast_ctx(device, dtype)

    def step() -> float:
        sums, _, _ = optimizer_step(work, [batch], fwd, model, optimizer, trainable, tc, info, autocast)
        return float(sums["loss"])

    return step


def module_step(model: torch.nn.Module, loss_of, device: torch.device, setting: str):
    """A plain loop's step for a reference model: autocast as set, AdamW (fused, decay on matrices), clip 1.0."""
    dtype, comp = settings(setting)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WD}, {"params": rest, "weight_decay": 0.0}],
                                  lr=LR, betas=BETAS, fused=True)
    fwd = torch.compile(model) if comp else model
    autocast = autocast_ctx(device, dtype)

    def step() -> float:
        with autocast():
            loss = loss_of(fwd)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def load_nanogpt(path: Path, ours: Transformer, cfg: Config, device: torch.device) -> torch.nn.Module:
    """nanoGPT's GPT from the user's checkout, holding our initial weights (the same names, Conv1D-free layout)."""
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    gcfg = mod.GPTConfig(block_size=cfg.max_seq_len, vocab_size=cfg.vocab_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
                         n_embd=cfg.n_embd, dropout=0.0, bias=True)
    model = mod.GPT(gcfg).to(device)
    plain = PlainGPT2(cfg.vocab_size, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.max_seq_len).load_from(ours)
    # nanoGPT's per-block order (ln_1, c_attn, c_proj, ln_2, c_fc, c_proj) matches PlainGPT2's parameter order
    with torch.no_grad():
        src = dict(plain.named_parameters())
        model.transformer.wte.weight.copy_(src["wte.weight"])
        model.transformer.wpe.weight.copy_(src["wpe.weight"])
        model.transformer.ln_f.weight.copy_(src["ln_f.weight"])
        model.transformer.ln_f.bias.copy_(src["ln_f.bias"])
        for mine, theirs in zip(plain.blocks, model.transformer.h):
            for a, b in zip(mine.parameters(), theirs.parameters()):
                b.copy_(a)
    return model.to(device).train()


def bench(steps: dict, n: int, warmup: int, sync, clock) -> tuple[dict[str, float], dict[str, list[float]]]:
    times: dict[str, list[float]] = {k: [] for k in steps}
    losses: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(warmup + n):
        for name, fn in steps.items():
            sync()
            start = clock()
            losses[name].append(fn())
            sync()
            if i >= warmup:
                times[name].append(clock() - start)
    return {k: statistics.median(v) for k, v in times.items()}, losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per side (compilation happens here)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--ours", nargs="+", default=["fp32", "bf16-compile"],
                    choices=["fp32", "bf16", "fp32-compile", "bf16-compile"])
    ap.add_argument("--reference", choices=["default", "all"], default="default",
                    help="default: transformers fp32 + plain GPT-2 bf16-compile; all: plain GPT-2 fp32 eager too")
    ap.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout's model.py, run beside ours (bf16 + compile)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: this process's CPU seconds per step (steadier on a shared machine; CPU only)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    cfg = Config.from_name("gpt2-124m", n_layer=6, n_embd=384, n_head=6, max_seq_len=args.seq, vocab_size=50304)
    torch.manual_seed(0)
    init = Transformer(cfg).to(device)
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), device=device)
    inputs, targets = x[:, :-1], x[:, 1:].clone()
    targets[:, -1] = -100  # transformers shifts labels inside and so never scores the last position

    sides: dict[str, object] = {}
    for setting in args.ours:
        model = Transformer(cfg).to(device)
        model.load_state_dict(init.state_dict())
        sides[f"gptqwen {setting}"] = ours_step(model.train(), (inputs, targets), device, setting)
    with tempfile.TemporaryDirectory() as d:  # transformers starts from the very same weights
        save_pretrained(init, d)
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            d, attn_implementation="sdpa", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0).to(device).train()
    sides["transformers fp32"] = module_step(hf, lambda f: f(input_ids=inputs, labels=inputs).loss, device, "fp32")
    plain_settings = ["bf16-compile"] + (["fp32"] if args.reference == "all" else [])
    for setting in plain_settings:
        plain = PlainGPT2(cfg.vocab_size, cfg.n_layer, cfg.n_embd, cfg.n_head, args.seq).to(device).load_from(init)
        sides[f"plain GPT-2 {setting}"] = module_step(plain.train(), lambda f: f(inputs, targets), device, setting)
    if args.nanogpt:
        nano = load_nanogpt(args.nanogpt, init, cfg, device)
        nano_targets = targets.masked_fill(targets == -100, -1)  # nanoGPT's ignore_index is -1
        sides["nanoGPT bf16-compile"] = module_step(nano, lambda f: f(inputs, nano_targets)[1], device, "bf16-compile")

    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    med, losses = bench(sides, args.steps, args.warmup, sync, clock)
    first = {k: v[0] for k, v in losses.items()}
    base = first["transformers fp32"]
    for name, value in first.items():  # the same model and batch: the first losses agree (bf16 within its precision)
        tol = 2e-2 if "bf16" in name else 1e-4
        assert abs(value - base) <= tol * max(1.0, abs(base)), f"first-step loss of {name} {value:.5f} != {base:.5f}"
    peaks = {dt: max(measure_matmul_peak(device, dt, seconds=0.5) for _ in range(3))
             for dt in (torch.float32, torch.bfloat16)}
    tokens = args.batch * args.seq
    flops = cfg.flops_per_token(args.seq) * tokens
    print(f"device {device}, threads {torch.get_num_threads()}, {cfg.num_params() / 1e6:.1f}M params, {tokens} tokens/step, "
          f"matmul peak fp32 {peaks[torch.float32] / 1e9:.0f} / bf16 {peaks[torch.bfloat16] / 1e9:.0f} GFLOP/s; "
          f"median of {args.steps} steps after {args.warmup} warm-up, {args.clock} clock")
    for name, t in med.items():
        peak = peaks[torch.bfloat16 if "bf16" in name else torch.float32]
        print(f"  {name:>26}: {t * 1e3:8.1f} ms/step  {tokens / t:8.0f} tok/s  MFU {min(100.0, 100 * flops / t / peak):5.1f}%"
              f"  first loss {first[name]:.5f}")
    best_ours = min((t, k) for k, t in med.items() if k.startswith("gptqwen"))
    for ref in [k for k in med if not k.startswith("gptqwen")]:
        print(f"  {best_ours[1]} / {ref}: {med[ref] / best_ours[0]:.2f}x")
    for k in med:
        if k.startswith("gptqwen") and k != best_ours[1]:
            print(f"  ({k} / transformers fp32: {med['transformers fp32'] / med[k]:.2f}x)")


if __name__ == "__main__":
    main()
