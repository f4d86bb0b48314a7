"""Forward+backward throughput of gptqwen's Transformer vs transformers, same configs and same weights.

    python bench/model_step.py                      # GPT-2 and Qwen3 style, 2 threads, 5 repeats
    python bench/model_step.py --threads 1 --repeats 7 --batch 4 --seq 256

Each repeat times a few training steps (forward, loss, backward) of ours and of the reference, interleaved so
background load hits both alike; the median tokens/s and their ratio are printed (ratio > 1: ours is faster).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from gptqwen.config import Config
from gptqwen.hf import from_pretrained

CONFIGS = {
    "gpt2-style": Config(name="gpt2-style", vocab_size=8192, n_layer=6, n_embd=384, n_head=6, max_seq_len=512),
    "qwen3-style": Config.from_name("qwen3-0.6b", vocab_size=8192, n_layer=6, n_embd=384, n_head=6, n_kv_head=2,
                                    head_dim=64, intermediate_size=1024, max_seq_len=512, tie_embeddings=True),
}


def _steps_per_s(step, n_steps: int) -> float:
    t = time.perf_counter()
    for _ in range(n_steps):
        step()
    return n_steps / (time.perf_counter() - t)


def bench(cfg: Config, batch: int, seq: int, repeats: int, n_steps: int) -> tuple[float, float]:
    import transformers

    from gptqwen.config import config_to_hf

    d = config_to_hf(cfg)
    mt = d.pop("model_type")
    d.pop("architectures")
    d.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # GPT-2 trains with dropout by default; we compare math
    torch.manual_seed(0)
    ref = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(mt, **d)).train()
    with tempfile.TemporaryDirectory() as tmp:
        ref.save_pretrained(tmp)
        ours = from_pretrained(tmp).train()
    ids = torch.randint(0, cfg.vocab_size, (batch, seq))
    targets = torch.cat([ids[:, 1:], torch.full((batch, 1), -100)], 1)

    def ours_step():
        ours(ids, targets=targets).loss.backward()

    def ref_step():
        ref(input_ids=ids, labels=ids, use_cache=False).loss.backward()

    with torch.no_grad():  # same weights, same loss
        a, b = ours(ids, targets=targets).loss.item(), ref(input_ids=ids, labels=ids).loss.item()
    assert abs(a - b) < 1e-4, (a, b)
    ours_step(), ref_step()  # warm-up
    ours_tps, ref_tps = [], []
    for _ in range(repeats):
        ours_tps.append(_steps_per_s(ours_step, n_steps) * batch * seq)
        ref_tps.append(_steps_per_s(ref_step, n_steps) * batch * seq)
        ours.zero_grad(set_to_none=True), ref.zero_grad(set_to_none=True)
    return statistics.median(ours_tps), statistics.median(ref_tps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="training steps per timed repeat")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--only", choices=list(CONFIGS), default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch} x seq {args.seq}, "
          f"median of {args.repeats} repeats x {args.steps} steps")
    for name, cfg in CONFIGS.items():
        if args.only and name != args.only:
            continue
        ours, ref = bench(cfg, args.batch, args.seq, args.repeats, args.steps)
        print(f"{name:12s} ours {ours:9.0f} tok/s   transformers {ref:9.0f} tok/s   ratio {ours / ref:.2f}x")


if __name__ == "__main__":
    main()
