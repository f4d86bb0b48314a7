"""Training throughput: gptqwen's training step vs a plain `transformers` loop, same GPT-2-style model.

    python bench/train_step.py                      # CPU or the first GPU; prints tokens/s, MFU and the ratio
    python bench/train_step.py --steps 20 --dtype bf16 --compile

Both sides train the same architecture (6 layers, 384 wide, 6 heads, 256 context, batch 8, GPT-2
vocabulary of 50257) from the same initial weights on the same batches, with AdamW and gradient
clipping. Ours is the step `gptqwen pretrain` runs (our decoder with its LM head fused with the loss in
chunks, `build_optimizer` param groups with the fused AdamW kernel, optional bf16 autocast /
torch.compile); the reference is
`GPT2LMHeadModel` + `torch.optim.AdamW` as a plain loop. MFU uses 6N + 12·L·H·Q·T FLOPs per token
(PaLM appendix B) against the measured dense fp32 matmul peak of the device.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch


def bench(step_fns: list, steps: int, warmup: int, sync) -> list[float]:
    """Median seconds per step of each function; steps interleave so load changes hit both alike."""
    times: list[list[float]] = [[] for _ in step_fns]
    for i in range(warmup + steps):
        for fn, ts in zip(step_fns, times):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if i >= warmup:
                ts.append(time.perf_counter() - start)
    return [statistics.median(ts) for ts in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16 = autocast on our side")
    ap.add_argument("--compile", action="store_true", help="torch.compile our model")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers

    from gptqwen.config import Config
    from gptqwen.hf import save_pretrained
    from gptqwen.model import Transformer
    from gptqwen.train.metrics import measure_matmul_peak
    from gptqwen.train.optim import build_optimizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    cfg = Config.from_name("gpt2-124m", n_layer=6, n_embd=384, n_head=6, max_seq_len=args.seq)
    torch.manual_seed(0)
    ours = Transformer(cfg).to(device).train()
    import tempfile

    with tempfile.TemporaryDirectory() as d:  # the reference starts from the very same weights
        save_pretrained(ours, d)
        theirs = transformers.AutoModelForCausalLM.from_pretrained(  # no dropout: ours has none either
            d, attn_implementation="sdpa", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0).to(device).train()
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), device=device)
    inputs, targets = x[:, :-1], x[:, 1:].clone()
    targets[:, -1] = -100  # transformers shifts labels inside and so never scores the last position

    opt_ours = build_optimizer(ours, 3e-4, 0.1, (0.9, 0.95))
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95))
    fwd = torch.compile(ours) if args.compile else ours
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.dtype == "bf16" else contextlib.nullcontext
    losses = {"ours": [], "transformers": []}

    def step_ours():
        with autocast():
            loss = fwd(inputs, targets=targets).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), 1.0)
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)
        losses["ours"].append(loss.item())

    def step_theirs():
        loss = theirs(input_ids=inputs, labels=inputs).loss  # shifted inside: the same targets as ours
        loss.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        opt_theirs.step()
        opt_theirs.zero_grad(set_to_none=True)
        losses["transformers"].append(loss.item())

    t_theirs, t_ours = bench([step_theirs, step_ours], args.steps, args.warmup, sync)
    peak = measure_matmul_peak(device, torch.float32, seconds=1.0)
    tokens = args.batch * args.seq
    flops = cfg.flops_per_token(args.seq) * tokens
    print(f"device {device}, threads {torch.get_num_threads()}, {cfg.num_params() / 1e6:.1f}M params, {tokens} tokens/step, "
          f"measured fp32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    for name, t in (("transformers", t_theirs), ("gptqwen", t_ours)):
        print(f"{name:>12}: {t * 1e3:8.1f} ms/step  {tokens / t:9.0f} tokens/s  MFU {100 * flops / t / peak:5.1f}%")
    print(f"first-step loss ours {losses['ours'][0]:.5f} vs transformers {losses['transformers'][0]:.5f}")
    print(f"speed-up gptqwen / transformers: {t_theirs / t_ours:.2f}x")


if __name__ == "__main__":
    main()
