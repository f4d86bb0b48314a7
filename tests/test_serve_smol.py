"""`gptqwen serve` as a user runs it (a subprocess on a loopback port) with SmolLM2-135M (GGUF, q8_0):
greedy text through the server equals `gptqwen generate`'s, and 200 clients that disconnect mid-stream leave
the server up with every slot free and its memory flat."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time

import pytest

from gptqwen.cli import main
from test_gguf import SMOL, needs_smol

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytestmark = [pytest.mark.slow, needs_smol]
PROMPT = "The three primary colours are"
QUESTION = "What is the capital of France?"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = _free_port()
    cmd = [sys.executable, "-m", "gptqwen", "serve", "--model", str(SMOL), "--quant", "q8_0", "--port", str(port),
           "--served-model-name", "smol", "--threads", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.time() < deadline, "the server did not come up"
        time.sleep(0.2)
    yield proc, url
    proc.terminate()
    proc.wait(30)


def _generate(capsys, *args: str) -> dict:
    assert main(["generate", "--model", str(SMOL), "--quant", "q8_0", "--temperature", "0", "--max-new-tokens", "24",
                 "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_greedy_equals_generate(server, capsys):
    _, url = server
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    ref = _generate(capsys, "--prompt", PROMPT)
    got = client.completions.create(model="smol", prompt=PROMPT, temperature=0, max_tokens=24)
    assert got.choices[0].text == ref["text"] and got.usage.completion_tokens == len(ref["tokens"])
    ref = _generate(capsys, "--chat", "--prompt", QUESTION)
    chat = client.chat.completions.create(model="smol", messages=[{"role": "user", "content": QUESTION}],
                                          temperature=0, max_tokens=24)
    assert chat.choices[0].message.content == ref["content"] and "Paris" in ref["content"]
    chunks = client.chat.completions.create(model="smol", messages=[{"role": "user", "content": QUESTION}],
                                            temperature=0, max_tokens=24, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks).strip() == ref["content"]


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


async def _storm(url: str, clients: int) -> int:
    """`clients` streams that each leave after their first generated text; returns how many saw text."""
    body = {"model": "smol", "prompt": "Once upon a time", "max_tokens": 200, "stream": True, "temperature": 1.0}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
        async def one() -> bool:
            async with c.stream("POST", "/v1/completions", json=body) as r:
                assert r.status_code == 200, await r.aread()
                async for line in r.aiter_lines():
                    if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                        return True  # leaving the block closes the connection mid-stream
            return False
        return sum(await asyncio.gather(*(one() for _ in range(clients))))


def _gauge(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics").text
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith(name + " ")))


def _idle(url: str) -> None:
    deadline = time.time() + 30
    while _gauge(url, "gptqwen_scheduler_running") or _gauge(url, "gptqwen_scheduler_waiting"):
        assert time.time() < deadline, "slots still held after the clients left"
        time.sleep(0.1)


def test_disconnect_storm_leaves_no_leak(server):
    proc, url = server
    assert asyncio.run(_storm(url, 200)) == 200
    _idle(url)
    before = _rss_mb(proc.pid)
    assert asyncio.run(_storm(url, 200)) == 200
    _idle(url)
    after = _rss_mb(proc.pid)
    assert after - before < 0.1 * before, f"RSS grew from {before:.0f} MB to {after:.0f} MB"
    r = httpx.post(url + "/v1/completions", json={"model": "smol", "prompt": "Hi", "max_tokens": 3})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3  # still serving
    print(f"RSS after the first storm {before:.0f} MB, after the second {after:.0f} MB")
