"""Chat turns with Qwen3-style thinking: enable/disable, soft switches, and the thinking budget.

    reply = engine.chat(messages, enable_thinking=True, thinking_budget=128)
    reply.reasoning_content, reply.content, reply.tool_calls, reply.thinking_tokens

The prompt comes from the tokenizer's chat template (message text is encoded as plain text, so a user who
types `<think>` cannot open a think block). A `/think` or `/no_think` in a user or system message switches
thinking for the turn (the last flag wins), the way Qwen3 was trained to read them.
Tokens are sorted by id, not by text: between the `<think>` and `</think>` tokens is reasoning, after it is
content. The budget (Qwen3 report, section 4.3): once the reasoning has N model-written tokens and no
`</think>`, the engine feeds the stop-thinking text (which closes the block) through the KV cache and lets the
model answer. Models without think tokens (e.g. SmolLM2) simply answer; the budget then does nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from gptqwen.errors import UserError
from gptqwen.infer.request import Result, Row
from gptqwen.infer.sampling import SamplingParams
from gptqwen.tokenizer.chat import parse_assistant
from gptqwen.vision.prompt import has_images, render_with_images

STOP_THINKING = ("Considering the limited time by the user, I have to give the solution based on the thinking "
                 "directly now.\n</think>\n\n")
_SWITCH = re.compile(r"/(no_think|think)\b")


@dataclass
class ChatResult(Result):
    """A `Result` with the assistant turn split into reasoning, answer and tool calls."""

    reasoning_content: str = ""
    content: str = ""
    tool_calls: list[dict] = field(default_factory=list)
    thinking_tokens: int = 0  # tokens the model wrote inside the think block (forced text not counted)
    budget_hit: bool = False


@dataclass
class ChatDelta:
    """A piece of a streamed turn: kind is "reasoning", "content" or "done" (then `result` is set); the thinking
    tokens the model has written so far and whether the budget cut the block, as in `ChatResult`."""

    kind: str
    text: str = ""
    result: ChatResult | None = None
    thinking_tokens: int = 0
    budget_hit: bool = False


def soft_switch(messages: list[dict]) -> bool | None:
    """The last `/think` (True) or `/no_think` (False) in user/system messages, or None."""
    flag = None
    for m in messages:
        if m.get("role") in ("user", "system") and isinstance(m.get("content"), str):
            for match in _SWITCH.finditer(m["content"]):
                flag = match.group(1) == "think"
    return flag


class ThinkingRouter:
    """Sorts each token of a turn into reasoning / content and enforces the thinking budget."""

    def __init__(self, think_id: int | None, end_id: int | None, budget: int | None, stop_text: list[int],
                 in_think: bool) -> None:
        self.think_id, self.end_id, self.budget, self.stop_text = think_id, end_id, budget, stop_text
        self.in_think, self.closed = in_think, False
        self.count, self.budget_hit = 0, False

    def __call__(self, row: Row, token: int, forced: bool) -> str | None:
        if token == self.think_id and not self.in_think and not self.closed:
            self.in_think = True
            return None
        if token == self.end_id and self.in_think:
            self.in_think, self.closed = False, True
            return None
        if not self.in_think:
            return "content"
        if not forced:
            self.count += 1
            if self.budget is not None and self.count >= self.budget and not self.budget_hit:
                self.budget_hit = True
                row.forced.extend(self.stop_text)
        return "reasoning"


def build_prompt(engine, messages: list[dict], enable_thinking: bool, tools: list | None) -> list[int]:
    return prompt_and_images(engine, messages, enable_thinking, tools)[0]


def prompt_and_images(engine, messages: list[dict], enable_thinking: bool, tools: list | None) -> tuple[list[int], list]:
    """The prompt ids of a conversation and the encoder inputs of its images (content parts; see vision.prompt)."""
    tok = engine.tokenizer
    if tok is None:
        raise UserError("chat needs a tokenizer with a chat template; this model has none")
    if has_images(messages):
        vision = getattr(engine.model, "vision_config", None)
        if vision is None:
            raise UserError("this model does not take images; load a vision-language model (gptqwen vl train) "
                            "or send text only")  # fmt: skip
        ids, _, images = render_with_images(tok, messages, vision, tools, enable_thinking=enable_thinking,
                                            max_len=engine.config.max_seq_len)  # fmt: skip
        return ids, images
    ids = tok.apply_chat_template(messages, tools=tools, add_generation_prompt=True,
                                  enable_thinking=enable_thinking, tokenize=True)
    return list(ids), []


def prepare_chat(engine, messages: list[dict], enable_thinking: bool = True, thinking_budget: int | None = None,
                 tools: list | None = None, params: SamplingParams | None = None,
                 start_thinking: bool = False) -> tuple[Row, ThinkingRouter]:
    """The `Row` of one assistant turn (prompt from the chat template, tokens routed into reasoning / content,
    budget enforced) and its router; `engine.run` or the continuous-batching scheduler drives the row, and
    `chat_result(row, router, timings)` turns it into a `ChatResult`. Arguments as for `stream_chat`."""
    if thinking_budget is not None and thinking_budget < 1:
        raise UserError(f"thinking budget must be a positive number of tokens, got {thinking_budget}")
    switch = soft_switch(messages)
    enable = enable_thinking if switch is None else switch
    prompt, images = prompt_and_images(engine, messages, enable, tools)
    tok = engine.tokenizer
    think_id, end_id = tok.token_to_id("<think>"), tok.token_to_id("</think>")
    has_think = think_id is not None and end_id is not None
    # The template (or a caller) may open the block itself: then the turn starts inside it.
    if start_thinking and enable and has_think and think_id not in prompt[-3:]:
        prompt = prompt + tok.encode("<think>\n", allow_special=True)
    last_open = max((i for i, t in enumerate(prompt) if t == think_id), default=-1) if has_think else -1
    last_close = max((i for i, t in enumerate(prompt) if t == end_id), default=-1) if has_think else -1
    stop_text = tok.encode(STOP_THINKING, allow_special=True) if has_think else []
    router = ThinkingRouter(think_id if has_think else None, end_id if has_think else None,
                            thinking_budget if has_think and enable else None, stop_text, last_open > last_close)
    [row] = engine.make_rows([prompt], params or SamplingParams(), route=router, reserve=len(stop_text), images=[images])
    return row, router


def stream_chat(engine, messages: list[dict], enable_thinking: bool = True, thinking_budget: int | None = None,
                tools: list | None = None, params: SamplingParams | None = None,
                start_thinking: bool = False) -> Iterator[ChatDelta]:
    """Run one assistant turn, yielding reasoning and content pieces, then a "done" delta with the result.

    `start_thinking` opens the think block in the prompt (as Qwen3-2507 templates do), so the model must think.
    """
    row, router = prepare_chat(engine, messages, enable_thinking, thinking_budget, tools, params, start_thinking)
    timings: dict[str, float] = {}
    for _ in engine.run([row], timings):
        for kind, text in row.deltas():
            yield ChatDelta(kind, text, thinking_tokens=router.count, budget_hit=router.budget_hit)
    yield ChatDelta("done", result=chat_result(row, router, timings), thinking_tokens=router.count,
                    budget_hit=router.budget_hit)


def chat_result(row: Row, router: ThinkingRouter, timings: dict[str, float]) -> ChatResult:
    """The `ChatResult` of a finished chat row (reasoning, content and tool calls split)."""
    base = row.result(timings)
    reasoning = row.channels["reasoning"].text.strip() if "reasoning" in row.channels else ""
    parsed = parse_assistant(base.text)
    # Text-level tags are not trusted for reasoning (they may be plain text), so keep ours.
    return ChatResult(**base.__dict__, reasoning_content=reasoning, content=parsed["content"].strip(),
                      tool_calls=parsed.get("tool_calls") or [], thinking_tokens=router.count,
                      budget_hit=router.budget_hit)


def chat_many(engine, conversations: list[list[dict]], enable_thinking: bool | list[bool] = True,
              batch_size: int = 32, **kwargs: Any) -> list[ChatResult]:
    """One assistant turn for each conversation, `batch_size` turns per batched engine run (evaluations and data
    making); `enable_thinking` may give one mode per conversation; other arguments as for `prepare_chat`."""
    modes = enable_thinking if isinstance(enable_thinking, list) else [enable_thinking] * len(conversations)
    results: list[ChatResult] = []
    for start in range(0, len(conversations), batch_size):
        prepared = [prepare_chat(engine, m, on, **kwargs)
                    for m, on in zip(conversations[start:start + batch_size], modes[start:start + batch_size])]
        timings: dict[str, float] = {}
        for _ in engine.run([row for row, _ in prepared], timings):
            pass
        results += [chat_result(row, router, timings) for row, router in prepared]
    return results


def chat(engine, messages: list[dict], **kwargs: Any) -> ChatResult:
    """Run one assistant turn and return the whole `ChatResult` (see `stream_chat` for the arguments)."""
    for delta in stream_chat(engine, messages, **kwargs):
        if delta.kind == "done":
            return delta.result
    raise AssertionError("stream_chat ended without a result")
