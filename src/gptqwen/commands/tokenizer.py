"""`gptqwen tokenizer`: train, inspect and compare byte-level BPE tokenizers.

    gptqwen tokenizer train --vocab-size 4096 --style qwen --out runs/tok corpus/*.txt
    gptqwen tokenizer encode --tokenizer qwen "Hello 世界"
    gptqwen tokenizer decode --tokenizer qwen 9707 220 99489
    gptqwen tokenizer stats --tokenizer qwen --tokenizer cl100k notes.md --json

`--tokenizer` takes a preset (qwen, qwen2.5, qwen3, cl100k), a tokenizer.json / .tiktoken file, a
directory holding tokenizer.json, or `encoder.json,vocab.bpe` (GPT-2's files).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from gptqwen.errors import UserError
from gptqwen.tokenizer import Tokenizer, train_tokenizer
from gptqwen.tokenizer.stats import compression_stats
from gptqwen.utils import atomic_dir, print_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = sub.add_parser("train", help="train a byte-level BPE vocabulary on text files")
    p.add_argument("files", nargs="+", type=Path, help="UTF-8 text files")
    p.add_argument("--vocab-size", type=int, required=True, help="ids in all, control tokens included")
    p.add_argument("--style", choices=["qwen", "gpt2"], default="qwen",
                   help="split regex and control tokens of this family (default: qwen)")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("tokenizer"), help="output directory (default: ./tokenizer)")
    p.add_argument("--min-frequency", type=int, default=2, help="ignore pairs seen fewer times (default: 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print a JSON summary")

    p = sub.add_parser("encode", help="text -> token ids")
    p.add_argument("text", nargs="?", help="text to encode (default: read stdin)")
    p.add_argument("--tokenizer", default="qwen")
    p.add_argument("--file", type=Path, help="encode this file's bytes instead")
    p.add_argument("--allow-special", action="store_true", help="turn control-token text into control tokens")
    p.add_argument("--json", action="store_true", help="print ids and token strings as JSON")

    p = sub.add_parser("decode", help="token ids -> text")
    p.add_argument("ids", nargs="*", help="token ids (default: read from stdin, spaces/commas/JSON list)")
    p.add_argument("--tokenizer", default="qwen")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("stats", help="compression of tokenizers on files: bytes per token, tokens per word")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--tokenizer", action="append", help="repeat to compare several (default: qwen and cl100k)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("info", help="vocabulary size, control tokens and chat format of a tokenizer")
    p.add_argument("--tokenizer", default="qwen")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    return {"train": _train, "encode": _encode, "decode": _decode, "stats": _stats, "info": _info}[args.action](args)


def _train(args) -> int:
    for f in args.files:
        if not f.is_file():
            raise UserError(f"training file '{f}' does not exist")
    t0 = time.perf_counter()
    tok = train_tokenizer(args.files, vocab_size=args.vocab_size, style=args.style,
                          show_progress=not args.quiet and not args.json, min_frequency=args.min_frequency)  # fmt: skip
    seconds = time.perf_counter() - t0
    with atomic_dir(args.out) as tmp:
        tok.save(tmp)
    if tok.vocab_size < args.vocab_size:
        print(f"note: the corpus supports only {tok.vocab_size} ids (asked for {args.vocab_size}): no pair "
              f"occurs --min-frequency {args.min_frequency} times any more", file=sys.stderr)  # fmt: skip
    summary = {"out": str(args.out), "vocab_size": tok.vocab_size, "style": args.style, "seconds": round(seconds, 2),
               "special_tokens": len(tok.special_tokens), "eos": tok.eos_token, "chat_template": tok.chat_template}
    if args.json:
        print_json(summary)
    else:
        print(f"trained {tok.vocab_size} ids ({len(tok.special_tokens)} control tokens, style {args.style}) "
              f"in {seconds:.1f}s -> {args.out}/tokenizer.json")  # fmt: skip
    return 0


def _encode(args) -> int:
    tok = Tokenizer.load(args.tokenizer)
    if args.file is not None:
        if not args.file.is_file():
            raise UserError(f"file '{args.file}' does not exist")
        ids = tok.encode_bytes(args.file.read_bytes(), allow_special=args.allow_special)
    else:
        text = args.text if args.text is not None else sys.stdin.read()
        ids = tok.encode(text, allow_special=args.allow_special)
    if args.json:
        pieces = [tok.token_bytes(i).decode("utf-8", errors="backslashreplace") for i in ids]
        print_json({"ids": ids, "tokens": [tok.id_to_token(i) for i in ids], "pieces": pieces})
    else:
        print(" ".join(map(str, ids)))
    return 0


def _decode(args) -> int:
    raw = " ".join(args.ids) if args.ids else sys.stdin.read()
    try:
        ids = [int(x) for x in raw.replace(",", " ").replace("[", " ").replace("]", " ").split()]
    except ValueError:
        raise UserError("token ids must be integers, separated by spaces or commas") from None
    tok = Tokenizer.load(args.tokenizer)
    try:
        text = tok.decode(ids)
    except ValueError as e:
        raise UserError(f"{e}; check that the ids come from tokenizer '{args.tokenizer}'") from None
    if args.json:
        print_json({"text": text, "tokens": [tok.id_to_token(i) for i in ids]})
    else:
        sys.stdout.write(text + ("" if text.endswith("\n") else "\n"))
    return 0


def _stats(args) -> int:
    for f in args.files:
        if not f.is_file():
            raise UserError(f"file '{f}' does not exist")
    names = args.tokenizer or ["qwen", "cl100k"]
    toks = {name: Tokenizer.load(name) for name in names}
    rows = []
    for f in args.files:
        data = f.read_bytes()
        for name, tok in toks.items():
            rows.append({"file": str(f), "tokenizer": name, **compression_stats(tok, data)})
    if args.json:
        print_json(rows)
        return 0
    header = ("file", "tokenizer", "bytes", "tokens", "bytes/token", "chars/token", "tokens/word")
    table = [header] + [
        (r["file"], r["tokenizer"], str(r["bytes"]), str(r["tokens"]), _fmt(r["bytes_per_token"]),
         _fmt(r["chars_per_token"]), _fmt(r["tokens_per_word"]))
        for r in rows
    ]  # fmt: skip
    widths = [max(len(row[k]) for row in table) for k in range(len(header))]
    for row in table:
        print("  ".join(c.ljust(w) if k < 2 else c.rjust(w) for k, (c, w) in enumerate(zip(row, widths))))
    return 0


def _info(args) -> int:
    tok = Tokenizer.load(args.tokenizer)
    info = {"name": tok.name, "vocab_size": tok.vocab_size, "eos": tok.eos_token, "eos_id": tok.eos_id,
            "bos": tok.bos_token, "pad": tok.pad_token, "pad_id": tok.pad_id,
            "chat_template": tok.chat_template if tok.chat_template in (None, "qwen3", "qwen2.5") else "jinja",
            "special_tokens": tok.special_tokens}  # fmt: skip
    if args.json:
        print_json(info)
    else:
        for k, v in info.items():
            print(f"{k:15} {json.dumps(v, ensure_ascii=False) if isinstance(v, dict) else v}")
    return 0


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"
