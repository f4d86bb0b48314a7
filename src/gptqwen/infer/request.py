"""One request inside the engine: its decode state (`Row`) and its outcome (`Result`).

`Engine` (engine.py) batches rows through prefill and decode; the thinking layer (thinking.py) routes a row's
tokens into reasoning and content channels. Both build on these types, so neither imports the other's module
for them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gptqwen.infer.sampling import SamplingParams

# route(row, token, forced) -> the channel the token's text goes to ("content", "reasoning") or None (a tag)
Router = Callable[["Row", int, bool], str | None]


@dataclass
class Result:
    """One finished request. `token_ids` includes the stop token (if any); `text` never does."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (stop token or string) or "length"
    prompt_tokens: int
    logprobs: list[float | None] | None = None  # raw log-prob per generated token; None for forced tokens
    top_logprobs: list[list[tuple[int, float]]] | None = None
    timings: dict[str, float] = field(default_factory=dict)


class _Channel:
    """Incrementally decoded text of one kind (content or reasoning) of one row."""

    def __init__(self, tokenizer) -> None:
        self.decoder = tokenizer.decode_stream() if tokenizer is not None else None  # None: ids only
        self.text = ""
        self.emitted = 0

    def add(self, token: int) -> None:
        if self.decoder is not None:
            self.text += self.decoder.step(token)

    def finish(self) -> None:
        if self.decoder is not None:
            self.text += self.decoder.finish()


class Row:
    """The state of one request while its batch runs: tokens so far, text channels, stop checks."""

    def __init__(self, prompt: list[int], params: SamplingParams, tokenizer, stop_ids: set[int],
                 max_new: int, route: Router | None = None, reserve: int = 0) -> None:
        self.prompt, self.params, self.tok = prompt, params, tokenizer
        self.stop_ids, self.max_new, self.route = stop_ids, max_new, route
        self.reserve = reserve  # cache slots kept for forced tokens, which do not count against max_new
        self.n_sampled = 0
        self.tokens: list[int] = []
        self.logprobs: list[float | None] = []
        self.top: list[list[tuple[int, float]]] = []
        self.channels: dict[str, _Channel] = {}
        self.forced: deque[int] = deque()
        self.images: list = []  # encoder inputs for the prompt's image-pad tokens (a VLM's prefill)
        self.finish_reason: str | None = None
        self._hold = max((len(s) for s in params.stop), default=1) - 1

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def channel(self, name: str) -> _Channel:
        if name not in self.channels:
            self.channels[name] = _Channel(self.tok)
        return self.channels[name]

    def push(self, token: int, logprob: float | None = None, top: list | None = None, forced: bool = False) -> None:
        self.tokens.append(token)
        self.logprobs.append(logprob)
        self.top.append(top or [])
        self.n_sampled += not forced
        if token in self.stop_ids and not forced:
            self.finish_reason = "stop"
            self.flush()
            return
        name = self.route(self, token, forced) if self.route else "content"
        if name is not None:
            ch = self.channel(name)
            before = len(ch.text)
            ch.add(token)
            if name == "content" and self.params.stop:
                self._check_stop_strings(ch, before)
        if not self.finished and (self.n_sampled >= self.max_new or len(self.tokens) >= self.max_new + self.reserve):
            self.finish_reason = "length"
            self.flush()

    def _check_stop_strings(self, ch: _Channel, before: int) -> None:
        start = max(0, before - self._hold)
        hits = [i for i in (ch.text.find(s, start) for s in self.params.stop) if i >= 0]
        if hits:
            ch.text = ch.text[: min(hits)]
            self.finish_reason = "stop"

    def deltas(self) -> list[tuple[str, str]]:
        """New text since the last call, per channel; text that may start a stop string is held back."""
        out = []
        for name, ch in self.channels.items():
            safe = len(ch.text)
            if name == "content" and self.params.stop and not self.finished:
                safe = len(ch.text) - _partial_stop(ch.text, self.params.stop)
            if safe > ch.emitted:
                out.append((name, ch.text[ch.emitted:safe]))
                ch.emitted = safe
        return out

    def flush(self) -> None:
        """Finish the channels' decoders (a dangling partial character becomes U+FFFD)."""
        for ch in self.channels.values():
            ch.finish()

    def result(self, timings: dict[str, float]) -> Result:
        want = self.params.logprobs is not None
        return Result(text=self.channel("content").text, token_ids=list(self.tokens),
                      finish_reason=self.finish_reason or "length", prompt_tokens=len(self.prompt),
                      logprobs=list(self.logprobs) if want else None,
                      top_logprobs=list(self.top) if want and self.params.logprobs else None, timings=timings)


def _partial_stop(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
