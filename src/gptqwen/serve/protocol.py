"""The OpenAI wire format: request models, their validation into `SamplingParams`, and response pieces.

Requests are pydantic models (unknown fields are ignored, as OpenAI-compatible servers do); anything invalid
becomes an `APIError` with OpenAI's error shape `{"error": {"message", "type", "param", "code"}}` and the
status code a client expects (400 bad request, 401 key, 404 model or route, 413 body, 429 queue, 503 down).
Reasoning comes back as `reasoning_content` (vLLM's convention), tool calls as
`{"id", "type": "function", "function": {"name", "arguments": <JSON string>}}`.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gptqwen.errors import UserError
from gptqwen.infer.sampling import SamplingParams
from gptqwen.tokenizer.qwen_format import parse_tool_calls


class APIError(Exception):
    """An error returned to the client in OpenAI's shape."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)  # vLLM's extension; 0 = off
    min_p: float = Field(0.0, ge=0, lt=1)
    repetition_penalty: float = Field(1.0, gt=0)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    ignore_eos: bool = False

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))

    def sampling(self, max_new: int, logprobs: int | None, index: int) -> SamplingParams:
        """The `SamplingParams` of choice `index` (a seeded request with n > 1 gets seed + index per choice)."""
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stop) > 4 or any(not s for s in stop):
            raise APIError(400, "stop must be up to 4 non-empty strings", param="stop")
        try:
            return SamplingParams(max_new_tokens=max_new, temperature=self.temperature, top_p=self.top_p,
                                  top_k=self.top_k, min_p=self.min_p, repetition_penalty=self.repetition_penalty,
                                  presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
                                  seed=None if self.seed is None else self.seed + index, stop=tuple(stop),
                                  ignore_eos=self.ignore_eos, logprobs=logprobs)
        except UserError as e:
            raise APIError(400, str(e)) from e


class ChatRequest(_Request):
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    chat_template_kwargs: dict[str, Any] | None = None
    thinking_budget: int | None = Field(None, ge=1)  # reasoning tokens before the answer is forced

    @property
    def enable_thinking(self) -> bool:
        return bool((self.chat_template_kwargs or {}).get("enable_thinking", True))

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def logprobs_k(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None

    def chat_messages(self) -> list[dict]:
        """Messages as the chat template takes them: text parts joined, tool-call arguments as objects."""
        out = []
        for i, m in enumerate(self.messages):
            role = m.get("role")
            if role not in ("system", "developer", "user", "assistant", "tool"):
                raise APIError(400, f"messages[{i}].role must be system, user, assistant or tool; got {role!r}",
                               param=f"messages[{i}].role")
            m = dict(m, role="system" if role == "developer" else role, content=_text(m.get("content"), i))
            if m.get("tool_calls"):
                m["tool_calls"] = [_call_in(c, i) for c in m["tool_calls"]]
            out.append(m)
        return out

    def chat_tools(self) -> list[dict] | None:
        if self.tool_choice not in (None, "none", "auto", "required") and not isinstance(self.tool_choice, dict):
            raise APIError(400, "tool_choice must be none, auto, required or {'type': 'function', ...}",
                           param="tool_choice")
        for t in self.tools or []:
            fn = t.get("function", t)
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise APIError(400, "every tool must be {'type': 'function', 'function': {'name': ..., ...}}",
                               param="tools")
        return None if self.tool_choice == "none" else self.tools or None


class CompletionRequest(_Request):
    prompt: str | list[int] | list[str | list[int]]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: Literal[False] = False

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            p = [p]
        if not p or any(not x for x in p):
            raise APIError(400, "prompt must not be empty", param="prompt")
        return list(p)


def parse(model: type[BaseModel], body: bytes) -> Any:
    """The request model from a raw JSON body, or a 400 `APIError` naming what is wrong."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise APIError(400, f"{where}: {err['msg']}", param=where or None) from e


def _text(content: Any, i: int) -> str | list[dict]:
    """A message's content: text parts joined; with image parts, the parts (images as data: URLs only — a
    server does not open files or URLs named by a client)."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        kinds = {p.get("type") for p in content}
        if kinds - {"text", "image_url"}:
            raise APIError(400, f"messages[{i}]: content parts must be text or image_url", param=f"messages[{i}]")
        if "image_url" not in kinds:
            return "".join(str(p.get("text", "")) for p in content)
        for p in content:
            ref = p.get("image_url")
            url = ref.get("url") if isinstance(ref, dict) else None
            if p.get("type") == "image_url" and not (isinstance(url, str) and url.startswith("data:")):
                raise APIError(400, f"messages[{i}]: an image_url must be {{'url': 'data:image/...;base64,...'}}; "
                               "this server takes images as data URLs only", param=f"messages[{i}]")  # fmt: skip
        return [p if p.get("type") == "image_url" else {"type": "text", "text": str(p.get("text", ""))} for p in content]
    raise APIError(400, f"messages[{i}].content must be a string or a list of content parts", param=f"messages[{i}]")


def _call_in(call: dict, i: int) -> dict:
    """An assistant message's OpenAI tool call with `arguments` decoded (the template writes them as JSON)."""
    if not isinstance(call, dict) or not isinstance(call.get("function", {}), dict):
        raise APIError(400, f"messages[{i}].tool_calls must be objects with a function",
                       param=f"messages[{i}].tool_calls")
    fn = dict(call.get("function") or {})
    if isinstance(fn.get("arguments"), str):
        try:
            fn["arguments"] = json.loads(fn["arguments"])
        except ValueError as e:
            raise APIError(400, f"messages[{i}]: tool call arguments are not valid JSON",
                           param=f"messages[{i}].tool_calls") from e
    return {"type": "function", "function": fn}


def tool_calls_out(text: str) -> tuple[str, list[dict]]:
    """(content, OpenAI tool calls) of a generated assistant text; malformed blocks stay in the content."""
    content, calls, _ = parse_tool_calls(text)
    return content, calls


class ToolStream:
    """Streams content while holding back everything from a `<tool_call>` on (it becomes `tool_calls`)."""

    TAG = "<tool_call>"

    def __init__(self) -> None:
        self.text, self.sent, self.held = "", 0, False

    def feed(self, piece: str) -> str:
        """Content safe to stream now."""
        self.text += piece
        if self.held:
            return ""
        at = self.text.find(self.TAG, self.sent)
        if at >= 0:
            self.held = True
            out, self.sent = self.text[self.sent:at], at
            return out
        safe = len(self.text)
        for n in range(min(len(self.TAG) - 1, len(self.text) - self.sent), 0, -1):
            if self.text.endswith(self.TAG[:n]):
                safe -= n
                break
        out, self.sent = self.text[self.sent:safe], safe
        return out

    def finish(self) -> tuple[str, list[dict]]:
        """(content not yet streamed, tool calls) at the end of the turn."""
        rest = self.text[self.sent:]
        if not self.held:
            return rest, []
        content, calls = tool_calls_out(rest)
        return ("" if calls else rest), calls


def chat_logprobs(tok, ids: list[int], lps: list, tops: list) -> list[dict]:
    """Chat `logprobs.content` entries for generated tokens (forced tokens, whose log-prob is None, skipped)."""
    def entry(t: int, lp: float) -> dict:
        b = tok.token_bytes(t)
        return {"token": b.decode("utf-8", "replace"), "logprob": lp, "bytes": list(b)}

    return [dict(entry(t, lp), top_logprobs=[entry(i, v) for i, v in top])
            for t, lp, top in zip(ids, lps, tops) if lp is not None]


def completion_logprobs(tok, ids: list[int], lps: list, tops: list, offset: int) -> dict:
    """Legacy completions `logprobs`: tokens, token_logprobs, top_logprobs (dicts), text_offset."""
    tokens = [tok.token_bytes(t).decode("utf-8", "replace") for t in ids]
    offsets, at = [], offset
    for s in tokens:
        offsets.append(at)
        at += len(s)
    return {"tokens": tokens, "token_logprobs": list(lps), "text_offset": offsets,
            "top_logprobs": [{tok.token_bytes(i).decode("utf-8", "replace"): v for i, v in top} for top in tops]}


def usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
