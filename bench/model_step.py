"""Training-step throughput (forward + loss + backward) of gptqwen's Transformer vs transformers.

    python bench/model_step.py                      # tiny GPT-2 and Qwen3 shapes, 2 threads
    python bench/model_step.py --size small --threads 1 --steps 15
    python bench/model_step.py --compile            # also torch.compile'd ours (compile time printed)

Both models get the same config and the same weights (ours is loaded from the transformers checkpoint and
the first losses are checked equal). Steps alternate ours/reference so background load hits both alike; the
median step time of each gives tokens/s and the ratio (> 1: ours is faster). The min-based ratio is printed
too, as a check against noise on a shared machine; with --threads 1 also the ratio of the best per-step CPU
times of the compute thread, which other processes' scheduling cannot distort.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from gptqwen.config import Config, config_to_hf
from gptqwen.loading import from_pretrained

SIZES = {  # the project's CPU training regime ("tiny") and a larger one where matmuls dominate ("small")
    "tiny": {"gpt2-style": Config.from_name("gpt2-tiny"), "qwen3-style": Config.from_name("qwen3-tiny")},
    "small": {"gpt2-style": Config.from_name("gpt2-tiny", vocab_size=4096, n_layer=6, n_embd=256, n_head=4),
              "qwen3-style": Config.from_name("qwen3-tiny", vocab_size=4096, n_layer=6, n_embd=256, n_head=4,
                                              n_kv_head=2, head_dim=64, intermediate_size=768)},
}


def _reference(cfg: Config):
    import transformers

    d = config_to_hf(cfg)
    mt = d.pop("model_type")
    d.pop("architectures")
    d.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # GPT-2 trains with dropout by default; compare math
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(mt, **d)).train()


def bench(cfg: Config, batch: int, seq: int, steps: int, compile: bool = False) -> dict[str, list[float]]:
    ref = _reference(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp)
        ours = from_pretrained(tmp).train()
    ids = torch.randint(0, cfg.vocab_size, (batch, seq))
    targets = torch.cat([ids[:, 1:], torch.full((batch, 1), -100)], 1)
    runs = {
        "ours": lambda: ours(ids, targets=targets).loss,
        "transformers": lambda: ref(input_ids=ids, labels=ids, use_cache=False).loss,
    }
    times: dict[str, list[float]] = {}
    if compile:
        compiled = torch.compile(ours)
        t = time.perf_counter()
        compiled(ids, targets=targets).loss.backward()  # the first call compiles forward and backward
        times["compile_s"] = [time.perf_counter() - t]
        ours.zero_grad(set_to_none=True)
        runs["ours_compiled"] = lambda: compiled(ids, targets=targets).loss
    with torch.no_grad():
        a, b = (f().item() for f in list(runs.values())[:2])
    assert abs(a - b) < 1e-4, f"models disagree: loss {a} vs {b}"
    times.update({k: [] for k in runs})
    times.update({f"{k}_cpu": [] for k in runs})
    for i in range(steps + 2):
        for name, f in runs.items():
            t, c = time.perf_counter(), time.thread_time()
            f().backward()
            if i >= 2:  # two warm-up steps
                times[name].append(time.perf_counter() - t)
                times[f"{name}_cpu"].append(time.thread_time() - c)
        ours.zero_grad(set_to_none=True)
        ref.zero_grad(set_to_none=True)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=list(SIZES), default="tiny")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per model")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile(ours) (opt-in: compiling takes a while)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} threads, "
          f"{args.size} configs, batch {args.batch} x seq {args.seq}, median of {args.steps} steps")
    for name, cfg in SIZES[args.size].items():
        t = bench(cfg, args.batch, args.seq, args.steps, args.compile)
        tok = args.batch * args.seq
        ours, ref = statistics.median(t["ours"]), statistics.median(t["transformers"])
        line = (f"{name:12s} ours {tok / ours:8.0f} tok/s   transformers {tok / ref:8.0f} tok/s   "
                f"ratio {ref / ours:.2f}x   (min-based {min(t['transformers']) / min(t['ours']):.2f}x)")
        if args.threads == 1:  # CPU time of the one compute thread: immune to other processes' scheduling
            line += f"   CPU-time ratio {min(t['transformers_cpu']) / min(t['ours_cpu']):.2f}x"
        if "ours_compiled" in t:
            comp = statistics.median(t["ours_compiled"])
            line += f"   compiled {tok / comp:8.0f} tok/s ratio {ref / comp:.2f}x (compile {t['compile_s'][0]:.0f} s)"
        print(line, flush=True)


if __name__ == "__main__":
    main()
