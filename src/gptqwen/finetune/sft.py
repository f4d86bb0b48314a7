"""Chat SFT data: validate conversations, render them with assistant-only targets, pack them.

A row is `{"messages": [...], "tools": [...]?}` in the OpenAI/ChatML format: roles system (first
only), user, assistant (optional `reasoning_content`, optional `tool_calls`) and tool. The project's
chat template renders it (`Tokenizer.render_for_sft`); loss falls on the assistant tokens only —
the think block, the answer, tool calls and the closing `<|im_end|>`.

Thinking-mode fusion (Qwen3): thinking rows (the last assistant turn has `reasoning_content`) and
direct rows (rendered with an empty think block) train together; `flag_prob` appends the matching
`/think` or `/no_think` soft switch to the last user turn of rows that carry none. A direct row under
`/no_think` learns to write the empty think block; one without a switch stands for the hard switch
(`enable_thinking=False`), where the template puts the empty block in the prompt.

Packing (TRL's "bfd"): conversations sorted longest first, each placed in the fullest bin that
still has room; position ids restart at 0 for each conversation and `document_ids` keep attention
inside it, so a packed batch gives the same loss as the unpacked one.

The run (training, LoRA, saving) is in `gptqwen.finetune.sft_train`; the CLI is `gptqwen sft`.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from dataclasses import field as dc_field

import torch

from gptqwen.errors import UserError
from gptqwen.tokenizer.chat import parse_assistant, soft_switch

IGNORE = -100
ROLES = ("system", "user", "assistant", "tool")
TOO_LONG = ("drop", "truncate", "error")


@dataclass
class Example:
    """One rendered conversation: token ids and aligned targets (IGNORE off the assistant tokens)."""

    ids: list[int]
    targets: list[int]
    thinking: bool = False


@dataclass
class SFTStats:
    rows: int = 0
    kept: int = 0
    thinking: int = 0
    dropped_too_long: int = 0
    truncated: int = 0
    flagged: int = 0
    skipped_lines: list[int] = dc_field(default_factory=list)

    def summary(self) -> str:
        s = (f"{self.kept}/{self.rows} conversations kept ({self.thinking} thinking, "
             f"{self.kept - self.thinking} direct)")
        if self.dropped_too_long:
            s += f", {self.dropped_too_long} dropped as longer than the context"
        if self.truncated:
            s += f", {self.truncated} truncated"
        return s


def validate_conversation(row: dict, where: str) -> tuple[list[dict], list | None]:
    """Check a row's messages are a well-formed conversation with an assistant turn to learn from."""
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: expected a non-empty 'messages' list (OpenAI chat format)")
    tools = row.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise UserError(f"{where}: 'tools' must be a list of function schemas")
    prev = None
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            got = m.get("role") if isinstance(m, dict) else type(m).__name__
            raise UserError(f"{where}: message {i} has role {got!r}; roles are {', '.join(ROLES)}")
        role, content = m["role"], m.get("content")
        if not (isinstance(content, str) or (role == "assistant" and content is None and m.get("tool_calls"))):
            raise UserError(f"{where}: message {i} ({role}) needs a string 'content'")
        if "reasoning_content" in m and not isinstance(m["reasoning_content"], (str, type(None))):
            raise UserError(f"{where}: message {i}: 'reasoning_content' must be a string")
        if m.get("tool_calls") is not None:
            _check_tool_calls(m["tool_calls"], f"{where}: message {i}")
        allowed = {
            "system": (None,),
            "user": (None, "system", "assistant", "tool"),
            "assistant": ("user", "tool"),
            "tool": ("assistant", "tool"),
        }[role]
        if prev not in allowed or (role == "tool" and prev == "assistant" and not messages[i - 1].get("tool_calls")):
            after = f"after a {prev} message" if prev else "first"
            raise UserError(f"{where}: roles out of order: a {role} message cannot come {after} (message {i})")
        prev = role
    if not any(m["role"] == "assistant" for m in messages):
        raise UserError(f"{where}: the conversation has no assistant turn, so there is nothing to learn")
    return messages, tools


def _check_tool_calls(calls, where: str) -> None:
    if not isinstance(calls, list):
        raise UserError(f"{where}: 'tool_calls' must be a list")
    for c in calls:
        fn = c.get("function", c) if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or "arguments" not in fn:
            raise UserError(f"{where}: each tool call needs a function 'name' and 'arguments'")


def is_thinking(messages: list[dict]) -> bool:
    """A thinking example: its last assistant turn reasons (non-empty `reasoning_content` or `<think>`)."""
    last = next(m for m in reversed(messages) if m["role"] == "assistant")
    reasoning = last.get("reasoning_content") or parse_assistant(last.get("content") or "")["reasoning_content"]
    return bool((reasoning or "").strip())


def add_mode_flag(messages: list[dict], thinking: bool) -> list[dict]:
    """Append /think or /no_think to the last user turn unless the conversation already has a switch."""
    if soft_switch(messages) is not None:
        return messages
    idx = max(i for i, m in enumerate(messages) if m["role"] == "user")
    text = messages[idx]["content"]
    out = [dict(m) for m in messages]
    out[idx]["content"] = text + (" /think" if thinking else " /no_think")
    return out


def targets_from_mask(ids: list[int], mask: list[int]) -> list[int]:
    """Aligned targets: position t predicts ids[t+1] when that token is an assistant token."""
    return [ids[t + 1] if mask[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]


def render_example(tokenizer, messages: list[dict], tools: list | None = None) -> Example:
    """Render with assistant-only targets. A direct answer under the /no_think soft switch learns to
    write the empty think block itself; one without a flag stands for the hard switch
    (`enable_thinking=False`), where the template puts the empty block in the prompt."""
    thinking = is_thinking(messages)
    ids, mask = tokenizer.render_for_sft(messages, tools=tools, enable_thinking=thinking or soft_switch(messages) is False)
    return Example(list(ids), targets_from_mask(list(ids), list(mask)), thinking)


def build_examples(
    tokenizer,
    rows: list[tuple[int, dict]],
    max_len: int,
    source: str = "data",
    too_long: str = "drop",
    flag_prob: float = 0.0,
    seed: int = 0,
) -> tuple[list[Example], SFTStats]:
    """Validate and render every row; conversations over `max_len` tokens are dropped (counted),
    truncated, or an error, by `too_long`."""
    if too_long not in TOO_LONG:
        raise UserError(f"--too-long must be one of {', '.join(TOO_LONG)}, got '{too_long}'")
    rng = random.Random(seed)
    stats, examples = SFTStats(rows=len(rows)), []
    for line, row in rows:
        where = f"{source}:{line}"
        messages, tools = validate_conversation(row, where)
        thinking = is_thinking(messages)
        if flag_prob > 0 and rng.random() < flag_prob:
            messages = add_mode_flag(messages, thinking)
            stats.flagged += 1
        ex = render_example(tokenizer, messages, tools)
        if len(ex.ids) > max_len:
            if too_long == "error":
                raise UserError(f"{where}: the conversation has {len(ex.ids)} tokens, more than the context of "
                                f"{max_len}; raise --max-len or pass --too-long drop|truncate")
            if too_long == "drop" or all(t == IGNORE for t in ex.targets[: max_len - 1]):
                stats.dropped_too_long += 1
                stats.skipped_lines.append(line)
                continue
            ex = Example(ex.ids[:max_len], ex.targets[: max_len - 1] + [IGNORE], ex.thinking)
            stats.truncated += 1
        if all(t == IGNORE for t in ex.targets):
            raise UserError(f"{where}: the rendered conversation has no assistant tokens to train on")
        examples.append(ex)
        stats.kept += 1
        stats.thinking += ex.thinking
    if not examples:
        raise UserError(f"no usable conversations in {source} ({stats.summary()}); raise --max-len?")
    return examples, stats


def pack_bfd(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing: indices grouped into bins of total length <= capacity.

    Sequences go longest first into the bin with the least room that still fits; among bins with
    equal room, the one that got there first (TRL's `pack_dataset(strategy="bfd")` gives the same
    bins). A sorted list of (room, arrival, bin) finds each placement in O(log n).
    """
    if any(n > capacity for n in lengths):
        raise ValueError("every sequence must fit the capacity; truncate or drop them first")
    bins: list[list[int]] = []
    rooms: list[tuple[int, int, int]] = []
    for arrival, i in enumerate(sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))):
        n = lengths[i]
        pos = bisect.bisect_left(rooms, (n, -1, -1))
        if pos < len(rooms):
            room, _, b = rooms.pop(pos)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        if room - n > 0:
            bisect.insort(rooms, (room - n, arrival, b))
    return bins


def collate(examples: list[Example], groups: list[list[int]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Tensors for rows made of the given groups of examples, right-padded to the longest row.

    Each example in a row gets its own document id (padding: -1) and positions from 0.
    """
    width = max(sum(len(examples[i].ids) for i in g) for g in groups)
    shape = (len(groups), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    targets = torch.full(shape, IGNORE, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    document_ids = torch.full(shape, -1, dtype=torch.long)
    for r, group in enumerate(groups):
        t = 0
        for d, i in enumerate(group):
            ex, n = examples[i], len(examples[i].ids)
            input_ids[r, t:t + n] = torch.tensor(ex.ids)
            targets[r, t:t + n] = torch.tensor(ex.targets)
            position_ids[r, t:t + n] = torch.arange(n)
            document_ids[r, t:t + n] = d
            t += n
    return {"input_ids": input_ids, "targets": targets, "position_ids": position_ids, "document_ids": document_ids}


def make_batches(examples: list[Example], max_len: int, batch_size: int, packing: bool = True,
                 seed: int = 0, pad_id: int = 0) -> list[dict[str, torch.Tensor]]:
    """One epoch of batches: packed bins (`batch_size` bins a batch) or single conversations."""
    groups = pack_bfd([len(e.ids) for e in examples], max_len) if packing else [[i] for i in range(len(examples))]
    random.Random(seed).shuffle(groups)
    return [collate(examples, groups[i:i + batch_size], pad_id) for i in range(0, len(groups), batch_size)]
