"""Preference data: rows → token pairs → padded batches, and per-sequence log-probs of completions.

Rows (TRL's preference formats), one JSON object a line:

    {"prompt": "2+2=", "chosen": " 4", "rejected": " 5"}                                  text
    {"prompt": [{"role": "user", "content": "..."}], "chosen": [{"role": "assistant", ...}],
     "rejected": [{"role": "assistant", ...}]}                                             chat
    {"chosen": [user, assistant], "rejected": [user, assistant]}                           chat, implicit prompt

An optional "margin" (a number) is used by the reward model's loss. Text rows are the prompt's tokens
followed by the completion's and the end-of-sequence token; chat rows are rendered with the tokenizer's
chat template exactly as SFT renders them (`Tokenizer.render_for_sft`), the completion being the final
assistant turn (think block, answer, `<|im_end|>`), so a model trained by `gptqwen sft` is scored on the
same tokens it generates.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from gptqwen.errors import UserError
from gptqwen.finetune.common import load_base
from gptqwen.train.distributed import DistInfo
from gptqwen.train.loop import check_run_dir, setup_process
from gptqwen.train.recipe import Recipe
from gptqwen.utils import read_jsonl

IGNORE = -100


@dataclass
class Pair:
    """One preference pair as token ids; `line` is the row's line in its file (for messages)."""

    prompt_chosen: list[int]
    chosen: list[int]
    prompt_rejected: list[int]
    rejected: list[int]
    margin: float | None = None
    line: int = 0


def _messages(value, where: str, field: str) -> list[dict]:
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) and "role" in m for m in value):
        raise UserError(f"{where}: '{field}' must be a non-empty list of chat messages with a 'role' each")
    return value


def _split_implicit(row: dict, where: str) -> tuple[list[dict], list[dict], list[dict]]:
    """Chat rows without a prompt: the messages both conversations share are the prompt."""
    chosen, rejected = _messages(row["chosen"], where, "chosen"), _messages(row["rejected"], where, "rejected")
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise UserError(f"{where}: 'chosen' and 'rejected' share no prompt messages; add a 'prompt' field")
    return chosen[:n], chosen[n:], rejected[n:]


def check_row(row: dict, where: str) -> None:
    """A clear error for a row that cannot be a preference pair."""
    for key in ("chosen", "rejected"):
        if key not in row:
            raise UserError(f"{where}: missing '{key}'; preference rows need \"chosen\" and \"rejected\" "
                            "(and \"prompt\", unless they are full conversations)")  # fmt: skip
        value = row[key]
        if isinstance(value, str) and not value.strip():
            raise UserError(f"{where}: '{key}' is an empty completion; drop the row or fill it in")
        if not isinstance(value, (str, list)):
            raise UserError(f"{where}: '{key}' must be text or a list of chat messages, not {type(value).__name__}")
    if "prompt" in row and not isinstance(row["prompt"], (str, list)):
        raise UserError(f"{where}: 'prompt' must be text or a list of chat messages")
    if isinstance(row.get("chosen"), str) != isinstance(row.get("rejected"), str):
        raise UserError(f"{where}: 'chosen' and 'rejected' must both be text or both be chat messages")
    if isinstance(row["chosen"], str) and "prompt" not in row:
        raise UserError(f"{where}: missing 'prompt' (text rows need \"prompt\", \"chosen\", \"rejected\")")
    margin = row.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin)):
        raise UserError(f"{where}: 'margin' must be a finite number, not {margin!r}")


def encode_chat(tokenizer, prompt: list[dict], completion: list[dict], where: str,
                enable_thinking: bool = True) -> tuple[list[int], list[int]]:  # fmt: skip
    """(prompt ids, completion ids) of a chat pair side: the completion is the final assistant turn."""
    if not any(m.get("role") == "assistant" for m in completion):
        raise UserError(f"{where}: the completion has no assistant message")
    last = completion[-1]
    if last.get("role") == "assistant" and not (last.get("content") or "").strip() and not last.get("tool_calls"):
        raise UserError(f"{where}: the completion's assistant message is empty; drop the row or fill it in")
    try:
        ids, mask = tokenizer.render_for_sft(prompt + completion, enable_thinking=enable_thinking)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    end = max(i for i, m in enumerate(mask) if m) + 1
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    return list(ids[:start]), list(ids[start:end])


def encode_row(tokenizer, row: dict, where: str, enable_thinking: bool = True) -> Pair:
    """A validated row as token ids (see the module docstring for the formats)."""
    check_row(row, where)
    margin = row.get("margin")
    if isinstance(row["chosen"], str):
        prompt = tokenizer.encode(row["prompt"]) if isinstance(row["prompt"], str) else None
        if prompt is None:
            raise UserError(f"{where}: a text completion needs a text prompt")
        eos = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
        return Pair(prompt, tokenizer.encode(row["chosen"]) + eos, prompt, tokenizer.encode(row["rejected"]) + eos,
                    margin, 0)
    if "prompt" in row:
        prompt = [{"role": "user", "content": row["prompt"]}] if isinstance(row["prompt"], str) else \
            _messages(row["prompt"], where, "prompt")  # fmt: skip
        chosen, rejected = _messages(row["chosen"], where, "chosen"), _messages(row["rejected"], where, "rejected")
    else:
        prompt, chosen, rejected = _split_implicit(row, where)
    pc, c = encode_chat(tokenizer, prompt, chosen, where, enable_thinking)
    pr, r = encode_chat(tokenizer, prompt, rejected, where, enable_thinking)
    return Pair(pc, c, pr, r, margin)


def load_pairs(path: str, tokenizer, max_len: int, too_long: str = "drop",
               enable_thinking: bool = True) -> tuple[list[Pair], int]:  # fmt: skip
    """Every row of a preference file as a `Pair` (checked before any model work); returns the pairs and
    how many were dropped as longer than `max_len` (`too_long`: drop, truncate the completions, or error)."""
    pairs, dropped = [], 0
    for line, row in read_jsonl(path, "preference data"):
        where = f"{path}:{line}"
        pair = encode_row(tokenizer, row, where, enable_thinking)
        pair.line = line
        longest = max(len(pair.prompt_chosen) + len(pair.chosen), len(pair.prompt_rejected) + len(pair.rejected))
        if longest > max_len:
            if too_long == "error":
                raise UserError(f"{where}: the pair has {longest} tokens, more than {max_len}; raise --max-len "
                                "or pass --too-long drop|truncate")  # fmt: skip
            room = max_len - max(len(pair.prompt_chosen), len(pair.prompt_rejected))
            if too_long == "drop" or room < 1:
                dropped += 1
                continue
            pair.chosen, pair.rejected = pair.chosen[:room], pair.rejected[:room]
        pairs.append(pair)
    if not pairs:
        raise UserError(f"no usable preference pairs in {path} ({dropped} longer than {max_len} tokens)")
    return pairs, dropped


def collate(pairs: list[Pair], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """[2B, T] right-padded sequences, chosen rows first, with aligned targets on completion tokens only;
    `last` is each sequence's final position (where a reward model reads its score)."""
    seqs = [(p.prompt_chosen, p.chosen) for p in pairs] + [(p.prompt_rejected, p.rejected) for p in pairs]
    return collate_sequences(seqs, pad_id) | (
        {"margin": torch.tensor([p.margin or 0.0 for p in pairs])} if any(p.margin is not None for p in pairs) else {})


def collate_sequences(seqs: list[tuple[list[int], list[int]]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """(prompt, completion) token lists → right-padded `input_ids`, aligned `targets` (completion tokens
    only, IGNORE elsewhere), `completion_mask` (1 on the target positions) and `last` positions."""
    width = max(len(p) + len(c) for p, c in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    targets = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    last = torch.zeros(len(seqs), dtype=torch.long)
    for i, (p, c) in enumerate(seqs):
        n = len(p) + len(c)
        ids[i, :n] = torch.tensor(p + c)
        targets[i, len(p) - 1:n - 1] = torch.tensor(c)
        last[i] = n - 1
    return {"input_ids": ids, "targets": targets, "completion_mask": (targets != IGNORE).long(), "last": last}


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at each position [N, T] (0 where the target is IGNORE)."""
    mask = targets != IGNORE
    lp = torch.gather(F.log_softmax(logits.float(), dim=-1), 2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return lp * mask


def sequence_logps(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of completion-token log-probs of each sequence [N]."""
    return token_logps(model(batch["input_ids"]).logits, batch["targets"]).sum(-1)


def dev_metrics(n: int, batch_size: int, logged_of: Callable[[list[int]], dict[str, torch.Tensor]]) -> dict[str, float]:
    """The logged values of a trainer's batch function over a dev set of `n` pairs (`logged_of(indices)`),
    averaged pair-weighted and named `dev_<key>`."""
    sums: dict[str, float] = {}
    for idx in epoch_order(n, batch_size, 0):
        for k, v in logged_of(idx).items():
            sums[f"dev_{k}"] = sums.get(f"dev_{k}", 0.0) + v.item() * len(idx) / n
    return sums


def epoch_order(n: int, batch_size: int, seed: int) -> list[list[int]]:
    """Indices of one epoch, shuffled by `seed`, cut into batches (the last may be smaller)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


@dataclass
class PreferenceRun:
    """What a trainer on preference pairs starts from: the process, the base model and its tokenizer, the encoded
    training and dev pairs (and how many were dropped as too long), and the padding id."""

    info: DistInfo
    model: torch.nn.Module
    tokenizer: object
    pairs: list[Pair]
    dropped: int
    dev: list[Pair]
    pad: int
    max_len: int


def start_preference_run(recipe: Recipe, out, resume: bool, overwrite: bool, single: str) -> PreferenceRun:
    """Check the recipe's model and data, claim the run folder, load the base model and encode the pairs
    (`recipe.pref`), as `gptqwen dpo` and `gptqwen reward train` both begin."""
    p, tc = recipe.pref, recipe.train
    if not recipe.model.base:
        raise UserError("no model to start from; pass --from (a run dir, HF dir, .gguf or preset) or set model.base")
    if not p.data:
        raise UserError("no preference data; pass --data prefs.jsonl (rows {\"prompt\", \"chosen\", \"rejected\"})")
    check_run_dir(Path(out), resume, overwrite)
    info = setup_process(tc, single=single)
    torch.manual_seed(tc.seed)
    model, tok = load_base(recipe.model.base, recipe.model.tokenizer, info.device, tc.seed)
    max_len = min(p.max_len or model.config.max_seq_len, model.config.max_seq_len)
    pairs, dropped = load_pairs(p.data, tok, max_len, p.too_long, p.enable_thinking)
    dev = load_pairs(p.eval, tok, max_len, p.too_long, p.enable_thinking)[0] if p.eval else []
    return PreferenceRun(info, model, tok, pairs, dropped, dev, tok.pad_id if tok.pad_id is not None else 0, max_len)
