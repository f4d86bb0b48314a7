"""Continuous batching: requests join and leave one running batch at step granularity.

    from gptqwen.infer import Engine, SamplingParams
    from gptqwen.infer.scheduler import Scheduler
    sched = Scheduler(engine, max_seqs=32)                     # starts a background thread
    [row] = engine.make_rows(["Once upon a time"], SamplingParams(max_new_tokens=32))
    for update in sched.stream(row):                           # or sched.submit(row, sink) with a callback
        print("".join(text for _, text in update.deltas), end="")
    sched.close()

`Engine.run` drives a fixed batch to its end; a server needs more: a request that arrives while others decode
starts at the next step, one that finishes (or whose client leaves) frees its slot at once. How it works:

* One KV cache of `capacity` rows (a power of two, grown and shrunk with the load) shares one timeline: every
  decode step writes all rows' keys/values at slot `fill`, and row b attends to slots `start[b] .. fill` — the
  layout the C decode step (`ops.decode_step`, left-padded batches) and the masked PyTorch forward both take.
  A free row feeds a pad token that attends only to itself.
* New requests are prefilled apart from the batch, several at once (left-padded), in chunks of at most
  `prefill_tokens` tokens, one chunk between two decode steps, so a long prompt delays the running requests by
  a chunk's time per step, not by its whole prefill. A prefilled row's keys/values are copied into a free row of
  the shared cache, ending at `fill`, and it decodes from the next step on.
* When the timeline reaches the end of the cache, or a prompt is longer than `fill`, or rows must be added or
  removed, the cache is laid out again (`_relayout`): each row's slots are copied right-aligned into a new cache.
  Its length is about twice the longest row's, so memory follows what the rows hold and this stays rare.
* Sampling goes through the same `Sampler` as `Engine.run`, rebuilt when the batch changes; each request keeps
  its own `torch.Generator`, so a seeded request draws the same tokens whatever shares the batch.

A request is a `Row` (from `engine.make_rows` or `thinking.prepare_chat`) plus a sink called from the
scheduler thread with an `Update` after every step that touched it. `submit` raises `QueueFull` when the
waiting queue is at its bound; `Request.cancel()` frees the slot at the next step.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from gptqwen.errors import UserError
from gptqwen.infer.native import NativeDecoder
from gptqwen.infer.request import Row
from gptqwen.infer.sampling import Sampler, SamplingParams

log = logging.getLogger(__name__)


class QueueFull(UserError):
    """The scheduler's waiting queue is at its bound; retry later."""


@dataclass
class Update:
    """What one step added to a request: text per channel, the new tokens (with log-probs when asked for),
    and whether it is finished (`finish_reason` "stop", "length" or "cancelled")."""

    deltas: list[tuple[str, str]]
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float | None] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    finished: bool = False
    finish_reason: str | None = None


@dataclass
class Stats:
    """A snapshot of the scheduler's state for metrics."""

    waiting: int
    running: int
    prefilling: int
    capacity: int
    cache_slots: int
    steps: int
    tokens: int


class Request:
    """One submitted row: where its updates go and its place in the running batch."""

    def __init__(self, row: Row, sink: Callable[[Update], None], device: torch.device) -> None:
        self.row, self.sink = row, sink
        seed = row.params.seed if row.params.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(seed)
        self.cancelled = False
        self.feed = 0  # the token to feed at the next decode step
        self.start = 0  # first cache slot of the row
        self.pos = 0  # position of the next token fed
        self.sent = 0  # tokens already reported
        self.submitted = time.perf_counter()

    def cancel(self) -> None:
        """Ask the scheduler to drop the request; it frees its slot at the next step."""
        self.cancelled = True


class _Prefill:
    """Requests prefilled together: their prompts left-padded into one [k, L] matrix, run chunk by chunk into a
    private cache."""

    def __init__(self, engine, reqs: list[Request], chunk: int) -> None:
        self.reqs = reqs
        L = max(len(r.row.prompt) for r in reqs)
        self.ids = torch.full((len(reqs), L), reqs[0].row.prompt[-1], dtype=torch.long)
        self.mask = torch.zeros((len(reqs), L), dtype=torch.long)
        for i, r in enumerate(reqs):
            self.ids[i, L - len(r.row.prompt):] = torch.tensor(r.row.prompt)
            self.mask[i, L - len(r.row.prompt):] = 1
        self.pos = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.padded = any(len(r.row.prompt) != L for r in reqs)
        self.cache = engine.model.new_cache(len(reqs), L, dtype=engine.cache_dtype, device=engine.device)
        self.done, self.L, self.chunk = 0, L, max(1, chunk // len(reqs))
        self.images = [im for r in reqs for im in r.row.images]  # row-major, as their pad tokens lie in `ids`
        if self.images:  # a VLM scatters every image's features in one forward: no chunking then
            self.chunk = L

    def step(self, engine) -> torch.Tensor | None:
        """Run the next chunk; the last positions' logits [k, V] once the prompts are done, else None."""
        a, b, dev = self.done, min(self.L, self.done + self.chunk), engine.device
        out = engine._forward(self.ids[:, a:b].to(dev), position_ids=self.pos[:, a:b].to(dev),
                              attention_mask=self.mask[:, :b].to(dev) if self.padded else None, cache=self.cache,
                              logits_to_keep=1, **({"images": self.images} if self.images else {}))
        self.done = b
        return out.logits[:, -1] if b == self.L else None


class Scheduler:
    """Continuous batching over an `Engine` (see the module docstring)."""

    def __init__(self, engine, max_seqs: int = 64, max_queue: int = 256, prefill_tokens: int = 256) -> None:
        if max_seqs < 1 or max_queue < 1 or prefill_tokens < 1:
            raise UserError("max_seqs, max_queue and prefill_tokens must be >= 1")
        self.engine, self.max_seqs, self.max_queue, self.prefill_tokens = engine, max_seqs, max_queue, prefill_tokens
        self.native = NativeDecoder.build(engine.text_model) if engine.native and engine.device.type == "cpu" else None
        self._lock = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._slots: list[Request | None] = []
        self._cache = None
        self._fill = 0
        self._prefill: _Prefill | None = None
        self._sampler: Sampler | None = None
        self._pad_params = SamplingParams(temperature=0)
        self._pad_gen = torch.Generator(device=engine.device)
        self._closed = False
        self.steps = self.tokens = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="gptqwen-scheduler", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------ public API
    def submit(self, row: Row, sink: Callable[[Update], None]) -> Request:
        """Queue a row; `sink(update)` is called from the scheduler thread. Raises `QueueFull` at the bound."""
        req = Request(row, sink, self.engine.device)
        with self._lock:
            if self._closed:
                raise UserError("the scheduler is closed")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"the queue holds {self.max_queue} waiting requests already; retry later")
            self._waiting.append(req)
            self._lock.notify()
        return req

    def stream(self, row: Row) -> Iterator[Update]:
        """Submit a row and yield its updates in this thread (the last one has `finished`)."""
        q: queue.Queue[Update] = queue.Queue()
        req = self.submit(row, q.put)
        try:
            while True:
                u = q.get()
                yield u
                if u.finished:
                    return
        finally:
            req.cancel()

    def stats(self) -> Stats:
        with self._lock:
            return Stats(len(self._waiting), sum(r is not None for r in self._slots),
                         len(self._prefill.reqs) if self._prefill else 0, len(self._slots),
                         self._cache.max_len if self._cache is not None else 0, self.steps, self.tokens)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join()

    # ------------------------------------------------------------------------------------- the loop
    def _main(self) -> None:
        try:
            with torch.inference_mode():
                while self._iteration():
                    pass
        except BaseException as e:  # noqa: BLE001 - logged, reported to every waiting client; then stop
            log.exception("the scheduler stopped")
            self.error = e
            with self._lock:
                self._closed = True
                pending = list(self._waiting) + [r for r in self._slots if r is not None]
                pending += self._prefill.reqs if self._prefill else []
            for r in pending:
                r.sink(Update([], finished=True, finish_reason="error"))

    def _iteration(self) -> bool:
        with self._lock:
            while not self._closed and not self._waiting and self._prefill is None and not any(self._slots):
                self._lock.wait()
            if self._closed:
                return False
            dropped = [r for r in self._waiting if r.cancelled]
            for r in dropped:
                self._waiting.remove(r)
            if self._prefill is None and self._waiting:
                self._prefill = self._admit()
        for r in dropped:
            r.sink(Update([], finished=True, finish_reason="cancelled"))
        for i, r in enumerate(self._slots):
            if r is not None and r.cancelled:
                self._leave(i, "cancelled")
        if self._prefill is not None:
            self._prefill_step()
        if any(self._slots):
            self._decode_step()
        self._maybe_shrink()
        return True

    def _admit(self) -> _Prefill | None:
        """Take waiting requests (under the lock) into a prefill while slots and the token budget allow."""
        free = self.max_seqs - sum(r is not None for r in self._slots)
        take: list[Request] = []
        while self._waiting and len(take) < free:
            L = max([len(r.row.prompt) for r in take] + [len(self._waiting[0].row.prompt)])
            if take and L * (len(take) + 1) > self.prefill_tokens:
                break
            take.append(self._waiting.popleft())
        return _Prefill(self.engine, take, self.prefill_tokens) if take else None

    def _prefill_step(self) -> None:
        job = self._prefill
        if any(r.cancelled for r in job.reqs):  # restart without them (rare: a client left during its prefill)
            with self._lock:
                self._prefill = None
                self._waiting.extendleft(reversed([r for r in job.reqs if not r.cancelled]))
            for r in job.reqs:
                if r.cancelled:
                    r.sink(Update([], finished=True, finish_reason="cancelled"))
            return
        logits = job.step(self.engine)
        if logits is None:
            return
        sampler = self._sampler_for(job.reqs)
        draw = sampler(logits)
        self._push(job.reqs, draw)
        self._join([r for r in job.reqs if not r.row.finished], job)
        with self._lock:
            self._prefill = None

    def _decode_step(self) -> None:
        if self._fill >= self._cache.max_len:
            self._relayout(len(self._slots))
        slots, cache, dev = self._slots, self._cache, self.engine.device
        fill = self._fill
        tokens = torch.tensor([r.feed if r else 0 for r in slots], dtype=torch.long)
        pos = torch.tensor([r.pos if r else 0 for r in slots], dtype=torch.long)
        starts = torch.tensor([r.start if r else fill for r in slots], dtype=torch.long)
        cache.length = fill
        if self.native is not None:
            logits = self.native.step(tokens, pos, starts, cache)
        else:
            mask = (torch.arange(fill + 1)[None, :] >= starts[:, None]).long().to(dev)
            logits = self.engine._forward(tokens[:, None].to(dev), position_ids=pos[:, None].to(dev),
                                          attention_mask=mask, cache=cache, logits_to_keep=1).logits[:, -1]
        self._fill = fill + 1
        for r in slots:
            if r is not None:
                r.pos += 1
        if self._sampler is None:
            self._sampler = self._sampler_for(slots)
        self._push(slots, self._sampler(logits))
        self.steps += 1
        for i, r in enumerate(slots):
            if r is not None and r.row.finished:
                self._leave(i, None)

    # -------------------------------------------------------------------------------------- helpers
    def _sampler_for(self, reqs: list[Request | None]) -> Sampler:
        """A `Sampler` for these rows (None = a free row) with their own generators and penalty counts."""
        s = Sampler([r.row.params if r else self._pad_params for r in reqs], self.engine.config.vocab_size,
                    self.engine.device)
        s.generators = [r.gen if r else self._pad_gen for r in reqs]
        s.observe_prompt([r.row.prompt + r.row.tokens if r else [0] for r in reqs])
        if s.counts_out is not None:
            for i, r in enumerate(reqs):
                for t in r.row.tokens if r else []:
                    s.counts_out[i, t] += 1
        return s

    def _push(self, reqs: list[Request | None], draw) -> None:
        """Give each row its sampled (or forced) token, as `Engine.run` does, and send the updates."""
        chosen = draw.tokens.tolist()
        lps = draw.logprobs.tolist() if draw.logprobs is not None else None
        for i, r in enumerate(reqs):
            if r is None:
                continue
            row = r.row
            if row.forced:
                r.feed = row.forced.popleft()
                row.push(r.feed, forced=True)
            else:
                r.feed = chosen[i]
                row.push(r.feed, lps[i] if lps else None, draw.top[i] if draw.top else None)
            self.tokens += 1
            self._send(r, None)

    def _send(self, r: Request, reason: str | None) -> None:
        row, a = r.row, r.sent
        r.sent = len(row.tokens)
        done = row.finished or reason is not None
        r.sink(Update(row.deltas(), row.tokens[a:], row.logprobs[a:], row.top[a:], done,
                      reason or row.finish_reason))

    def _join(self, reqs: list[Request], job: _Prefill) -> None:
        """Copy prefilled rows into free rows of the shared cache, ending at `fill`."""
        if not reqs:
            return
        free = [i for i, r in enumerate(self._slots) if r is None]
        if (len(free) < len(reqs) or self._cache is None or self._fill < max(len(r.row.prompt) for r in reqs)
                or self._fill >= self._cache.max_len):
            live = sum(r is not None for r in self._slots)
            self._relayout(live + len(reqs), extra=reqs)
            free = [i for i, r in enumerate(self._slots) if r is None]
        ck, fill = self._cache, self._fill
        for r, slot in zip(reqs, free):
            P = len(r.row.prompt)
            i = job.reqs.index(r)
            ck.k[:, slot, :, fill - P:fill] = job.cache.k[:, i, :, job.L - P:job.L]
            ck.v[:, slot, :, fill - P:fill] = job.cache.v[:, i, :, job.L - P:job.L]
            r.start, r.pos = fill - P, P
            self._slots[slot] = r
        self._sampler = None

    def _leave(self, i: int, reason: str | None) -> None:
        r = self._slots[i]
        self._slots[i] = None
        self._sampler = None
        if reason is not None:
            r.row.finish_reason = r.row.finish_reason or reason
            self._send(r, reason)

    def _maybe_shrink(self) -> None:
        live = sum(r is not None for r in self._slots)
        if len(self._slots) > 1 and live * 4 <= len(self._slots) and self._prefill is None:
            self._relayout(max(live, 1))

    def _relayout(self, rows: int, extra: list[Request] = ()) -> None:
        """A new cache of `_capacity(rows)` rows holding the running rows right-aligned at a new `fill` that
        leaves room for the prompts of `extra` (about to join); its length is about twice `fill` (memory follows
        what the rows hold, and the next relayout is at least `fill` steps away)."""
        live = [r for r in self._slots if r is not None]
        fill = max([self._fill - r.start for r in live] + [len(r.row.prompt) for r in extra] + [1])
        max_len = 64
        while max_len < 2 * fill:
            max_len *= 2
        cap = _capacity(rows, self.max_seqs)
        old, e = self._cache, self.engine
        new = e.model.new_cache(cap, max_len, dtype=e.cache_dtype, device=e.device)
        at = {id(r): i for i, r in enumerate(self._slots)}
        for i, r in enumerate(live):
            n = self._fill - r.start  # slots the row holds now
            new.k[:, i, :, fill - n:fill] = old.k[:, at[id(r)], :, r.start:self._fill]
            new.v[:, i, :, fill - n:fill] = old.v[:, at[id(r)], :, r.start:self._fill]
            r.start = fill - n
        self._cache, self._fill = new, fill
        self._slots = live + [None] * (cap - len(live))
        self._sampler = None


def _capacity(rows: int, max_seqs: int) -> int:
    """The smallest power of two >= rows, at most max_seqs."""
    cap = 1
    while cap < rows:
        cap *= 2
    return min(cap, max_seqs)
