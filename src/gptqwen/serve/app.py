"""The OpenAI-compatible HTTP server (FastAPI): routes, limits, auth, and streaming over the scheduler.

    gptqwen serve --model SmolLM2-135M-Instruct.Q4_1.gguf --quant q8_0 --port 8000
    curl localhost:8000/v1/chat/completions -d '{"model": "...", "messages": [{"role": "user", "content": "Hi"}]}'

Routes: `POST /v1/chat/completions`, `POST /v1/completions` (both streaming over SSE or not), `GET /v1/models`,
`GET /health`, `GET /metrics` (Prometheus), `GET /` (the chat page, `static/chat.html`).
Every request becomes one or more rows (`n` choices) submitted to the continuous-batching `Scheduler`
(`infer/scheduler.py`), which runs in its own thread and reports each step through a sink; the sink hands
updates to the request's asyncio queue. A client that disconnects cancels its rows, which leave the batch at the
next step. Errors come back in OpenAI's shape (`protocol.APIError`).
"""

from __future__ import annotations

import asyncio
import html
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from gptqwen.errors import UserError, require
from gptqwen.infer.scheduler import QueueFull, Scheduler, Update
from gptqwen.infer.scheduler import Request as Handle
from gptqwen.infer.thinking import chat_result, prepare_chat
from gptqwen.serve import protocol as P
from gptqwen.serve.metrics import Metrics

# the `serve` extra: a missing package is one UserError naming the extra, raised when this module is imported
fastapi = require("fastapi", "serve", "gptqwen serve")
responses = require("fastapi.responses", "serve", "gptqwen serve")
Request = fastapi.Request
PAGE = Path(__file__).parent / "static" / "chat.html"


@dataclass
class Limits:
    """What one request may ask for."""

    max_prompt_tokens: int
    max_completion_tokens: int
    max_body_bytes: int = 1 << 20


@dataclass
class _Choice:
    """One row of a request being served: its index, row, router (chat) and bookkeeping."""

    index: int
    row: object
    router: object | None = None
    handle: Handle | None = None
    done: bool = False
    reason: str | None = None
    last: float = 0.0  # when the last update came
    tokens: int = 0  # tokens received so far


def create_app(engine, scheduler: Scheduler, model_name: str, limits: Limits, api_key: str | None = None):
    """The FastAPI application serving `engine` through `scheduler` under the name `model_name`."""
    JSONResponse, StreamingResponse = responses.JSONResponse, responses.StreamingResponse
    app = fastapi.FastAPI(title="gptqwen", docs_url=None, redoc_url=None, openapi_url=None)
    metrics = Metrics(scheduler)
    created = int(time.time())

    def error(e: P.APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(P.APIError)
    async def _api_error(request: Request, e: P.APIError):
        metrics.requests.labels(request.url.path, str(e.status)).inc()
        return error(e)

    @app.exception_handler(Exception)
    async def _crash(request: Request, e: Exception):  # a bug: still OpenAI's shape; uvicorn logs the traceback
        metrics.requests.labels(request.url.path, "500").inc()
        return error(P.APIError(500, f"internal server error ({type(e).__name__}); see the server log",
                                type="server_error"))

    @app.exception_handler(404)
    async def _not_found(request: Request, e):
        return error(P.APIError(404, f"no route {request.method} {request.url.path}", code="not_found"))

    @app.exception_handler(405)
    async def _bad_method(request: Request, e):
        return error(P.APIError(405, f"{request.method} is not allowed on {request.url.path}"))

    async def body_of(request: Request) -> bytes:
        if api_key is not None:
            got = request.headers.get("authorization", "")
            if not secrets.compare_digest(got.encode(), f"Bearer {api_key}".encode()):
                raise P.APIError(401, "missing or wrong API key; send 'Authorization: Bearer <key>'",
                                 type="authentication_error", code="invalid_api_key")
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > limits.max_body_bytes:
            raise P.APIError(413, f"the request body is over {limits.max_body_bytes} bytes", code="body_too_large")
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > limits.max_body_bytes:
                raise P.APIError(413, f"the request body is over {limits.max_body_bytes} bytes", code="body_too_large")
        return bytes(body)

    def check_model(name: str) -> None:
        if name != model_name:
            raise P.APIError(404, f"the model '{name}' does not exist; this server serves '{model_name}'",
                             param="model", code="model_not_found")

    def max_new(prompt_len: int, limit: int | None) -> int:
        if prompt_len > limits.max_prompt_tokens:
            raise P.APIError(400, f"the prompt has {prompt_len} tokens, over this server's limit of "
                                  f"{limits.max_prompt_tokens}; shorten it", param="messages",
                             code="context_length_exceeded")
        if limit is not None and limit > limits.max_completion_tokens:
            raise P.APIError(400, f"max_tokens={limit} is over this server's limit of {limits.max_completion_tokens}",
                             param="max_tokens")
        ctx = engine.config.max_seq_len
        if limit is not None and prompt_len + limit > ctx:
            raise P.APIError(400, f"the prompt ({prompt_len} tokens) plus max_tokens ({limit}) is over the context "
                                  f"window of {ctx} tokens; shorten the prompt or ask for fewer tokens",
                             param="max_tokens", code="context_length_exceeded")
        return limit or limits.max_completion_tokens

    def submit(choices: list[_Choice], on_update) -> None:
        if scheduler.error is not None:
            raise P.APIError(503, "the model runner stopped after an internal error; restart the server",
                             type="server_error")
        loop = asyncio.get_running_loop()

        def sink_for(c: _Choice):
            def sink(u: Update) -> None:
                try:
                    loop.call_soon_threadsafe(on_update, c, u)
                except RuntimeError:  # the event loop is gone (shutdown)
                    pass
            return sink
        try:
            for c in choices:
                c.handle = scheduler.submit(c.row, sink_for(c))
                c.last = time.perf_counter()
                metrics.prompt_tokens.inc(len(c.row.prompt))
        except QueueFull as e:
            cancel(choices)
            raise P.APIError(429, str(e), type="rate_limit_error", code="queue_full") from e
        except UserError as e:
            cancel(choices)
            raise P.APIError(503, str(e), type="server_error") from e

    def cancel(choices: list[_Choice]) -> None:
        for c in choices:
            if c.handle is not None:
                c.handle.cancel()

    def updates(request: Request, choices: list[_Choice]) -> AsyncIterator[tuple[_Choice, Update]]:
        """Submit the choices now (so a full queue is a 429 before any response starts) and return their updates
        as they come, until all are finished; the rows are cancelled if the client leaves."""
        q: asyncio.Queue = asyncio.Queue()
        submit(choices, lambda c, u: q.put_nowait((c, u)))
        return _drain(request, choices, q)

    async def _drain(request: Request, choices: list[_Choice], q: asyncio.Queue):
        async def watch() -> None:  # the only receive() after the body: it returns when the client leaves
            while (await request.receive())["type"] != "http.disconnect":
                pass
            cancel(choices)
            q.put_nowait(None)
        watcher = asyncio.create_task(watch())
        try:
            while not all(c.done for c in choices):
                item = await q.get()
                if item is None:
                    return
                c, u = item
                now = time.perf_counter()
                if u.token_ids:
                    metrics.generated_tokens.inc(len(u.token_ids))
                    if c.tokens == 0:
                        metrics.ttft.observe(now - c.handle.submitted)
                    else:
                        metrics.itl.observe((now - c.last) / len(u.token_ids))
                    c.tokens += len(u.token_ids)
                c.last = now
                if u.finished:
                    c.done, c.reason = True, u.finish_reason
                    metrics.latency.observe(now - c.handle.submitted)
                    if u.finish_reason == "error":
                        raise P.APIError(500, "the model runner failed; see the server log", type="server_error")
                yield c, u
        finally:
            watcher.cancel()
            cancel(choices)

    def sse(obj) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    async def respond(request: Request, req, chunks: AsyncIterator[str], whole):
        path = request.url.path
        if not req.stream:
            metrics.requests.labels(path, "200").inc()
            return await whole()

        async def body():
            try:
                async for piece in chunks:
                    yield piece
            except P.APIError as e:  # headers are gone already: report in the stream
                yield sse(e.body())
            yield "data: [DONE]\n\n"
        metrics.requests.labels(path, "200").inc()
        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ------------------------------------------------------------------------------------ chat
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = P.parse(P.ChatRequest, await body_of(request))
        check_model(req.model)
        messages, tools, k = req.chat_messages(), req.chat_tools(), req.logprobs_k
        choices = []
        for i in range(req.n):
            try:
                params = req.sampling(limits.max_completion_tokens, k, i)
                row, router = prepare_chat(engine, messages, req.enable_thinking, req.thinking_budget, tools, params)
            except UserError as e:
                raise P.APIError(400, str(e), code="context_length_exceeded" if "context" in str(e) else None) from e
            row.max_new = min(row.max_new, max_new(len(row.prompt), req.limit))
            choices.append(_Choice(i, row, router))
        events = updates(request, choices)
        rid, tok = f"chatcmpl-{secrets.token_hex(12)}", engine.tokenizer
        head = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model_name}

        def chunk(c: _Choice, delta: dict, reason=None, logprobs=None) -> str:
            ch = {"index": c.index, "delta": delta, "finish_reason": reason}
            if k is not None:
                ch["logprobs"] = {"content": logprobs or []}
            return sse(dict(head, choices=[ch]))

        async def stream():
            filters = {c.index: P.ToolStream() for c in choices} if tools else {}
            for c in choices:
                yield chunk(c, {"role": "assistant", "content": ""})
            async for c, u in events:
                lps = P.chat_logprobs(tok, u.token_ids, u.logprobs, u.top) if k is not None else None
                delta = {}
                for kind, text in u.deltas:
                    key = "reasoning_content" if kind == "reasoning" else "content"
                    if key == "content" and tools:
                        text = filters[c.index].feed(text)
                    if text:
                        delta[key] = delta.get(key, "") + text
                if delta or lps:
                    yield chunk(c, delta, logprobs=lps)
                if u.finished:
                    reason, calls = c.reason, []
                    if tools:
                        rest, calls = filters[c.index].finish()
                        if rest:
                            yield chunk(c, {"content": rest})
                    if calls:
                        yield chunk(c, {"tool_calls": [dict(call, index=j) for j, call in enumerate(calls)]})
                        reason = "tool_calls"
                    yield chunk(c, {}, reason)
            if req.include_usage:
                yield sse(dict(head, choices=[], usage=P.usage(len(choices[0].row.prompt),
                                                               sum(len(c.row.tokens) for c in choices))))

        async def whole():
            async for _ in events:
                pass
            out = []
            for c in choices:
                res = chat_result(c.row, c.router, {})
                content, calls = P.tool_calls_out(c.row.channel("content").text.strip()) if tools else (res.content, [])
                msg = {"role": "assistant", "content": content, "reasoning_content": res.reasoning_content or None}
                if calls:
                    msg["tool_calls"] = calls
                ch = {"index": c.index, "message": msg, "finish_reason": "tool_calls" if calls else c.reason}
                if k is not None:
                    ch["logprobs"] = {"content": P.chat_logprobs(tok, res.token_ids, res.logprobs or [],
                                                                 res.top_logprobs or [[]] * len(res.token_ids))}
                out.append(ch)
            return JSONResponse({"id": rid, "object": "chat.completion", "created": head["created"],
                                 "model": model_name, "choices": out,
                                 "usage": P.usage(len(choices[0].row.prompt), sum(len(c.row.tokens) for c in choices))})

        return await respond(request, req, stream(), whole)

    # ------------------------------------------------------------------------------ completions
    @app.post("/v1/completions")
    async def completions(request: Request):
        req = P.parse(P.CompletionRequest, await body_of(request))
        check_model(req.model)
        choices = []
        for pi, prompt in enumerate(req.prompts()):
            for i in range(req.n):
                try:
                    [row] = engine.make_rows([prompt], req.sampling(limits.max_completion_tokens, req.logprobs, i))
                except UserError as e:
                    raise P.APIError(400, str(e), param="prompt",
                                     code="context_length_exceeded" if "context" in str(e) else None) from e
                row.max_new = min(row.max_new, max_new(len(row.prompt), req.max_tokens))
                choices.append(_Choice(pi * req.n + i, row))
        events = updates(request, choices)
        rid, tok = f"cmpl-{secrets.token_hex(12)}", engine.tokenizer
        head = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model_name}
        prompt_tokens = sum(len(c.row.prompt) for c in choices) // req.n

        def choice(c: _Choice, text: str, ids, lps, tops, offset: int, reason=None) -> dict:
            lp = P.completion_logprobs(tok, ids, lps, tops, offset) if req.logprobs is not None else None
            return {"index": c.index, "text": text, "logprobs": lp, "finish_reason": reason}

        async def stream():
            sent = {c.index: 0 for c in choices}
            async for c, u in events:
                text = "".join(t for _, t in u.deltas)
                if text or u.token_ids or u.finished:
                    yield sse(dict(head, choices=[choice(c, text, u.token_ids, u.logprobs, u.top, sent[c.index],
                                                         c.reason if u.finished else None)]))
                    sent[c.index] += len(text)
            if req.include_usage:
                yield sse(dict(head, choices=[], usage=P.usage(prompt_tokens, sum(len(c.row.tokens) for c in choices))))

        async def whole():
            async for _ in events:
                pass
            out = []
            for c in choices:
                r = c.row.result({})
                out.append(choice(c, r.text, r.token_ids, r.logprobs or [], r.top_logprobs or [[]] * len(r.token_ids),
                                  0, c.reason))
            return JSONResponse(dict(head, choices=out,
                                     usage=P.usage(prompt_tokens, sum(len(c.row.tokens) for c in choices))))

        return await respond(request, req, stream(), whole)

    # ------------------------------------------------------------------------------------ the rest
    @app.get("/v1/models")
    async def models(request: Request):
        await body_of(request)
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "gptqwen", "max_model_len": engine.config.max_seq_len}]}

    @app.get("/health")
    async def health():
        if scheduler.error is not None:
            return error(P.APIError(503, "the model runner stopped after an internal error", type="server_error"))
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus():
        body, kind = metrics.render()
        return responses.Response(body, media_type=kind)

    @app.get("/")
    async def page():
        return responses.HTMLResponse(PAGE.read_text(encoding="utf-8").replace("{{MODEL}}", html.escape(model_name)))

    return app
