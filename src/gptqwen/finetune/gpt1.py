"""GPT-1 task-aware transfer: input transformations, a linear head on the extract token, aux LM loss.

Radford et al. (2018) fine-tune a pretrained decoder on structured inputs by turning each into
token sequences with three new tokens — start `s`, delimiter `$`, extract `e` — and reading the
final hidden state at `e` (after the final norm) into a linear head:

    classification   s text e
    entailment       s premise $ hypothesis e
    similarity       s a $ b e   and   s b $ a e      (the two hidden states are added)
    multiple-choice  s context $ answer_k e  for each k (one score each, softmax over k)

The objective is `L = L_task + λ·L_LM` (λ = 0.5): the language-modelling loss on the same
sequences keeps the model a language model while it learns the task. Only the head and the three
token embeddings are new parameters. The CLI is `gptqwen finetune` / `gptqwen predict`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gptqwen.errors import UserError, closest
from gptqwen.finetune.vocab import grow_vocab

TASKS = ("classification", "entailment", "similarity", "multiple-choice")
TASK_TOKENS = ("<|start|>", "<|delim|>", "<|extract|>")
FIELDS = {
    "classification": ("text",),
    "entailment": ("premise", "hypothesis"),
    "similarity": ("text_a", "text_b"),
    "multiple-choice": ("context", "choices"),
}
IGNORE = -100


@dataclass(frozen=True)
class TaskTokens:
    start: int
    delim: int
    extract: int


@dataclass
class TaskSpec:
    """What `gptqwen predict` needs besides the weights; saved as task.json next to the model."""

    task: str
    labels: list[str]  # class names; for multiple choice, empty (the answer is an index)
    tokens: TaskTokens
    max_len: int
    lm_coef: float = 0.5

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> TaskSpec:
        d = json.loads(path.read_text())
        return cls(d["task"], d["labels"], TaskTokens(**d["tokens"]), d["max_len"], d["lm_coef"])


def check_task(task: str) -> str:
    if task not in TASKS:
        raise UserError(f"unknown task type '{task}'; choose one of {', '.join(TASKS)}.{closest(task, TASKS)}")
    return task


# --- inputs -------------------------------------------------------------------------------------

@dataclass
class TaskExample:
    """One example as token sequences (1 for classification/entailment, 2 for similarity, k for
    multiple choice), its label index (-1 when unknown), and whether it was cut to fit the context."""

    sequences: list[list[int]]
    label: int = -1
    truncated: bool = False


def transform(task: str, parts: list[list[int]], tok: TaskTokens) -> list[list[int]]:
    """The GPT-1 token layouts, from already tokenized fields (for multiple choice: context, answers...)."""
    s, d, e = tok.start, tok.delim, tok.extract
    if task == "classification":
        return [[s, *parts[0], e]]
    if task == "entailment":
        return [[s, *parts[0], d, *parts[1], e]]
    if task == "similarity":
        a, b = parts
        return [[s, *a, d, *b, e], [s, *b, d, *a, e]]
    if task == "multiple-choice":
        ctx, *answers = parts
        return [[s, *ctx, d, *ans, e] for ans in answers]
    raise UserError(f"unknown task type '{task}'")


def row_texts(task: str, row: dict, where: str) -> list[str]:
    """The row's text fields in layout order; a clear error for a missing or mistyped field."""
    texts = []
    for key in FIELDS[task]:
        if key not in row:
            raise UserError(f"{where}: missing field '{key}' for task {task} (needs {', '.join(FIELDS[task])}, label)")
        value = row[key]
        if key == "choices":
            if not isinstance(value, list) or len(value) < 2 or not all(isinstance(c, str) for c in value):
                raise UserError(f"{where}: 'choices' must be a list of at least two strings")
            texts += value
        elif not isinstance(value, str):
            raise UserError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
        else:
            texts.append(value)
    return texts


def row_label(task: str, row: dict, labels: list[str], where: str, required: bool) -> int:
    """The label index of a row (-1 if absent and not required); labels outside the set are errors."""
    if "label" not in row:
        if required:
            raise UserError(f"{where}: missing field 'label'")
        return -1
    value = row["label"]
    if task == "multiple-choice":
        n = len(row["choices"])
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < n:
            raise UserError(f"{where}: 'label' must be the index of the right choice, 0..{n - 1}; got {value!r}")
        return value
    key = label_key(value)
    if key not in labels:
        raise UserError(f"{where}: label {value!r} is not in the label set {labels}; fix the row or pass --labels")
    return labels.index(key)


def label_key(value) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def encode_rows(task: str, rows: list[tuple[int, dict]], tokenizer, tok: TaskTokens, labels: list[str],
                max_len: int, source: str, too_long: str = "drop", require_label: bool = True,
                ) -> tuple[list[TaskExample], list[int]]:
    """Transform every row; returns the examples (those cut to fit flagged `truncated`) and the line
    numbers of rows dropped as too long."""
    examples, dropped = [], []
    for line, row in rows:
        where = f"{source}:{line}"
        parts = [tokenizer.encode(t) for t in row_texts(task, row, where)]
        label = row_label(task, row, labels, where, require_label)
        seqs = transform(task, parts, tok)
        longest = max(len(s) for s in seqs)
        if longest > max_len:
            if too_long == "error":
                raise UserError(f"{where}: the example is {longest} tokens, more than the context of {max_len}; "
                                "raise --max-len or pass --too-long drop|truncate")
            if too_long == "drop":
                dropped.append(line)
                continue
            seqs = [truncate_front(s, max_len) for s in seqs]
        examples.append(TaskExample(seqs, label, truncated=longest > max_len))
    return examples, dropped


def truncate_front(seq: list[int], max_len: int) -> list[int]:
    """Cut tokens from the front of the text after the start token, keeping the end and the extract token."""
    cut = len(seq) - max_len
    return [seq[0], *seq[1 + cut:]] if cut > 0 else seq


def collect_labels(task: str, rows: list[tuple[int, dict]], source: str) -> list[str]:
    """The sorted label set of a training file (multiple choice has none: answers are indices)."""
    if task == "multiple-choice":
        return []
    found = set()
    for line, row in rows:
        if "label" not in row:
            raise UserError(f"{source}:{line}: missing field 'label'")
        found.add(label_key(row["label"]))
    if len(found) < 2:
        raise UserError(f"{source}: a {task} task needs at least two different labels, found {sorted(found)}")
    return sorted(found)


# --- model side ---------------------------------------------------------------------------------

def add_task_tokens(model: nn.Module, tokenizer=None, std: float = 0.02) -> TaskTokens:
    """Grow the token embedding (and an untied output layer) by three rows for start/delim/extract.

    Existing rows are kept bit for bit; the new ids follow the model's current vocabulary. When the
    tokenizer can register special tokens, it learns their names too.
    """
    base = grow_vocab(model, len(TASK_TOKENS), std=std)
    if tokenizer is not None and hasattr(tokenizer, "add_special_tokens"):
        tokenizer.add_special_tokens({name: base + i for i, name in enumerate(TASK_TOKENS)})
    return TaskTokens(base, base + 1, base + 2)


class TaskHead(nn.Module):
    """Dropout and a linear layer on the extract token's hidden state (one score per class, or one
    per answer for multiple choice)."""

    def __init__(self, n_embd: int, n_out: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(n_embd, n_out)
        nn.init.normal_(self.linear.weight, std=0.02)
        nn.init.zeros_(self.linear.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(h))


def make_batch(examples: list[TaskExample], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """All sequences of the examples, right-padded, with next-token LM targets and extract positions."""
    seqs = [s for ex in examples for s in ex.sequences]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    lm_targets = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
        lm_targets[r, : len(s) - 1] = torch.tensor(s[1:])  # every token predicts the next, as in GPT-1
    return {
        "input_ids": ids,
        "lm_targets": lm_targets,
        "extract_pos": torch.tensor([len(s) - 1 for s in seqs]),
        "n_seqs": torch.tensor([len(ex.sequences) for ex in examples]),
        "labels": torch.tensor([ex.label for ex in examples]),
    }


def task_forward(model: nn.Module, head: TaskHead, task: str, batch: dict[str, torch.Tensor],
                 lm_coef: float = 0.5) -> dict[str, torch.Tensor]:
    """Task logits `[B, classes or choices]`, and the losses `L_task`, `L_LM`, `L = L_task + λ·L_LM`
    (plus the MoE auxiliary loss, if any) when the batch has labels."""
    need_lm = lm_coef != 0 and torch.is_grad_enabled()
    out = model(batch["input_ids"], targets=batch["lm_targets"] if need_lm else None, return_hidden=True)
    rows = torch.arange(batch["input_ids"].shape[0], device=out.hidden.device)
    h = out.hidden[rows, batch["extract_pos"].to(out.hidden.device)]  # [N, d]
    n_seqs = batch["n_seqs"].tolist()
    if task == "similarity":  # both orderings, added element-wise before the head
        logits = head(h.view(-1, 2, h.shape[-1]).sum(1))
    elif task == "multiple-choice":
        scores = head(h).squeeze(-1).split(n_seqs)
        logits = torch.full((len(n_seqs), max(n_seqs)), float("-inf"), device=h.device, dtype=h.dtype)
        for i, s in enumerate(scores):  # examples may have different numbers of answers
            logits[i, : len(s)] = s
    else:
        logits = head(h)
    result = {"logits": logits}
    labels = batch["labels"].to(logits.device)
    if (labels >= 0).all():
        task_loss = F.cross_entropy(logits.float(), labels)
        lm_loss = out.loss if need_lm else torch.zeros((), device=logits.device)
        loss = task_loss + lm_coef * lm_loss
        if getattr(out, "aux_loss", None) is not None:
            loss = loss + out.aux_loss
        result.update(loss=loss, task_loss=task_loss, lm_loss=lm_loss)
    return result


@torch.no_grad()
def predict(model: nn.Module, head: TaskHead, task: str, examples: list[TaskExample],
            batch_size: int = 32) -> torch.Tensor:
    """Class (or answer) probabilities `[N, classes]` for the examples, in order."""
    model.eval()
    head.eval()
    device = next(model.parameters()).device
    probs = []
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in make_batch(examples[i:i + batch_size]).items()}
        logits = task_forward(model, head, task, batch, lm_coef=0.0)["logits"]
        probs.append(logits.float().softmax(-1).cpu())
    width = max(p.shape[1] for p in probs)
    return torch.cat([F.pad(p, (0, width - p.shape[1])) for p in probs])
