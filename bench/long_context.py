"""Long-context prefill and decode: gptqwen vs transformers (SDPA) on SmolLM2-135M, same fp32 weights, one run.

    python bench/long_context.py                                # 1k, 4k, 8k tokens, 2 threads
    python bench/long_context.py --lengths 1024 4096 8192 16384 --dca 6144 2048 --yarn 2 --json

For every context length, each side prefills one random prompt of that many tokens into its KV cache (ours:
`Engine`, which prefills in chunks of `PREFILL_CHUNK` tokens into a cache sized to the request; transformers:
one forward with `use_cache=True, logits_to_keep=1`, `attn_implementation="sdpa"`), then decodes `--decode`
tokens greedily. Reported: prefill tokens/s, decode tokens/s at that context, and peak memory: the process's
peak resident set during the measurement (reset with Linux's `clear_refs` after loading the model and a short
warm-up) minus its resident set at that point. Each (side, length) runs in its own worker process. Both sides get the GGUF dequantised
to float32 once (ours loads it; transformers loads our `save_pretrained` export of it). `--dca`/`--yarn` add a row
for our model with Dual Chunk Attention (and YaRN) on, which transformers does not have.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from decode import smollm2_path  # bench/decode.py, beside this script


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) / 1024  # kB


def reset_peak() -> float:
    """Reset the peak resident set to the current one (Linux `clear_refs` 5) and return the current, MB. Freed heap
    memory is handed back first (`malloc_trim`), or later allocations would reuse it unseen."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mb("VmRSS:")


def peak_mb() -> float:
    return _status_mb("VmHWM:")


def worker(args: argparse.Namespace) -> dict:
    """One (side, length) measurement in this process."""
    torch.set_num_threads(args.threads)
    from gptqwen.loading import from_pretrained

    model = from_pretrained(args.model, dtype=torch.float32)
    L, n = args.length, args.decode
    ids = torch.randint(0, model.config.vocab_size, (1, L), generator=torch.Generator().manual_seed(0))
    if args.side == "transformers":
        import transformers

        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            del model
            hf = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32,
                                                                  attn_implementation="sdpa").eval()

        @torch.inference_mode()
        def run(x: torch.Tensor, steps: int) -> tuple[float, float]:
            t0 = time.perf_counter()
            out = hf(x, use_cache=True, logits_to_keep=1)
            t1 = time.perf_counter()
            past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            for _ in range(steps):
                out = hf(tok, past_key_values=past, use_cache=True)
                past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            return t1 - t0, time.perf_counter() - t1
    else:
        from gptqwen.infer import Engine, SamplingParams
        from gptqwen.model.dca import extend_context

        if args.side == "gptqwen+dca":
            extend_context(model, L + n + 1, yarn=args.yarn, dca=tuple(args.dca))
        elif L + n + 1 > model.config.max_seq_len:
            extend_context(model, L + n + 1, allow_longer=True)
        engine = Engine(model)

        def run(x: torch.Tensor, steps: int) -> tuple[float, float]:
            timings: dict = {}
            params = SamplingParams(max_new_tokens=steps + 1, temperature=0, ignore_eos=True)
            for _ in engine.run(engine.make_rows([x[0].tolist()], params), timings):
                pass
            return timings["prefill_s"], timings["decode_s"]

    run(ids[:, :64], 2)  # warm-up: first-call allocations and kernel set-up are not the long context's cost
    base = reset_peak()
    prefill_s, decode_s = run(ids, n)
    return {"side": args.side, "length": L, "prefill_tok_s": L / prefill_s, "decode_tok_s": n / decode_s,
            "peak_mb": peak_mb() - base, "threads": args.threads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="a .gguf file (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 8192])
    ap.add_argument("--decode", type=int, default=16, help="tokens decoded after the prefill (default 16)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dca", type=int, nargs=2, default=None, metavar=("CHUNK", "LOCAL"),
                    help="also time our model with Dual Chunk Attention")
    ap.add_argument("--yarn", type=float, default=None, help="YaRN factor for the --dca row")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", nargs=2, default=None, metavar=("SIDE", "LENGTH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.model = str(args.model or smollm2_path())
    if args.worker:
        args.side, args.length = args.worker[0], int(args.worker[1])
        print(json.dumps(worker(args)))
        return
    sides = ["gptqwen"] + ([] if args.skip_hf else ["transformers"]) + (["gptqwen+dca"] if args.dca else [])
    rows = []
    for L in args.lengths:
        for side in sides:
            cmd = [sys.executable, __file__, "--model", args.model, "--decode", str(args.decode), "--threads",
                   str(args.threads), "--worker", side, str(L)]
            if args.dca:
                cmd += ["--dca", *map(str, args.dca)] + (["--yarn", str(args.yarn)] if args.yarn else [])
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                rows.append({"side": side, "length": L, "error": done.stderr.strip().splitlines()[-1:]})
            else:
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            if not args.json:
                print(rows[-1], file=sys.stderr)
    report = {"model": Path(args.model).name, "dtype": "float32", "threads": args.threads, "decode": args.decode,
              "dca": args.dca, "yarn": args.yarn, "rows": rows}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{'length':>7} {'side':>13} {'prefill tok/s':>14} {'decode tok/s':>13} {'peak MB':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['length']:>7} {r['side']:>13}  failed: {r['error']}")
            continue
        print(f"{r['length']:>7} {r['side']:>13} {r['prefill_tok_s']:>14.1f} {r['decode_tok_s']:>13.2f} {r['peak_mb']:>9.0f}")


if __name__ == "__main__":
    main()
