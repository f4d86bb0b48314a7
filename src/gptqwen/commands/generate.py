"""`gptqwen generate`: one-shot generation from a prompt, streamed to stdout (or one JSON document).

    gptqwen generate --model SmolLM2-135M-Instruct.Q4_1.gguf --prompt "The capital of France is" \\
        --temperature 0 --max-new-tokens 20
    gptqwen generate --model model.gguf --chat --prompt "Give me three fruit names." --json
    gptqwen generate --model qwen3-dir --chat --thinking-budget 64 --prompt "What is 17*23?"

    gptqwen generate --model runs/tools/sft --tools calculator --prompt "What is 4821 * 37?" --json

Several `--prompt`s run as one batch. `--chat` wraps each prompt as a user turn with the model's chat
template (then `--json` also reports reasoning_content / content / tool_calls / thinking_tokens).
`--tools` (implies --chat) runs the tool loop for each prompt; --json then reports the answer, the new
messages (assistant turns with tool_calls, tool results), every tool call with its result, and the steps.
"""

from __future__ import annotations

import argparse
import sys

from gptqwen.commands.chat import add_tool_arguments, show_tool_events, tool_use_from_args
from gptqwen.commands.engine_options import (
    add_model_arguments,
    add_sampling_arguments,
    engine_from_args,
    sampling_from_args,
)
from gptqwen.errors import UserError
from gptqwen.utils import print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", action="append", required=True,
                   help="prompt text ('-' reads stdin); repeat for a batch")
    p.add_argument("--chat", action="store_true", help="apply the chat template (prompt = one user message)")
    p.add_argument("--system", default=None, help="system message (with --chat)")
    p.add_argument("--no-think", action="store_true", help="disable thinking (with --chat)")
    p.add_argument("--thinking-budget", type=int, default=None, help="cap thinking at N tokens (with --chat)")
    p.add_argument("--logprobs", type=int, default=None, help="report log-probs (and N alternatives) per token")
    p.add_argument("--json", action="store_true", help="print one JSON document: text, tokens, timings")
    add_tool_arguments(p)
    add_model_arguments(p)
    add_sampling_arguments(p)


def _result_json(r, tok) -> dict:
    d = {"text": r.text, "tokens": r.token_ids, "finish_reason": r.finish_reason, "prompt_tokens": r.prompt_tokens,
         "timings": r.timings}
    if r.logprobs is not None:
        d["logprobs"] = r.logprobs
        d["token_strings"] = [tok.decode([t]) for t in r.token_ids]
    if r.top_logprobs is not None:
        d["top_logprobs"] = [[{"token": tok.decode([i]), "id": i, "logprob": lp} for i, lp in top]
                             for top in r.top_logprobs]
    for k in ("reasoning_content", "content", "tool_calls", "thinking_tokens"):
        if hasattr(r, k):
            d[k] = getattr(r, k)
    return d


def _messages(args: argparse.Namespace, prompt: str) -> list[dict]:
    return [{"role": "system", "content": args.system}] * bool(args.system) + [{"role": "user", "content": prompt}]


def _run_tools(args: argparse.Namespace, prompts: list[str], params) -> int:
    from rich.console import Console

    tool_use_from_args(args).close()  # a bad --tools fails before the model loads
    engine, docs = engine_from_args(args), []
    for prompt in prompts:
        with tool_use_from_args(args) as tools:  # each prompt is its own conversation (a fresh python session)
            events = tools.stream(engine, _messages(args, prompt), enable_thinking=not args.no_think,
                                  thinking_budget=args.thinking_budget, params=params)  # fmt: skip
            if not args.json:
                show_tool_events(events, Console(highlight=False))
                continue
            r = next(ev.result for ev in events if ev.kind == "done")
            docs.append({"content": r.content, "reasoning_content": r.reasoning_content, "messages": r.messages,
                         "tool_calls": r.tool_calls, "errors": r.errors, "steps": r.steps,
                         "finish_reason": r.finish_reason})  # fmt: skip
    if args.json:
        print_json(docs[0] if len(docs) == 1 else {"results": docs})
    return 0


def run(args: argparse.Namespace) -> int:
    prompts = [sys.stdin.read() if p == "-" else p for p in args.prompt]
    if args.thinking_budget is not None and not args.chat:
        raise UserError("--thinking-budget needs --chat (thinking is part of the chat format)")
    params = sampling_from_args(args, logprobs=args.logprobs)
    if args.tools is not None or args.agent == "tir":
        return _run_tools(args, prompts, params)
    engine = engine_from_args(args)
    if args.chat:
        results = []
        for prompt in prompts:
            messages = _messages(args, prompt)
            kw = dict(enable_thinking=not args.no_think, thinking_budget=args.thinking_budget, params=params)
            if args.json or len(prompts) > 1:
                results.append(engine.chat(messages, **kw))
                continue
            for d in engine.stream_chat(messages, **kw):
                if d.kind == "done":
                    results.append(d.result)
                else:  # reasoning goes to stderr so stdout holds just the answer
                    print(d.text, end="", flush=True, file=sys.stderr if d.kind == "reasoning" else sys.stdout)
            print()
    elif args.json or len(prompts) > 1:
        results = engine.generate(prompts, params)
    else:
        for piece in engine.stream(prompts[0], params):
            print(piece, end="", flush=True)
        print()
        return 0
    if args.json:
        docs = [_result_json(r, engine.tokenizer) for r in results]
        print_json(docs[0] if len(docs) == 1 else {"results": docs})
    elif len(prompts) > 1:
        for i, r in enumerate(results):
            print(f"--- [{i}] {r.finish_reason}\n{r.content if args.chat else r.text}")
    return 0
