"""How far apart a model's embeddings of paired tokens are (" true"/" false", " same"/" opposite", "3"/"4", " A"/" B"):
cosine, the norm of the difference and the norm of the first token's vector, one line per model:

    OMP_NUM_THREADS=1 python docs/reasoning_embeddings.py runs/demo-reasoning/student-init \\
        runs/demo-reasoning/distill/1-off-policy-arithmetic runs/demo-reasoning/distill/2-off-policy-logic

Until session 13 the reasoning demo's models tied input and output embeddings; a pair the model cannot yet tell apart
as targets (the truth values before it follows the chains) ended up nearly parallel (cosine ≈ 1), so reading it as
input was hard too. The demo now unties them: the input vectors of " true" and " false" stay apart (cosine 0.37–0.51)
in distilled students that learn the chains and in those that do not. The README's "Reasoning models" section has the
figures.
"""

from __future__ import annotations

import sys

import torch

from gptqwen.loading import load_model_and_tokenizer

PAIRS = ((" true", " false"), (" same", " opposite"), ("3", "4"), (" A", " B"))


def main(runs: list[str]) -> None:
    for run in runs:
        model, tok = load_model_and_tokenizer(run)
        emb = model.wte.weight.detach()
        out = []
        for a, b in PAIRS:
            (ia,), (ib,) = tok.encode(a), tok.encode(b)  # each a single token of the demo's tokenizer
            x, y = emb[ia], emb[ib]
            out.append(f"{a.strip()}/{b.strip()} cos {torch.cosine_similarity(x, y, 0):.2f} "
                       f"|d| {float((x - y).norm()):.2f} |x| {float(x.norm()):.2f}")  # fmt: skip
        print(f"{run}: " + "; ".join(out))


if __name__ == "__main__":
    main(sys.argv[1:])
