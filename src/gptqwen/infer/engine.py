"""The inference engine: batched prefill + incremental decode over a static KV cache.

    from gptqwen.infer import Engine, SamplingParams
    engine = Engine(model, tokenizer)
    [r] = engine.generate(["Once upon a time"], SamplingParams(temperature=0, max_new_tokens=32))
    for piece in engine.stream("Once upon a time", SamplingParams(max_new_tokens=32)):
        print(piece, end="", flush=True)
    reply = engine.chat([{"role": "user", "content": "Hi!"}], thinking_budget=256)   # see thinking.py

How a batch runs: prompts of different lengths are left-padded into one [B, L] prefill with an
attention mask and per-row position ids (each row counts from 0 at its first real token); the KV cache is
allocated once for L + max_new_tokens slots (and reused by later calls that fit; the prefill runs in chunks of
PREFILL_CHUNK tokens so long prompts need memory linear in their length), every decode step feeds
one token per row. Rows that finished keep feeding a pad token until the whole batch is done, so shapes stay
fixed. A row can be given *forced* tokens (the thinking budget's stop text): they are fed through the cache
instead of the sampled token, one per step, exactly as if the model had written them.

On CPU, decode steps of Llama/Qwen- and GPT-2-layout models (float32 or q8_0/q4_1 weights) run as one C call each
(`infer/native.py`, same logits as the PyTorch forward); prefill and every other model go through PyTorch.

`run` drives a fixed batch to its end. A server's continuous batching — requests joining and leaving one running
batch at every step — is `infer/scheduler.py`, built on the same rows, sampler and decode step.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from gptqwen.errors import UserError
from gptqwen.infer.native import NativeDecoder
from gptqwen.infer.request import Result, Router, Row
from gptqwen.infer.sampling import Sampler, SamplingParams
from gptqwen.infer.thinking import chat, stream_chat

Prompt = str | Sequence[int]
PREFILL_CHUNK = 2048  # prompt tokens per prefill forward (see Engine._prefill)


class Engine:
    """Generation for a `Transformer` and its `Tokenizer` (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, tokenizer=None, compile: bool = False, native: bool = True) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = model.config
        p = next(model.parameters())
        self.device = p.device
        self.cache_dtype = p.dtype if p.dtype.is_floating_point else torch.bfloat16
        self._cache = None
        self._forward = torch.compile(model, dynamic=True) if compile else model
        # decode steps in one C call where the model qualifies (infer/native.py); compile keeps PyTorch's graph
        self.native = native and not compile
        # a vision-language model decodes with its text decoder once the images are in the cache
        self.text_model = getattr(model, "decoder", model)

    # ----------------------------------------------------------------------------------- public API
    def generate(self, prompts: Prompt | Sequence[Prompt],
                 params: SamplingParams | Sequence[SamplingParams] | None = None) -> list[Result]:
        """Generate for one prompt or a batch (text or token ids); one `Result` per prompt."""
        rows = self.make_rows(prompts, params)
        timings: dict[str, float] = {}
        for _ in self.run(rows, timings):
            pass
        return [r.result(timings) for r in rows]

    def stream(self, prompt: Prompt, params: SamplingParams | None = None) -> Iterator[str]:
        """Yield the text of one request piece by piece as it is generated (never a broken character)."""
        [row] = self.make_rows([prompt], params)
        for _ in self.run([row], {}):
            for _, text in row.deltas():
                yield text

    def chat(self, messages: list[dict], **kwargs: Any):
        """One assistant turn with thinking control; see `gptqwen.infer.thinking.chat`. With `tools=` (OpenAI
        schemas) it renders them and returns the turn's parsed `tool_calls` without running them, as transformers'
        and vLLM's chat do; the loop that runs the calls and continues is `gptqwen.tools.agent.run`."""
        return chat(self, messages, **kwargs)

    def stream_chat(self, messages: list[dict], **kwargs: Any):
        """Like `chat`, yielding `ChatDelta`s (reasoning / content pieces) and finally the result."""
        return stream_chat(self, messages, **kwargs)

    # ------------------------------------------------------------------------------------ machinery
    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise UserError("this model has no tokenizer; pass token ids instead of text")
        return list(self.tokenizer.encode(text))

    def stop_ids(self, params: SamplingParams) -> set[int]:
        ids = set(int(i) for i in params.stop_token_ids)
        if not params.ignore_eos:
            eos = self.config.eos_token_id
            ids.update(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
            if self.tokenizer is not None:
                ids.update(self.tokenizer.stop_ids)
        return ids

    def make_rows(self, prompts: Prompt | Sequence[Prompt], params=None, route: Router | None = None,
                  reserve: int = 0, images: Sequence[list] | None = None) -> list[Row]:
        """Tokenise, check against the context window, and wrap each prompt in a `Row`; `images` (per prompt: the
        `ImageInput`s of its image-pad tokens) go with the rows to a vision-language model's prefill."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if not prompts:
            raise UserError("no prompts given")
        plist = list(params) if isinstance(params, (list, tuple)) else [params or SamplingParams()] * len(prompts)
        if len(plist) != len(prompts):
            raise UserError(f"got {len(plist)} sampling params for {len(prompts)} prompts")
        ctx, vocab = self.config.max_seq_len, self.config.vocab_size
        rows = []
        for prompt, p in zip(prompts, plist):
            ids = self.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
            if not ids:
                raise UserError("a prompt is empty; give at least one token")
            if min(ids) < 0 or max(ids) >= vocab:
                raise UserError(f"prompt token id out of range [0, {vocab}); the tokenizer does not match the model")
            if len(ids) >= ctx:
                if not p.truncate_prompt:
                    raise UserError(f"prompt of {len(ids)} tokens does not fit the context window of {ctx} tokens; "
                                    "shorten it or ask for truncation (truncate_prompt / --truncate)")
                ids = ids[-(ctx - min(p.max_new_tokens, ctx // 2)):]  # keep the end, leave room to answer
            max_new = min(p.max_new_tokens, ctx - len(ids) - reserve)
            if max_new < 1:
                raise UserError(f"prompt of {len(ids)} tokens leaves no room to generate in the context window "
                                f"of {ctx} tokens; shorten it")
            rows.append(Row(ids, p, self.tokenizer, self.stop_ids(p), max_new, route, reserve))
        for row, imgs in zip(rows, images or []):
            if imgs and not hasattr(self.model, "vision_config"):
                raise UserError("this model does not take images; load a vision-language model (gptqwen vl train)")
            row.images = list(imgs or [])
        return rows

    def _get_cache(self, batch: int, length: int):
        c = self._cache
        if c is None or c.batch_size != batch or c.max_len < length:
            self._cache = None  # free the old buffers before allocating new ones
            c = self._cache = self.model.new_cache(batch, length, dtype=self.cache_dtype, device=self.device)
        c.reset()
        return c

    def _prefill(self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None, cache,
                 extra: dict | None = None) -> torch.Tensor:
        """Last-position logits [B, V] of the prompts `ids` [B, L], fed into `cache` PREFILL_CHUNK tokens at a time:
        activations and attention scores then grow linearly with L (the chunk's queries over the cache so far),
        never [L, L]. Image inputs (`extra`) go in one piece, as they are scattered over the whole prompt."""
        L = ids.shape[1]
        step = L if extra or L <= PREFILL_CHUNK else PREFILL_CHUNK
        for a in range(0, L, step):
            b = min(L, a + step)
            out = self._forward(ids[:, a:b], position_ids=pos[:, a:b], attention_mask=None if mask is None else mask[:, :b],
                                cache=cache, logits_to_keep=1, **(extra or {}))
        return out.logits[:, -1]

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @torch.inference_mode()
    def run(self, rows: list[Row], timings: dict[str, float]) -> Iterator[None]:
        """Drive `rows` to completion, yielding after every step (prefill included) so callers can stream."""
        B, dev = len(rows), self.device
        L = max(len(r.prompt) for r in rows)
        steps = max(r.max_new + r.reserve for r in rows)
        cache = self._get_cache(B, L + steps)
        pad = rows[0].prompt[-1]
        ids = torch.full((B, L), pad, dtype=torch.long)
        mask = torch.zeros((B, L + steps), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, L - len(r.prompt):] = torch.tensor(r.prompt)
            mask[i, L - len(r.prompt):L] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        pos = (mask[:, :L].cumsum(-1) - 1).clamp(min=0)
        padded = any(len(r.prompt) != L for r in rows)  # no padding: no mask, the model's fastest path
        sampler = Sampler([r.params for r in rows], self.config.vocab_size, dev)
        sampler.observe_prompt([r.prompt for r in rows])
        # built per run, not per engine: it reads the weights in place, and the model may have changed since
        native = NativeDecoder.build(self.text_model) if self.native and dev.type == "cpu" else None
        images = [im for r in rows for im in r.images]  # row-major, as the image-pad tokens lie in `ids`
        starts = torch.tensor([L - len(r.prompt) for r in rows])  # first real slot of each row

        self._sync()
        t0 = time.perf_counter()
        logits = self._prefill(ids, pos, mask[:, :L] if padded else None, cache, {"images": images} if images else {})
        next_pos, fill, n_steps = pos[:, -1:] + 1, L, 0
        while True:
            draw = sampler(logits)
            chosen = draw.tokens.tolist()  # the one host sync per step: stop checks need the tokens
            lps = draw.logprobs.tolist() if draw.logprobs is not None else None
            feed = []
            for i, r in enumerate(rows):
                if r.finished:
                    feed.append(pad)
                elif r.forced:
                    feed.append(r.forced.popleft())
                    r.push(feed[-1], forced=True)
                else:
                    feed.append(chosen[i])
                    r.push(chosen[i], lps[i] if lps else None, draw.top[i] if draw.top else None)
            if n_steps == 0:
                self._sync()
                timings["prefill_s"] = time.perf_counter() - t0
                t0 = time.perf_counter()
            n_steps += 1
            yield
            if all(r.finished for r in rows):
                break
            x = torch.tensor(feed, dtype=torch.long, device=dev)[:, None]
            sampler.observe(x[:, 0])
            mask[:, fill] = 1
            fill += 1
            if native is not None:
                logits = native.step(x[:, 0], next_pos[:, 0], starts, cache)
            else:
                logits = self._forward(x, position_ids=next_pos, attention_mask=mask[:, :fill] if padded else None,
                                       cache=cache, logits_to_keep=1).logits[:, -1]
            next_pos = next_pos + 1
        self._sync()
        decode_s = time.perf_counter() - t0
        new_tokens = sum(len(r.tokens) for r in rows)
        timings.update(decode_s=decode_s, prompt_tokens=sum(len(r.prompt) for r in rows),
                       generated_tokens=new_tokens, decode_steps=n_steps,
                       decode_tokens_per_s=(B * (n_steps - 1) / decode_s) if decode_s > 0 and n_steps > 1 else 0.0)
