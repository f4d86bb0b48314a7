"""Chat formats: render conversations (Qwen3 / Qwen2.5 ChatML natively, others from a jinja template),
build SFT ids + assistant masks, and parse a generated assistant turn back into its fields.

    text = tok.apply_chat_template(messages, tools=tools, enable_thinking=False)
    ids, mask = tok.render_for_sft(messages)
    parse_assistant("<think>\\nhmm\\n</think>\\n\\nHi!")  # {"reasoning_content": "hmm", "content": "Hi!", ...}
    parse_tool_calls(text)   # (content, OpenAI tool_calls, errors); see qwen_format.py

Qwen3 and Qwen2.5 are rendered natively (qwen_format.py), identical to transformers with the templates
shipped in `trl`. The Qwen3 template does nothing with the `/think` and `/no_think` soft switches (the
model reacts to them), so they are rendered as typed; `soft_switch(messages)` tells an engine which one
is in force (the last wins). Other templates (e.g. from GGUF metadata) are jinja, rendered in the same
sandbox transformers uses.

Rendering produces *parts*: text the template writes (whose control tokens become control ids) and
text that came from messages or tools (always plain text, even where it spells `<|im_start|>`). When
encoding, control ids break the text into runs that are tokenized whole, as transformers does with
`sanitize_control_tokens=True`; a control token typed by a user is spelled out on its own.
"""

from __future__ import annotations

import functools
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from gptqwen.errors import UserError
from gptqwen.tokenizer.qwen_format import NATIVE as _NATIVE
from gptqwen.tokenizer.qwen_format import parse_tool_calls, tojson

_REASONING_ALIASES = ("reasoning_content", "thinking", "reasoning")
# Private-use markers wrapped around control-token text found in user data before a jinja template sees it.
_MARK_START, _MARK_END = "\U000f0000", "\U000f0001"

CTL, TEXT, LITERAL, BREAK = "ctl", "text", "literal", "break"


class _Parts:
    """Accumulates (text, kind, is_assistant) parts; see the module docstring."""

    def __init__(self, control_re: re.Pattern):
        self.items: list[tuple[str, str, bool]] = []
        self.assistant = False
        self._re = control_re

    def template(self, s: str) -> None:
        self._add(s, CTL)

    def data(self, s: str) -> None:
        self._add(s, LITERAL)

    def _add(self, s: str, match_kind: str) -> None:
        pos = 0
        for m in self._re.finditer(s):
            if m.start() > pos:
                self.items.append((s[pos:m.start()], TEXT, self.assistant))
            self.items.append((m.group(), match_kind, self.assistant))
            pos = m.end()
        if pos < len(s):
            self.items.append((s[pos:], TEXT, self.assistant))

    def text(self) -> str:
        return "".join(t for t, _, _ in self.items)


# ---------------------------------------------------------------------------------------- messages
def _normalize(messages: list) -> list[dict]:
    if not isinstance(messages, (list, tuple)) or not all(isinstance(m, dict) for m in messages):
        raise UserError("messages must be a list of {'role': ..., 'content': ...} objects")
    out = []
    for m in messages:
        m = {k: v for k, v in m.items() if v is not None}  # as transformers: None means absent
        reasoning = next((m[k] for k in _REASONING_ALIASES if k in m), None)
        if reasoning is not None:
            m["reasoning_content"] = reasoning
        out.append(m)
    return out


# ---------------------------------------------------------------------------------------- jinja templates
# Jinja twins of the chat formats rendered natively here: package data beside the renderer (qwen_format.py).
_NATIVE_JINJA = {"qwen3": "chat_qwen3.jinja", "qwen2.5": "chat_qwen2.5.jinja"}


def chat_template_jinja(template: str | None) -> str | None:
    """The Jinja text other tools need for a tokenizer's `chat_template`: the shipped twin of a native
    format (`qwen3`, `qwen2.5`), a Jinja template as it is, None for none."""
    if template in _NATIVE_JINJA:
        return (Path(__file__).parent / _NATIVE_JINJA[template]).read_text(encoding="utf-8")
    return template


@functools.lru_cache(maxsize=16)
def _compile(template: str):
    """Compile a chat template the way transformers does: sandboxed, trim/lstrip blocks, its helpers."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise UserError(f"the chat template is not valid jinja (line {e.lineno}: {e.message})") from e


def _mark(obj: Any, control_re: re.Pattern) -> Any:
    """Wrap control-token text inside user data in private markers (after removing forged markers)."""
    if isinstance(obj, str):
        obj = obj.replace(_MARK_START, "").replace(_MARK_END, "")
        return control_re.sub(lambda m: _MARK_START + m.group() + _MARK_END, obj)
    if isinstance(obj, dict):
        return {k: _mark(v, control_re) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_mark(v, control_re) for v in obj]
    return obj


def _render_jinja(tok, template: str, messages: list[dict], tools, add_generation_prompt: bool,
                  mark: bool, **kwargs: Any) -> str:  # fmt: skip
    import jinja2

    control_re = _control_re(tok)
    if mark:
        messages, tools, kwargs = _mark(messages, control_re), _mark(tools, control_re), _mark(kwargs, control_re)
    variables = {"bos_token": tok.bos_token or "", "eos_token": tok.eos_token or "", "pad_token": tok.pad_token or ""}
    try:
        return _compile(template).render(messages=messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                         **{**variables, **kwargs})  # fmt: skip
    except jinja2.TemplateError as e:
        raise UserError(f"the chat template rejected this conversation: {e}") from e


def _parts_from_marked(text: str, control_re: re.Pattern, p: _Parts) -> None:
    """Turn a template's output (user data marked) into parts: marked tokens are literal text."""
    marked = re.compile(f"{_MARK_START}({control_re.pattern}){_MARK_END}|[{_MARK_START}{_MARK_END}]")
    pieces = marked.split(text)
    for k, piece in enumerate(pieces):
        if k % 2 == 0:
            p.template(piece)
        elif piece is None:  # a lone marker: a template method split a marked token; keep the runs apart
            p.items.append(("", BREAK, p.assistant))
        else:
            p.items.append((piece, LITERAL, p.assistant))


# ---------------------------------------------------------------------------------------- public entry points
@functools.lru_cache(maxsize=32)
def _control_re_for(tokens: tuple[str, ...]) -> re.Pattern:
    longest_first = sorted(tokens, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, longest_first)) or "(?!)")


def _control_re(tok) -> re.Pattern:
    return _control_re_for(tuple(tok.special_tokens))


def _require_template(tok) -> str:
    if not tok.chat_template:
        raise UserError(f"tokenizer '{tok.name}' has no chat template; use the qwen preset, a tokenizer trained "
                        f"with --style qwen, or a tokenizer_config.json that names one")  # fmt: skip
    return tok.chat_template


def render_parts(tok, messages: list[dict], tools=None, add_generation_prompt: bool = True,
                 enable_thinking: bool = True, think_is_prompt: bool = False, **kwargs: Any) -> _Parts:  # fmt: skip
    template = _require_template(tok)
    messages = _normalize(messages)
    p = _Parts(_control_re(tok))
    if template in _NATIVE:
        _NATIVE[template](p, messages, tools, add_generation_prompt=add_generation_prompt,
                          enable_thinking=enable_thinking, think_is_prompt=think_is_prompt)  # fmt: skip
    else:
        text = _render_jinja(tok, template, messages, tools, add_generation_prompt, mark=True,
                             enable_thinking=enable_thinking, **kwargs)  # fmt: skip
        _parts_from_marked(text, p._re, p)
    return p


def apply_chat_template(tok, messages: list[dict], tools=None, add_generation_prompt: bool = True,
                        enable_thinking: bool = True, tokenize: bool = False, **kwargs: Any) -> str | list[int]:  # fmt: skip
    template = _require_template(tok)
    if not tokenize and template not in _NATIVE:  # byte-identical to transformers' rendering
        return _render_jinja(tok, template, _normalize(messages), tools, add_generation_prompt, mark=False,
                             enable_thinking=enable_thinking, **kwargs)  # fmt: skip
    parts = render_parts(tok, messages, tools, add_generation_prompt, enable_thinking, **kwargs)
    return encode_parts(tok, parts.items)[0] if tokenize else parts.text()


def encode_parts(tok, items, split_at_assistant: bool = False) -> tuple[list[int], list[int]]:
    """Ids and assistant mask of rendered parts. Plain text between control tokens is encoded as one run."""
    ids: list[int] = []
    mask: list[int] = []
    run: list[str] = []
    run_flag = False

    def flush() -> None:
        if run:
            enc = tok.encode("".join(run))
            ids.extend(enc)
            mask.extend([int(run_flag)] * len(enc))
            run.clear()

    for text, kind, assistant in items:
        if kind == TEXT:
            if split_at_assistant and run and assistant != run_flag:
                flush()
            run.append(text)
            run_flag = assistant
            continue
        flush()
        if kind == CTL:
            ids.append(tok.special_tokens[text])
            mask.append(int(assistant))
        elif kind == LITERAL:
            enc = tok.encode(text)
            ids.extend(enc)
            mask.extend([int(assistant)] * len(enc))
    flush()
    return ids, mask


def render_for_sft(tok, messages: list[dict], tools=None, enable_thinking: bool = True) -> tuple[list[int], list[int]]:
    """Ids of a full conversation plus a mask that is 1 on what the model must learn to generate: each
    assistant turn's think block, content, tool calls and closing `<|im_end|>` (not the
    `<|im_start|>assistant\\n` header, which the prompt supplies at inference).

    With `enable_thinking=False` the empty think block of the final answer is prompt, as at inference,
    where the chat template writes it into the generation prompt."""
    template = _require_template(tok)
    msgs = _normalize(messages)
    if not any(m.get("role") == "assistant" for m in msgs):
        raise UserError("an SFT conversation needs at least one assistant message")
    if template not in _NATIVE:
        # A jinja template that renders this conversation exactly like a native format (e.g. Qwen3's own
        # template from a checkpoint) gets that format's turn structure; others are diffed turn by turn.
        text = _render_jinja(tok, template, msgs, tools, False, mark=False, enable_thinking=enable_thinking)
        template = next((name for name in _NATIVE if _native_text(tok, name, msgs, tools, enable_thinking) == text), None)
        if template is None:
            return _jinja_sft(tok, tok.chat_template, msgs, tools, enable_thinking)
    p = _Parts(_control_re(tok))
    _NATIVE[template](p, msgs, tools, add_generation_prompt=False, enable_thinking=enable_thinking,
                      think_is_prompt=not enable_thinking)  # fmt: skip
    return encode_parts(tok, p.items, split_at_assistant=True)


def _native_text(tok, name: str, msgs: list[dict], tools, enable_thinking: bool) -> str:
    p = _Parts(_control_re(tok))
    _NATIVE[name](p, msgs, tools, add_generation_prompt=False, enable_thinking=enable_thinking)
    return p.text()


def _jinja_sft(tok, template: str, msgs: list[dict], tools, enable_thinking: bool) -> tuple[list[int], list[int]]:
    """For other templates: an assistant turn is what rendering it adds after the generation prompt of
    the conversation before it (up to its last control token, i.e. its end-of-turn token)."""
    render = functools.partial(_render_jinja, tok, template, tools=tools, mark=True, enable_thinking=enable_thinking)
    full = render(msgs, add_generation_prompt=False)
    spans, control_re = [], _control_re(tok)
    for i, m in enumerate(msgs):
        if m.get("role") != "assistant":
            continue
        before, upto = render(msgs[:i], add_generation_prompt=True), render(msgs[: i + 1], add_generation_prompt=False)
        if not (upto.startswith(before) and full.startswith(upto)):
            raise UserError("this chat template is not prefix-preserving, so assistant tokens cannot be masked; "
                            "use a template with a fixed turn layout (e.g. qwen3)")  # fmt: skip
        ends = [c.end() for c in control_re.finditer(upto, len(before))]
        spans.append((len(before), ends[-1] if ends else len(upto)))
    p = _Parts(control_re)
    pos = 0
    for start, end in spans:
        _parts_from_marked(full[pos:start], control_re, p)
        p.assistant = True
        _parts_from_marked(full[start:end], control_re, p)
        p.assistant = False
        pos = end
    _parts_from_marked(full[pos:], control_re, p)
    return encode_parts(tok, p.items, split_at_assistant=True)


def parse_assistant(text: str) -> dict[str, Any]:
    """Split a generated assistant turn into `reasoning_content` (None when there is no think block),
    `content` and `tool_calls` (`{"type": "function", "function": {"name", "arguments"}}` with the arguments
    decoded, as chat templates take them; `parse_tool_calls` gives the OpenAI wire form with ids and JSON-string
    arguments). A think block cut off before `</think>` (e.g. by a thinking budget) is all reasoning. Tool-call
    blocks whose JSON does not parse are left in the content."""
    for stop in ("<|im_end|>", "<|endoftext|>"):
        text = text.split(stop)[0]
    reasoning = None
    if "</think>" in text:
        head, _, text = text.partition("</think>")
        reasoning = head.split("<think>")[-1].strip("\n")
        text = text.lstrip("\n")
    elif text.lstrip().startswith("<think>"):
        reasoning, text = text.lstrip().removeprefix("<think>").strip("\n"), ""
    content, wire, _ = parse_tool_calls(text)
    calls = [{"type": "function", "function": {"name": c["function"]["name"],
                                               "arguments": json.loads(c["function"]["arguments"])}} for c in wire]
    return {"reasoning_content": reasoning, "content": content if calls else content.rstrip("\n"), "tool_calls": calls}


def soft_switch(messages: list[dict]) -> bool | None:
    """The Qwen3 soft switch in force: True after `/think`, False after `/no_think` (the last one in the
    system/user turns wins), None when neither was typed."""
    state = None
    for m in messages:
        if m.get("role") in ("user", "system") and isinstance(m.get("content"), str):
            for found in re.findall(r"/(no_think|think)\b", m["content"]):
                state = found == "think"
    return state
