"""`gptqwen data`: token shards, and the corpus pipeline (dedup, filters, decontamination, mixing).

    gptqwen data run examples/pipeline.yaml [--executor dask] [--workers 4] [--json]
    gptqwen data dedup raw/*.jsonl -o dedup.jsonl.zst [--no-near] [--bands 14 --rows 8] [--engine numpy]
    gptqwen data filter raw.jsonl -o clean.jsonl --filters gopher_quality,c4 --set gopher_quality.min_doc_words=20
    gptqwen data decontam train.jsonl --eval evals/*.jsonl -o clean.jsonl [--method both]
    gptqwen data classify --train labelled.jsonl --model domains.npz      # train
    gptqwen data classify raw.jsonl --model domains.npz -o labelled.jsonl  # apply
    gptqwen data mix labelled.jsonl --weights code=0.3,web=0.7 -o mixed.jsonl
    gptqwen data prepare shakespeare --out data/shakespeare --train-tokenizer 4096   # token shards
    gptqwen data prepare corpus/ "more/*.jsonl" --tokenizer qwen --out data/mine --workers 4

Single-step commands run a one-step pipeline in `<output>.work/` (resumable) and write `-o`.
"""

from __future__ import annotations

import argparse
import os

import yaml

from gptqwen.data.filters import FILTERS
from gptqwen.data.io import read_documents
from gptqwen.data.mixing import HashedNgramClassifier
from gptqwen.data.pipeline import PipelineSpec, format_report, load_spec, run_pipeline
from gptqwen.data.prepare import prepare
from gptqwen.errors import UserError
from gptqwen.utils import print_json


def _common(p: argparse.ArgumentParser, inputs: bool = True) -> None:
    if inputs:
        p.add_argument("inputs", nargs="+", help="JSONL (.jsonl/.gz/.zst) or Parquet files, globs or directories")
        p.add_argument("-o", "--output", required=True, help="output file (.jsonl, .jsonl.gz, .jsonl.zst, .parquet)")
        p.add_argument("--work", help="work directory for shards and reports (default: <output>.work)")
        p.add_argument("--text-key", default="text", help="field holding the document text (default: text)")
        p.add_argument("--on-error", choices=["skip", "fail"], default="skip", help="bad input records: skip (default) or fail")
        p.add_argument("--shard-docs", type=int, default=10000, help="documents per shard (default: 10000)")
    p.add_argument("--workers", type=int, help="processes (0 = all cores)")
    p.add_argument("--executor", choices=["local", "dask"], help="run shard tasks locally or on Dask")
    p.add_argument("--dask-address", help="scheduler address for --executor dask (default: start a LocalCluster)")
    p.add_argument("--json", action="store_true", help="print the run report as JSON")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("run", help="run a YAML-described pipeline (resumable)")
    p.add_argument("pipeline", help="pipeline YAML file (see examples/pipeline.yaml)")
    _common(p, inputs=False)

    p = sub.add_parser("dedup", help="exact and MinHash-LSH near-duplicate removal")
    _common(p)
    p.add_argument("--no-exact", action="store_true", help="skip exact (normalised text) dedup")
    p.add_argument("--no-near", action="store_true", help="skip MinHash near-dedup")
    p.add_argument("--bands", type=int, default=14)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--ngram", type=int, default=5)
    p.add_argument("--engine", choices=["auto", "rensa", "numpy"], default="auto",
                   help="MinHash signatures: rensa (Rust, when installed), numpy (built in); auto picks rensa if present")

    p = sub.add_parser("filter", help="quality filters, language filter, PII masking")
    _common(p)
    p.add_argument("--filters", default="gopher_quality,gopher_repetition,c4,fineweb",
                   help=f"comma-separated, applied in order; from: {', '.join(FILTERS)}")
    p.add_argument("--set", action="append", default=[], metavar="FILTER.KEY=VALUE",
                   help="override a threshold, e.g. gopher_quality.min_doc_words=20 (value parsed as YAML)")

    p = sub.add_parser("decontam", help="remove eval-set overlap (GPT-3 13-gram / Qwen2.5 LCS); report dirty eval items")
    _common(p)
    p.add_argument("--eval", nargs="+", required=True, help="evaluation JSONL files")
    p.add_argument("--eval-keys", help="comma-separated fields forming an eval item's text (default: all string fields)")
    p.add_argument("--method", choices=["ngram", "lcs", "both"], default="ngram")

    p = sub.add_parser("classify", help="train a domain classifier, or label documents with one")
    p.add_argument("inputs", nargs="*", help="documents to label (omit with --train)")
    p.add_argument("-o", "--output", help="labelled output file")
    p.add_argument("--model", help="classifier file (.npz) to write with --train or to apply")
    p.add_argument("--rules", help="YAML/JSON file mapping domain -> list of regexes (instead of --model)")
    p.add_argument("--train", help="labelled JSONL to train on ({text, label})")
    p.add_argument("--label-key", default="label")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--text-key", default="text")
    p.add_argument("--on-error", choices=["skip", "fail"], default="skip")
    p.add_argument("--work")
    p.add_argument("--shard-docs", type=int, default=10000)
    _common(p, inputs=False)

    p = sub.add_parser("mix", help="up/down-sample labelled documents to target domain weights")
    _common(p)
    p.add_argument("--weights", required=True, help="domain=weight,... (normalised to sum 1)")
    p.add_argument("--total", type=int, help="documents in the mixture (default: as many as in the input)")
    p.add_argument("--key", default="domain", help="field holding the domain (default: domain)")
    p.add_argument("--seed", type=int, default=0)

    _add_prepare(sub)


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="tokenise text sources into token shards (index.json + <split>_<n>.bin)")
    p.add_argument("sources", nargs="+", help="files, folders, globs, 'shakespeare' or "
                   "'synthetic:arithmetic|repeats|wordlists[:N]'; append @WEIGHT to up/down-sample")
    p.add_argument("--out", required=True, help="dataset folder to create (index.json + <split>_<n>.bin)")
    tok = p.add_mutually_exclusive_group(required=True)
    tok.add_argument("--tokenizer", help="tokenizer preset (qwen, gpt2, ...), tokenizer.json/.tiktoken file or folder")
    tok.add_argument("--train-tokenizer", type=int, metavar="VOCAB", help="train a byte-level BPE of this size on the sources")
    p.add_argument("--style", default="qwen", help="pre-tokenizer style of a trained BPE (default: qwen)")
    p.add_argument("--val-fraction", type=float, default=0.05, help="share of tokens held out for validation (default 0.05)")
    p.add_argument("--block-tokens", type=int, default=1024, help="granularity of the train/validation split (default 1024)")
    p.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard file (default 1e8)")
    p.add_argument("--workers", type=int, default=max(1, min(8, (os.cpu_count() or 2) - 1)), help="tokenizer processes")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="unreadable or non-UTF-8 files: stop, or skip with a warning")
    p.add_argument("--text-key", default="text", help="JSONL field holding the document text (default: text)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    p.add_argument("--json", action="store_true", help="print the dataset index as JSON")


def _prepare(args: argparse.Namespace) -> int:
    index = prepare(
        args.sources, args.out, tokenizer=args.tokenizer, train_vocab=args.train_tokenizer, style=args.style,
        val_fraction=args.val_fraction, block_tokens=args.block_tokens, shard_tokens=args.shard_tokens,
        workers=args.workers, on_error=args.on_error, text_key=args.text_key, overwrite=args.overwrite,
        progress=not args.json,
    )
    if args.json:
        print_json(index)
        return 0
    meta = index["meta"]
    print(f"wrote {args.out}: {meta['documents']:,} documents, {meta['bytes'] / 1e6:.1f} MB -> "
          f"train {meta['tokens']['train']:,} / val {meta['tokens']['val']:,} tokens ({index['dtype']}, "
          f"vocab {index['vocab_size']:,}, {index['bytes_per_token']:.2f} bytes/token)")
    return 0


def _parse_set(items: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for item in items:
        key, sep, value = item.partition("=")
        name, dot, setting = key.partition(".")
        if not sep or not dot:
            raise UserError(f"--set takes FILTER.KEY=VALUE, got '{item}'")
        out.setdefault(name, {})[setting] = yaml.safe_load(value)
    return out


def _parse_weights(text: str) -> dict[str, float]:
    weights = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise UserError(f"--weights takes domain=weight,..., got '{part}'") from None
        if not sep:
            raise UserError(f"--weights takes domain=weight,..., got '{part}'")
    return weights


def _steps(args) -> list:
    if args.command == "dedup":
        steps = [] if args.no_exact else ["exact_dedup"]
        if not args.no_near:
            steps.append({"minhash_dedup": {"bands": args.bands, "rows": args.rows, "ngram": args.ngram,
                                            "engine": args.engine}})
        if not steps:
            raise UserError("--no-exact and --no-near leave nothing to do")
        return steps
    if args.command == "filter":
        sets = _parse_set(args.set)
        names = [n.strip() for n in args.filters.split(",") if n.strip()]
        for name in set(sets) - set(names):
            raise UserError(f"--set names filter '{name}', which is not in --filters {args.filters}")
        return [{n: sets.get(n)} for n in names]
    if args.command == "decontam":
        keys = args.eval_keys.split(",") if args.eval_keys else None
        return [{"decontaminate": {"eval": args.eval, "eval_keys": keys, "method": args.method}}]
    if args.command == "classify":
        if args.rules:
            try:
                with open(args.rules) as f:
                    return [{"classify": {"rules": yaml.safe_load(f)}}]
            except OSError as e:
                raise UserError(f"cannot read rules file '{args.rules}': {e}") from e
        return [{"classify": {"model": args.model}}]
    return [{"mix": {"weights": _parse_weights(args.weights), "total": args.total, "key": args.key, "seed": args.seed}}]


def _train(args) -> int:
    if not args.model:
        raise UserError("--train needs --model PATH.npz to write the classifier to")
    docs = list(read_documents(args.train, args.text_key, args.on_error))
    missing = [i for i, d in enumerate(docs) if args.label_key not in d]
    if missing:
        raise UserError(f"{len(missing)} training records lack the '{args.label_key}' field "
                        f"(first: record {missing[0] + 1}); set --label-key")
    texts, labels = [d[args.text_key] for d in docs], [str(d[args.label_key]) for d in docs]
    clf = HashedNgramClassifier.train(texts, labels, epochs=args.epochs)
    pred, _ = clf.predict(texts)
    acc = sum(p == y for p, y in zip(pred, labels)) / len(labels)
    clf.save(args.model)
    result = {"model": args.model, "labels": clf.labels, "examples": len(labels), "train_accuracy": round(acc, 4)}
    if args.json:
        print_json(result)
    else:
        print(f"trained on {len(labels)} examples, labels {clf.labels}, train accuracy {acc:.3f} -> {args.model}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.command == "prepare":
        return _prepare(args)
    overrides = {"workers": args.workers, "executor": args.executor}
    if args.dask_address:
        overrides["dask"] = {"address": args.dask_address}
    if args.command == "run":
        spec = load_spec(args.pipeline, overrides)
    else:
        if args.command == "classify":
            if args.train:
                return _train(args)
            if not args.inputs or not args.output or not (args.model or args.rules):
                raise UserError("classify needs --train DATA --model OUT.npz, or INPUTS -o OUTPUT with --model or --rules")
        spec = PipelineSpec.from_dict({
            "input": args.inputs, "output": args.work or f"{args.output}.work", "output_file": args.output,
            "steps": _steps(args), "text_key": args.text_key, "on_error": args.on_error, "shard_docs": args.shard_docs,
            **{k: v for k, v in overrides.items() if v is not None},
        })
    summary = run_pipeline(spec, log=(lambda m: None) if args.json else None)
    if args.json:
        print_json(summary)
    else:
        print(format_report(summary))
    return 0

