"""Running GPT-1 transfer end to end: read JSONL, fine-tune with `L_task + λ·L_LM`, save, predict.

    gptqwen finetune --task entailment --data train.jsonl --eval dev.jsonl --from RUN_DIR --out ft/
    gptqwen predict --model ft/ --data test.jsonl --json

The output directory is an HF checkpoint (the model with its three new token rows) plus
`task_head/head.safetensors` (the linear head), `task.json` (task, label set, token ids, context) and
`metrics.jsonl`.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from gptqwen.errors import UserError
from gptqwen.finetune import gpt1
from gptqwen.finetune import train as loop
from gptqwen.finetune.common import load_base, save_model_dir, write_json, write_jsonl
from gptqwen.utils import read_jsonl

# in a subfolder: HF loaders read every *.safetensors at the top of a checkpoint directory as model weights
HEAD_FILE = "task_head/head.safetensors"


def accuracy(probs: torch.Tensor, examples: list[gpt1.TaskExample]) -> float:
    labels = torch.tensor([e.label for e in examples])
    return float((probs.argmax(-1) == labels).float().mean())


def finetune_task(task: str, data: str, base: str, out: str, eval_path: str | None = None,
                  tokenizer: str | None = None, labels: list[str] | None = None, epochs: float = 3,
                  batch_size: int = 32, lm_coef: float = 0.5, max_len: int | None = None,
                  too_long: str = "drop", dropout: float = 0.1, seed: int = 0, device: str | None = None,
                  loop_cfg: loop.LoopConfig | None = None, quiet: bool = False, scratch: bool = False) -> dict:
    """Fine-tune `base` on a task file; returns a summary with the dev accuracy (if --eval)."""
    gpt1.check_task(task)
    if too_long not in ("drop", "truncate", "error"):
        raise UserError(f"--too-long must be drop, truncate or error, got '{too_long}'")
    rows = read_jsonl(data, "training data")
    dev_rows = read_jsonl(eval_path, "eval data") if eval_path else []
    labels = labels or gpt1.collect_labels(task, rows, data)
    torch.manual_seed(seed)
    model, tok = load_base(base, tokenizer, device, seed, scratch)
    max_len = min(max_len or model.config.max_seq_len, model.config.max_seq_len)
    tokens = gpt1.add_task_tokens(model, tok)
    train_ex, dropped = gpt1.encode_rows(task, rows, tok, tokens, labels, max_len, data, too_long)
    dev_ex, dev_dropped = gpt1.encode_rows(task, dev_rows, tok, tokens, labels, max_len, eval_path or "", too_long)
    if not train_ex:
        raise UserError(f"no training example fits the context of {max_len} tokens ({len(dropped)} dropped)")
    if not quiet:
        for name, exs, lost in (("training", train_ex, dropped), ("eval", dev_ex, dev_dropped)):
            print(too_long_note(name, lost, sum(e.truncated for e in exs), max_len), end="")
    n_out = 1 if task == "multiple-choice" else len(labels)
    head = gpt1.TaskHead(model.config.n_embd, n_out, dropout).to(next(model.parameters()).device)
    device_ = next(model.parameters()).device

    def epoch_batches(epoch: int) -> list[dict]:
        order = list(range(len(train_ex)))
        random.Random(seed + epoch).shuffle(order)
        return [gpt1.make_batch([train_ex[i] for i in order[j:j + batch_size]])
                for j in range(0, len(order), batch_size)]

    def loss_fn(batch: dict) -> dict:
        model.train()
        head.train()
        batch = {k: v.to(device_) for k, v in batch.items()}
        res = gpt1.task_forward(model, head, task, batch, lm_coef)
        return {k: res[k] for k in ("loss", "task_loss", "lm_loss")}

    steps = max(1, round(epochs * -(-len(train_ex) // batch_size)))
    history = loop.run(torch.nn.ModuleList([model, head]), loop.cycle(epoch_batches), steps, loss_fn,
                       loop_cfg or loop.LoopConfig(), quiet=quiet)
    summary = {"task": task, "from": base, "from_scratch": scratch, "train_examples": len(train_ex),
               "dropped_too_long": len(dropped), "truncated": sum(e.truncated for e in train_ex), "labels": labels,
               "steps": steps, "final_loss": history[-1]["loss"]}
    if dev_ex:
        summary["eval_examples"] = len(dev_ex)
        summary["eval_dropped_too_long"] = len(dev_dropped)
        summary["eval_truncated"] = sum(e.truncated for e in dev_ex)
        summary["eval_accuracy"] = accuracy(gpt1.predict(model, head, task, dev_ex), dev_ex)
    spec = gpt1.TaskSpec(task, labels, tokens, max_len, lm_coef)
    from safetensors.torch import save_file

    save_model_dir(out, model, tok, {
        HEAD_FILE: lambda p: save_file({k: v.contiguous().cpu() for k, v in head.state_dict().items()}, p),
        "task.json": spec.save,
        "metrics.jsonl": write_jsonl(history),
        "finetune.json": write_json(summary),
    })
    summary["out"] = str(out)
    return summary


def too_long_note(name: str, dropped: list[int], truncated: int, max_len: int) -> str:
    """The line(s) reporting rows over the context, or "" when there were none."""
    note = ""
    if dropped:
        more = "..." if len(dropped) > 10 else ""
        note += f"dropped {len(dropped)} {name} rows longer than {max_len} tokens (lines {dropped[:10]}{more})\n"
    if truncated:
        note += f"truncated {truncated} {name} rows to {max_len} tokens (the start of the text was cut)\n"
    return note


def load_task_model(path: str, device: str | None = None):
    """`(model, head, tokenizer, spec)` from a directory written by `gptqwen finetune`."""
    d = Path(path)
    if not (d / "task.json").exists() or not (d / HEAD_FILE).exists():
        raise UserError(f"'{path}' is not a fine-tuned task model (no task.json / {HEAD_FILE}); "
                        "create one with 'gptqwen finetune'")
    from safetensors.torch import load_file

    spec = gpt1.TaskSpec.load(d / "task.json")
    model, tok = load_base(str(d), None, device)
    state = load_file(d / HEAD_FILE)
    head = gpt1.TaskHead(state["linear.weight"].shape[1], state["linear.weight"].shape[0], dropout=0.0)
    head.load_state_dict(state)
    return model.eval(), head.to(next(model.parameters()).device).eval(), tok, spec


def predict_file(model_dir: str, data: str, device: str | None = None, too_long: str = "truncate") -> dict:
    """Predictions for every row of `data` (labels optional; if all rows have one, the accuracy too)."""
    model, head, tok, spec = load_task_model(model_dir, device)
    rows = read_jsonl(data, "input data")
    examples, dropped = gpt1.encode_rows(spec.task, rows, tok, spec.tokens, spec.labels, spec.max_len, data,
                                         too_long, require_label=False)
    probs = gpt1.predict(model, head, spec.task, examples) if examples else torch.zeros(0, 1)
    skipped = set(dropped)
    kept_lines = [line for line, _ in rows if line not in skipped]
    preds = []
    for line, p in zip(kept_lines, probs):
        k = int(p.argmax())
        preds.append({"line": line, "prediction": spec.labels[k] if spec.labels else k,
                      "probabilities": [round(float(x), 6) for x in p]})
    result = {"task": spec.task, "labels": spec.labels, "predictions": preds, "skipped_lines": dropped,
              "truncated_lines": [line for line, e in zip(kept_lines, examples) if e.truncated]}
    if examples and all(e.label >= 0 for e in examples):
        result["accuracy"] = accuracy(probs, examples)
    return result
