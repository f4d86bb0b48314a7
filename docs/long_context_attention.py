"""Where the passkey question looks: the diagnostic behind the README's "Long context" explanation of why plain RoPE
fails past the training length while YaRN keeps retrieving.

For one passkey prompt per (context length, depth) it runs one whole-prompt forward and reads, for the last query
(the end of the question) in every layer and head, the share of attention on tokens more than `--trained` tokens back
and the share on the needle. Plain RoPE (`--allow-longer`) and YaRN (factor = the longest length over the trained
one) take the same full-sequence attention path, so the two are compared on the same scores. (DCA merges three
partial attentions and is not read here.)

    python docs/long_context_attention.py runs/qwen3-long/long                       # 1024 and 4096, depths 1 and 0
    python docs/long_context_attention.py runs/qwen3-long/long --lengths 1024 8192 --trained 1024
"""

from __future__ import annotations

import argparse
import random

import torch

from gptqwen.data.retrieval import PASSKEY_QUESTION, passkey_needle, random_key
from gptqwen.eval.long_context import haystack
from gptqwen.loading import load_model_and_tokenizer
from gptqwen.model import attention
from gptqwen.model.dca import extend_context


def last_query_attention(model: torch.nn.Module, ids: list[int]) -> list[torch.Tensor]:
    """Per layer, the last position's attention weights [heads, T] (softmax of the rotated q·k over the prompt)."""
    seen, causal = [], attention.ops.causal_attention

    def spy(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        scores = torch.einsum("hd,thd->ht", q[0, -1].float(), k[0].float()) / q.shape[-1] ** 0.5
        seen.append(scores.softmax(-1))
        return causal(q, k, v)

    attention.ops.causal_attention = spy
    try:
        with torch.no_grad():
            model(torch.tensor([ids]))
    finally:
        attention.ops.causal_attention = causal
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--depths", type=float, nargs="+", default=[1.0, 0.0])
    ap.add_argument("--trained", type=int, default=1024, help="the model's training length")
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    longest = max(args.lengths)
    for name, kw in [("plain", {"allow_longer": True}), (f"yarn{longest / args.trained:g}", {"yarn": longest / args.trained})]:
        model, tok = load_model_and_tokenizer(args.model)
        model.eval()
        extend_context(model, longest, **kw)
        for L in args.lengths:
            for depth in args.depths:
                key = random_key(random.Random(args.seed))
                ids = haystack(tok, L - 8, [(depth, passkey_needle(key))], PASSKEY_QUESTION)
                needle = tok.encode(" " + passkey_needle(key))
                at = next(i for i in range(len(ids)) if ids[i:i + len(needle)] == needle)
                for layer, a in enumerate(last_query_attention(model, ids)):
                    far = a[:, :max(0, len(ids) - args.trained)].sum(-1).tolist()
                    on = a[:, at:at + len(needle)].sum(-1).tolist()
                    print(f"{name:7s} L={L} depth={depth:g} layer {layer}: attention > {args.trained} back "
                          f"{' '.join(f'{x:.2f}' for x in far)} | on the needle {' '.join(f'{x:.2f}' for x in on)}")


if __name__ == "__main__":
    main()
