"""Running GPT-1 transfer end to end: read JSONL, fine-tune with `L_task + λ·L_LM`, save, predict.

    gptqwen finetune --task entailment --data train.jsonl --eval dev.jsonl --from RUN_DIR --out ft/
    gptqwen predict --model ft/ --data test.jsonl --json

Training runs on the shared core (`gptqwen.train.loop`): metrics.jsonl, checkpoints and exact `--resume`
in the output folder. At the end the folder also becomes an HF checkpoint (the model with its three new
token rows) plus `task_head/head.safetensors` (the linear head), `task.json` (task, label set, token ids,
context) and `finetune.json` (the summary).
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from gptqwen.errors import UserError
from gptqwen.finetune import gpt1
from gptqwen.finetune.common import load_base, save_model_dir, write_json
from gptqwen.train.loop import EpochBatches, Workload, check_run_dir, setup_process, steps_for, train
from gptqwen.train.recipe import Recipe
from gptqwen.utils import read_jsonl

# in a subfolder: HF loaders read every *.safetensors at the top of a checkpoint directory as model weights
HEAD_FILE = "task_head/head.safetensors"


def accuracy(probs: torch.Tensor, examples: list[gpt1.TaskExample]) -> float:
    labels = torch.tensor([e.label for e in examples])
    return float((probs.argmax(-1) == labels).float().mean())


def finetune_task(recipe: Recipe, out: str | Path, resume: bool = False, overwrite: bool = False,
                  quiet: bool = False, stop_at: int | None = None) -> dict:  # fmt: skip
    """Fine-tune `recipe.model.base` on a task file into the run folder `out`; returns a summary with the
    dev accuracy (if task.eval)."""
    t, tc, base = recipe.task, recipe.train, recipe.model.base
    if not (t.task and t.data and base):
        raise UserError("finetune needs a task, training data and a model: pass --task, --data and --from "
                        "(task.task, task.data, model.base)")  # fmt: skip
    gpt1.check_task(t.task)
    rows = read_jsonl(t.data, "training data")
    dev_rows = read_jsonl(t.eval, "eval data") if t.eval else []
    labels = [str(x) for x in t.labels] if t.labels else gpt1.collect_labels(t.task, rows, t.data)
    check_run_dir(Path(out), resume, overwrite)
    info = setup_process(tc, single="finetune")
    torch.manual_seed(tc.seed)
    model, tok = load_base(base, recipe.model.tokenizer, info.device, tc.seed, recipe.model.from_scratch)
    max_len = min(t.max_len or model.config.max_seq_len, model.config.max_seq_len)
    tokens = gpt1.add_task_tokens(model, tok)
    train_ex, dropped = gpt1.encode_rows(t.task, rows, tok, tokens, labels, max_len, t.data, t.too_long)
    dev_ex, dev_dropped = gpt1.encode_rows(t.task, dev_rows, tok, tokens, labels, max_len, t.eval or "", t.too_long)
    if not train_ex:
        raise UserError(f"no training example fits the context of {max_len} tokens ({len(dropped)} dropped)")
    if not quiet:
        for name, exs, lost in (("training", train_ex, dropped), ("eval", dev_ex, dev_dropped)):
            print(too_long_note(name, lost, sum(e.truncated for e in exs), max_len), end="")
    n_out = 1 if t.task == "multiple-choice" else len(labels)
    head = gpt1.TaskHead(model.config.n_embd, n_out, t.dropout).to(info.device)

    def epoch(e: int) -> list[dict]:
        order = list(range(len(train_ex)))
        random.Random(tc.seed + e).shuffle(order)
        return [gpt1.make_batch([train_ex[i] for i in order[j:j + tc.batch_size]]) for j in range(0, len(order), tc.batch_size)]

    def loss(fwd: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        res = gpt1.task_forward(model, head, t.task, {k: v.to(info.device) for k, v in batch.items()}, t.lm_coef)
        return res["loss"], {k: res[k] for k in ("loss", "task_loss", "lm_loss")}

    batches = EpochBatches(epoch)
    work = Workload(
        model=torch.nn.ModuleList([model, head]), model_config=model.config.to_dict(),
        steps=steps_for(tc, batches.per_epoch), micro_batches=batches, loss=loss,
        count_tokens=lambda b: int(b["input_ids"].numel()), epoch_of=batches.epoch_of,
        order={"train.batch_size": tc.batch_size, "train.seed": tc.seed, "task.max_len": max_len, "task.task": t.task,
               "task.labels": labels},
        describe=f"[bold]{recipe.name}[/]: {t.task} on {len(train_ex)} examples from {base}"
                 f"{' (re-initialised)' if recipe.model.from_scratch else ''}, ",
    )  # fmt: skip
    # one process (setup_process refused torchrun), so there is no process group to clean up afterwards
    summary = train(work, tc, out, recipe, info, resume, overwrite, quiet, stop_at, label="finetune")
    summary.update({"task": t.task, "from": base, "from_scratch": recipe.model.from_scratch, "train_examples": len(train_ex),
                    "dropped_too_long": len(dropped), "truncated": sum(e.truncated for e in train_ex), "labels": labels,
                    "steps": work.steps, "final_loss": summary.get("loss")})  # fmt: skip
    if summary["step"] < work.steps:  # stopped early (--stop-at): no export until the run is finished
        return summary
    if dev_ex:
        summary["eval_examples"] = len(dev_ex)
        summary["eval_dropped_too_long"] = len(dev_dropped)
        summary["eval_truncated"] = sum(e.truncated for e in dev_ex)
        summary["eval_accuracy"] = accuracy(gpt1.predict(model, head, t.task, dev_ex), dev_ex)
    spec = gpt1.TaskSpec(t.task, labels, tokens, max_len, t.lm_coef)
    from safetensors.torch import save_file

    save_model_dir(out, model, tok, {
        HEAD_FILE: lambda p: save_file({k: v.contiguous().cpu() for k, v in head.state_dict().items()}, p),
        "task.json": spec.save,
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
