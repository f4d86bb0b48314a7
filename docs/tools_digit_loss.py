"""Diagnostic for the tool-use demo: mean teacher-forced loss (nats) per digit token of held-out conversations, by
where the digit is: the call's arguments, the answer after the tool response (restated expression / result), a
no-tools answer (restated expression / result). ln 10 = 2.30 means the model does not copy at all.

    .venv/bin/python docs/tools_digit_loss.py runs/demo-tools/sft 40
"""

import sys

import torch
import torch.nn.functional as F

from gptqwen.loading import load_model_and_tokenizer
from gptqwen.tools.synthetic import conversation, problems

torch.set_num_threads(1)
model, tok = load_model_and_tokenizer(sys.argv[1])
model.eval()
n = int(sys.argv[2]) if len(sys.argv) > 2 else 60
sums = {}
for p in problems(n, 4321):
    for use_tools in (True, False):
        row = conversation(p, use_tools)
        ids, mask = tok.render_for_sft(row["messages"], tools=row.get("tools"))
        with torch.no_grad():
            logp = F.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        text = [tok.decode([t]) for t in ids]
        answer_start = max(j for j, s in enumerate(text) if s == "<|im_start|>")
        seen_eq = False
        for j in range(1, len(ids)):
            seen_eq = seen_eq or (j > answer_start and "=" in text[j])
            if mask[j] and text[j].isdigit():
                if use_tools and j < answer_start:
                    where = "tools: call arguments"
                else:
                    where = ("tools" if use_tools else "no tools") + (
                        ": answer result" if seen_eq else ": answer restated expr"
                    )
                sums.setdefault(where, []).append(-logp[j - 1, ids[j]].item())
for k, v in sorted(sums.items()):
    print(f"{k:>30}: {sum(v) / len(v):.3f} nats over {len(v)} digit tokens")
