"""The OpenAI-compatible server through the official `openai` client, on a loopback port.

The model is a tiny Qwen3 with the real Qwen vocabulary and chat template. A *scripted* variant replaces the
logits with a chosen continuation (position by position after the prompt), so tool calls, reasoning and stop
strings come back exactly as a trained model would write them; without a script it samples its random logits
(seed tests). Errors are checked for status and OpenAI's error shape.
"""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from gptqwen.config import Config
from gptqwen.infer import STOP_THINKING, Engine
from gptqwen.infer.scheduler import Scheduler
from gptqwen.model import Transformer
from gptqwen.tokenizer import Tokenizer

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
from gptqwen.serve.app import Limits, create_app  # noqa: E402 - needs the serve extra checked above


class Scripted(Transformer):
    """A Transformer whose next token after the prompt is `script[k]` at step k (then <|im_end|>), when set;
    `delay` slows every forward down (to hold requests in the batch)."""

    script: list[int] | None = None
    delay = 0.0

    def forward(self, input_ids, *args, **kwargs):
        if self.delay:
            time.sleep(self.delay)
        cache = kwargs.get("cache")
        pos = kwargs["position_ids"]
        if cache is not None and cache.length == 0:  # a prefill: generation starts after its last position
            self.first = int(pos[0, -1])
        out = super().forward(input_ids, *args, **kwargs)
        if self.script is None:
            return out
        logits = torch.zeros_like(out.logits)
        for b in range(pos.shape[0]):
            k = int(pos[b, -1]) - self.first
            logits[b, -1, self.script[k] if 0 <= k < len(self.script) else self.end] = 30.0
        return SimpleNamespace(logits=logits)


def running_server(app):
    """Start `app` with uvicorn in a thread on a free loopback port; returns (server, base url)."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    server.thread = thread
    return server, f"http://127.0.0.1:{port}"


def stop_server(server, scheduler) -> None:
    server.should_exit = True
    server.thread.join(10)
    scheduler.close()


@pytest.fixture(scope="module")
def setup():
    tok = Tokenizer.from_preset("qwen")
    torch.manual_seed(0)
    model = Scripted(Config.from_name("qwen3-tiny", vocab_size=151936, n_layer=2, n_embd=64, max_seq_len=1024)).eval()
    model.end = tok.token_to_id("<|im_end|>")
    engine = Engine(model, tok, native=False)  # the script lives in the PyTorch forward
    sched = Scheduler(engine, max_seqs=4, max_queue=2)
    app = create_app(engine, sched, "tiny", Limits(max_prompt_tokens=900, max_completion_tokens=512,
                                                   max_body_bytes=200_000))
    server, url = running_server(app)
    yield SimpleNamespace(model=model, tok=tok, url=url, sched=sched,
                          client=openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0))
    stop_server(server, sched)


@pytest.fixture
def s(setup):
    setup.model.script, setup.model.delay = None, 0.0
    yield setup
    setup.model.script, setup.model.delay = None, 0.0


def script(s, text: str) -> None:
    s.model.script = s.tok.encode(text, allow_special=True)


USER = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


def test_chat_and_stream(s):
    script(s, "Hello there, friend.")
    r = s.client.chat.completions.create(model="tiny", messages=USER, temperature=0)
    assert r.choices[0].message.content == "Hello there, friend." and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == len(s.model.script) + 1  # the text and <|im_end|>
    assert r.usage.prompt_tokens == len(s.tok.apply_chat_template(USER, tokenize=True))
    chunks = list(s.client.chat.completions.create(model="tiny", messages=USER, stream=True,
                                                   stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello there, friend." and len([c for c in chunks if c.choices]) > 3
    assert chunks[-1].usage.total_tokens == r.usage.total_tokens and chunks[-2].choices[0].finish_reason == "stop"


def test_reasoning_content(s):
    script(s, "<think>\nLet me look outside.\n</think>\n\nIt is sunny.")
    r = s.client.chat.completions.create(model="tiny", messages=USER)
    msg = r.choices[0].message
    assert msg.reasoning_content == "Let me look outside." and msg.content == "It is sunny."
    chunks = list(s.client.chat.completions.create(model="tiny", messages=USER, stream=True))
    deltas = [c.choices[0].delta for c in chunks]
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    assert reasoning.strip() == "Let me look outside." and "".join(d.content or "" for d in deltas).strip() == "It is sunny."
    first_content = next(i for i, d in enumerate(deltas) if d.content)
    assert all(not getattr(d, "reasoning_content", None) for d in deltas[first_content:])


def test_thinking_budget_and_switch(s):
    script(s, "<think>\n" + "hmm " * 40 + "\n</think>\n\nDone.")
    r = s.client.chat.completions.create(model="tiny", messages=USER, max_tokens=200,
                                         extra_body={"thinking_budget": 5})
    reasoning = r.choices[0].message.reasoning_content
    # 5 model-written tokens after <think>, then the stop-thinking text; the answer follows
    assert reasoning == (s.tok.decode(s.model.script[1:6]) + STOP_THINKING.split("</think>")[0]).strip()
    off = s.client.chat.completions.create(model="tiny", messages=USER, max_tokens=5,
                                           extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    prompt = s.tok.apply_chat_template(USER, enable_thinking=False)
    assert off.usage.prompt_tokens == len(s.tok.encode(prompt, allow_special=True))


def test_tool_calls(s):
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    script(s, "Let me check. " + call)
    r = s.client.chat.completions.create(model="tiny", messages=USER, tools=TOOLS, tool_choice="auto")
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls" and ch.message.content == "Let me check."
    [tc] = ch.message.tool_calls
    assert tc.type == "function" and tc.id.startswith("call_") and tc.function.name == "get_weather"
    assert json.loads(tc.function.arguments) == {"city": "Paris"}
    chunks = list(s.client.chat.completions.create(model="tiny", messages=USER, tools=TOOLS, stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert "<tool_call>" not in content and content.strip() == "Let me check."
    [delta] = [c.choices[0].delta.tool_calls for c in chunks if c.choices[0].delta.tool_calls]
    assert delta[0].function.name == "get_weather" and json.loads(delta[0].function.arguments) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # the next turn: the assistant's call and the tool's answer go back into the prompt
    script(s, "It is sunny in Paris.")
    follow = USER + [{"role": "assistant", "content": None, "tool_calls": [tc.model_dump()]},
                     {"role": "tool", "tool_call_id": tc.id, "content": '{"sky": "sunny"}'}]
    r2 = s.client.chat.completions.create(model="tiny", messages=follow, tools=TOOLS)
    assert r2.choices[0].message.content == "It is sunny in Paris." and r2.choices[0].message.tool_calls is None
    assert r2.usage.prompt_tokens > r.usage.prompt_tokens
    none = s.client.chat.completions.create(model="tiny", messages=USER, tools=TOOLS, tool_choice="none")
    assert none.usage.prompt_tokens < r.usage.prompt_tokens  # tools left out of the prompt


def test_stop_strings_and_length(s):
    script(s, "one two three four five")
    r = s.client.chat.completions.create(model="tiny", messages=USER, stop=[" three"])
    assert r.choices[0].message.content == "one two" and r.choices[0].finish_reason == "stop"
    chunks = list(s.client.chat.completions.create(model="tiny", messages=USER, stop=" three", stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "one two"
    r = s.client.chat.completions.create(model="tiny", messages=USER, max_completion_tokens=2)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 2


def test_seed_reproducible_and_n(s):
    ask = dict(model="tiny", messages=USER, temperature=1.0, max_tokens=12, seed=7)
    a = s.client.chat.completions.create(**ask).choices[0].message.content
    b = s.client.chat.completions.create(**ask).choices[0].message.content
    c = s.client.chat.completions.create(**dict(ask, seed=8)).choices[0].message.content
    assert a == b and a != c
    r = s.client.chat.completions.create(**dict(ask, n=2))
    assert [ch.index for ch in r.choices] == [0, 1] and r.choices[0].message.content == a
    chunks = list(s.client.chat.completions.create(**dict(ask, n=2), stream=True))
    texts = ["".join(c.choices[0].delta.content or "" for c in chunks if c.choices[0].index == i) for i in (0, 1)]
    assert [t.strip() for t in texts] == [ch.message.content for ch in r.choices]


def test_logprobs(s):
    r = s.client.chat.completions.create(model="tiny", messages=USER, max_tokens=4, temperature=0, logprobs=True,
                                         top_logprobs=3)
    lp = r.choices[0].logprobs.content
    assert len(lp) == 4 and all(len(e.top_logprobs) == 3 and e.logprob <= 0 for e in lp)
    assert lp[0].logprob == pytest.approx(lp[0].top_logprobs[0].logprob)  # greedy picks the most likely
    c = s.client.completions.create(model="tiny", prompt="Hello", max_tokens=3, temperature=0, logprobs=2)
    assert len(c.choices[0].logprobs.tokens) == 3 and len(c.choices[0].logprobs.top_logprobs[0]) == 2


def test_completions(s):
    script(s, " world and more")
    ids = s.tok.encode("Hello")
    r = s.client.completions.create(model="tiny", prompt=["Hello", ids], max_tokens=2)
    assert [c.text for c in r.choices] == [" world and", " world and"] and r.usage.prompt_tokens == 2 * len(ids)
    chunks = list(s.client.completions.create(model="tiny", prompt="Hello", max_tokens=2, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == " world and" and chunks[-1].choices[0].finish_reason == "length"


def _error(resp, status: int) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["message"]
    return body["error"]


def test_errors(s):
    url = s.url + "/v1/chat/completions"
    ok = {"model": "tiny", "messages": USER, "max_tokens": 2}
    _error(httpx.post(url, content=b"{not json"), 400)
    _error(httpx.post(url, json=[1, 2]), 400)
    assert _error(httpx.post(url, json=dict(ok, model="gpt-9")), 404)["code"] == "model_not_found"
    assert _error(httpx.post(url, json=dict(ok, temperature=3)), 400)["param"] == "temperature"
    for bad in ({"top_p": 0}, {"n": 0}, {"max_tokens": 0}, {"messages": []}, {"logprobs": False, "top_logprobs": 2},
                {"messages": [{"role": "wizard", "content": "x"}]}, {"stop": ["a", "b", "c", "d", "e"]},
                {"max_tokens": 100_000}, {"thinking_budget": 0}, {"tool_choice": "sometimes"}, {"tools": [{"function": 5}]},
                {"messages": [{"role": "assistant", "content": "", "tool_calls": [5]}]}, {"seed": "x"}):
        _error(httpx.post(url, json=dict(ok, **bad)), 400)
    long = [{"role": "user", "content": "word " * 950}]
    assert _error(httpx.post(url, json=dict(ok, messages=long)), 400)["code"] == "context_length_exceeded"
    _error(httpx.post(url, content=b"x" * 300_000), 413)
    _error(httpx.get(s.url + "/v1/nothing"), 404)
    _error(httpx.get(url), 405)
    with pytest.raises(openai.BadRequestError):
        s.client.completions.create(model="tiny", prompt="", max_tokens=2)
    assert httpx.get(s.url + "/health").json() == {"status": "ok"}
    assert httpx.post(url, json=ok).status_code == 200  # still up


def test_queue_full_is_429(s):
    """4 running + 2 waiting fill this server; the next request is refused with 429."""
    s.model.delay = 0.02  # 400 steps would take 8 s: the requests stay in the batch until their clients leave
    body = {"model": "tiny", "messages": USER, "max_tokens": 400, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=s.url, timeout=30) as c:
        streams = [c.stream("POST", "/v1/chat/completions", json=body) for _ in range(6)]
        responses = [st.__enter__() for st in streams]
        try:
            for r in responses[:4]:
                next(r.iter_lines())
            deadline = time.time() + 10
            while s.sched.stats().waiting < 2:
                assert time.time() < deadline
                time.sleep(0.01)
            err = _error(c.post("/v1/chat/completions", json=dict(body, stream=False)), 429)
            assert err["type"] == "rate_limit_error"
            _error(c.post("/v1/completions", json={"model": "tiny", "prompt": "x", "stream": True}), 429)
        finally:
            for st in streams:
                st.__exit__(None, None, None)
    deadline = time.time() + 10
    while s.sched.stats().running or s.sched.stats().waiting:  # the disconnected streams left the batch
        assert time.time() < deadline
        time.sleep(0.01)


def test_models_health_metrics(s):
    assert [m.id for m in s.client.models.list()] == ["tiny"]
    s.client.chat.completions.create(model="tiny", messages=USER, max_tokens=2)
    text = httpx.get(s.url + "/metrics").text
    for name in ("gptqwen_requests_total", "gptqwen_generated_tokens_total", "gptqwen_scheduler_waiting",
                 "gptqwen_scheduler_running", "gptqwen_time_to_first_token_seconds_bucket",
                 "gptqwen_inter_token_latency_seconds_bucket", "gptqwen_request_latency_seconds_count"):
        assert name in text
    assert "tiny" in httpx.get(s.url + "/").text


def test_api_key():
    tok = Tokenizer.from_preset("qwen")
    model = Transformer(Config.from_name("qwen3-tiny", vocab_size=151936, n_layer=1, n_embd=32)).eval()
    engine = Engine(model, tok)
    sched = Scheduler(engine, max_seqs=2)
    server, url = running_server(create_app(engine, sched, "tiny", Limits(200, 50), api_key="sesame"))
    try:
        assert _error(httpx.get(url + "/v1/models"), 401)["type"] == "authentication_error"
        _error(httpx.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
        good = openai.OpenAI(base_url=url + "/v1", api_key="sesame", max_retries=0)
        assert good.chat.completions.create(model="tiny", messages=USER, max_tokens=2).usage.completion_tokens == 2
        assert httpx.get(url + "/health").status_code == 200  # probes need no key
    finally:
        stop_server(server, sched)


class Broken(Transformer):
    def forward(self, *args, **kwargs):
        raise RuntimeError("simulated failure inside the model")


def test_runner_failure_is_500_then_503():
    tok = Tokenizer.from_preset("qwen")
    engine = Engine(Broken(Config.from_name("qwen3-tiny", vocab_size=151936, n_layer=1, n_embd=32)).eval(), tok)
    sched = Scheduler(engine)
    server, url = running_server(create_app(engine, sched, "tiny", Limits(200, 50)))
    try:
        body = {"model": "tiny", "messages": USER, "max_tokens": 2}
        assert _error(httpx.post(url + "/v1/chat/completions", json=body), 500)["type"] == "server_error"
        _error(httpx.post(url + "/v1/chat/completions", json=body), 503)
        _error(httpx.get(url + "/health"), 503)
    finally:
        stop_server(server, sched)
