"""`gptqwen serve`: an OpenAI-compatible server with continuous batching and a web chat page.

    gptqwen serve --model SmolLM2-135M-Instruct.Q4_1.gguf --quant q8_0 --port 8000
    gptqwen serve --model runs/sft --max-seqs 16 --api-key secret

Then point any OpenAI client at http://127.0.0.1:8000/v1 (the model's name is the file or directory name,
or --served-model-name), or open http://127.0.0.1:8000/ in a browser. Needs the `serve` extra
(`pip install 'gptqwen[serve]'`). Binds to loopback unless --host says otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gptqwen.commands.engine_options import add_model_arguments, engine_from_args
from gptqwen.errors import UserError, require
from gptqwen.infer.scheduler import Scheduler
from gptqwen.serve.app import Limits, create_app


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for every interface)")
    g.add_argument("--port", type=int, default=8000)
    g.add_argument("--served-model-name", default=None, help="the model id clients send (default: the model's name)")
    g.add_argument("--api-key", default=None, help="require 'Authorization: Bearer <key>' on /v1 routes")
    g.add_argument("--max-seqs", type=int, default=64, help="most sequences decoded together in the running batch")
    g.add_argument("--max-queue", type=int, default=256, help="most requests waiting for a slot (then 429)")
    g.add_argument("--prefill-tokens", type=int, default=256,
                   help="most prompt tokens prefilled between two decode steps: new requests are prefilled in chunks "
                        "of this size so the running ones stall for one chunk at a time")
    g.add_argument("--max-prompt-tokens", type=int, default=None, help="longest prompt (default: the context - 1)")
    g.add_argument("--max-completion-tokens", type=int, default=None,
                   help="most tokens one completion may ask for, and the default (default: the context)")
    g.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (then 413)")


def run(args: argparse.Namespace) -> int:
    uvicorn = require("uvicorn", "serve", "gptqwen serve")
    for name in ("port", "max_seqs", "max_queue", "prefill_tokens", "max_body_bytes"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)} is invalid; give 1 or more")
    engine = engine_from_args(args)
    ctx = engine.config.max_seq_len
    limits = Limits(args.max_prompt_tokens or ctx - 1, args.max_completion_tokens or ctx, args.max_body_bytes)
    if not 1 <= limits.max_prompt_tokens < ctx or limits.max_completion_tokens < 1:
        raise UserError(f"--max-prompt-tokens must lie in [1, {ctx - 1}] and --max-completion-tokens be >= 1")
    name = args.served_model_name or Path(args.model.rstrip("/")).name
    scheduler = Scheduler(engine, max_seqs=args.max_seqs, max_queue=args.max_queue, prefill_tokens=args.prefill_tokens)
    app = create_app(engine, scheduler, name, limits, api_key=args.api_key)
    print(f"serving '{name}' on http://{args.host}:{args.port}/ (OpenAI API under /v1)", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2)
    finally:
        scheduler.close()
    return 0
