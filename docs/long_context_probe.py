"""Retrieval by key distance, teacher-forced: the diagnostic behind the README's "Long context" experiments.

For each of N pass-key documents in the training format (`gptqwen.data.retrieval.passkey_document`, fixed seed) one
forward pass scores the answer: *exact* when the argmax at every answer position (the space and the five digits)
is the right token (the same as a greedy answer being exactly the key), *first* when the space and the first digit
are (the model found the key; a later digit wrong means it lost its place while copying). Rows are buckets of the
key-to-question distance in tokens. `--theta` swaps the RoPE base without training (every layer, or one with
`--layer`), which is how the README measured what a base change does to a trained copy circuit.

    python docs/long_context_probe.py runs/qwen3-long/short                       # 256-token documents, 60 each
    python docs/long_context_probe.py runs/qwen3-long/long --units 41 --docs 60   # ~1024-token documents
    python docs/long_context_probe.py runs/qwen3-long/short --theta 1e6 --layer 0 # only layer 0 at base 1e6
"""

from __future__ import annotations

import argparse
import dataclasses
import random

import torch

from gptqwen.data.retrieval import PASSKEY_QUESTION, passkey_document
from gptqwen.loading import load_model_and_tokenizer
from gptqwen.model.rope import Rotary

BUCKETS = ((0, 64), (64, 128), (128, 256), (256, 512), (512, 1024), (1024, 4096))


def swap_base(model: torch.nn.Module, theta: float, layer: int | None) -> None:
    """Rotate with RoPE base `theta` instead of the trained one: in every layer, or only in `layer`."""
    cfg = model.config
    rotary = Rotary(cfg.head_dim, theta, cfg.rope_scaling, max(4096, cfg.max_seq_len))
    if layer is None:
        model.config = cfg.replace(rope_theta=theta, max_seq_len=max(4096, cfg.max_seq_len))
        model.rotary = rotary
        return
    attn = model.blocks[layer].attn
    forward = attn.forward

    def rebased(x: torch.Tensor, ctx):  # this layer's cos/sin from the other base, for a whole-prompt forward
        cos, sin = rotary(None, x.shape[1], x.device, 1.0, start=0, length=x.shape[1])
        return forward(x, dataclasses.replace(ctx, cos=cos.to(x.dtype), sin=sin.to(x.dtype)))

    attn.forward = rebased


def probe(model: torch.nn.Module, tok, units: int, docs: int, far: bool, seed: int = 4321) -> list[tuple[int, bool, bool]]:
    """(distance, exact, first) for `docs` documents of up to `units` filler groups."""
    rng = random.Random(seed)
    out = []
    for _ in range(docs):
        doc = passkey_document(rng, units, far_keys=far)
        cut = doc.rindex(PASSKEY_QUESTION) + len(PASSKEY_QUESTION)
        n_prompt = len(tok.encode(doc[:cut]))
        ids = torch.tensor([tok.encode(doc)])
        distance = len(tok.encode(doc[doc.index("The pass key is"):cut]))
        with torch.no_grad():
            pred = model(ids).logits[0].argmax(-1)
        ok = pred[n_prompt - 1:n_prompt + 5] == ids[0, n_prompt:n_prompt + 6]
        out.append((distance, bool(ok.all()), bool(ok[:2].all())))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--units", type=int, default=7, help="filler groups at most (7: ~256 tokens, 41: ~1024)")
    ap.add_argument("--docs", type=int, default=60)
    ap.add_argument("--keys", choices=["near", "far", "both"], default="both",
                    help="near: the key anywhere in a uniform-length filler; far: the distance uniform")
    ap.add_argument("--theta", type=float, help="RoPE base to rotate with instead of the trained one")
    ap.add_argument("--layer", type=int, help="with --theta: only this layer")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model_and_tokenizer(args.model)
    model.eval()
    if args.theta:
        swap_base(model, args.theta, args.layer)
    for mode in (["near", "far"] if args.keys == "both" else [args.keys]):
        res = probe(model, tok, args.units, args.docs, mode == "far")
        cells = []
        for lo, hi in BUCKETS:
            b = [r for r in res if lo <= r[0] < hi]
            if b:
                cells.append(f"{lo}-{hi}: {sum(r[1] for r in b)}/{sum(r[2] for r in b)}/{len(b)}")
        print(f"{args.model} units={args.units} {mode}: exact {sum(r[1] for r in res)}/{len(res)}; "
              f"by distance (exact/first/n): {'  '.join(cells)}")


if __name__ == "__main__":
    main()
