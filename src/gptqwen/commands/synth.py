"""`gptqwen synth`: built-in synthetic fine-tuning data (no download, deterministic by seed) as JSONL on stdout.

    gptqwen synth reasoning --n 1000 --seed 0 > train.jsonl          # chat conversations for `gptqwen sft`
    gptqwen synth entailment --n 1000 --seed 0 > train.jsonl         # symbolic entailment for `gptqwen finetune`
    gptqwen synth typos --n 600 --seed 2 --split dev > dev.jsonl     # the transfer demo's task over play lines
    gptqwen synth tokenizer --out tok/                               # a small BPE for tiny models

Machine-made post-training data from a model (Qwen2; `gptqwen.align.synth`):

    gptqwen synth rejection --model sft/ --n 500 --k 8 --sft-out sft.jsonl --prefs-out prefs.jsonl
    gptqwen synth execution --model sft/ --prompts code.jsonl --k 4 --sft-out code_sft.jsonl
    gptqwen synth evolve --n 200 --out evolved.jsonl [--model sft/ --k 8]   # harder instructions, filtered

rejection: k samples per problem (built-in arithmetic problems, or --prompts rows with "answer"), graded by
the math verifier; execution: k programs per task (--prompts rows {"prompt", "entry_point"?, "tests"?}) run
in the sandbox against the row's tests or tests the model (or --test-model) writes, kept when they pass a
sanity filter (well-formed asserts that call the function, fail for a do-nothing stub, and pass for at least
one sampled program; gptqwen.align.exec_tests). Accepted answers -> SFT conversations, accepted x rejected ->
preference pairs for `gptqwen dpo` / `gptqwen reward train`.
The generators are in `gptqwen.finetune.synthetic`.
"""

from __future__ import annotations

import argparse
import json
import sys

from gptqwen.errors import UserError
from gptqwen.finetune import synthetic
from gptqwen.utils import print_json

MODEL_KINDS = ("rejection", "execution", "evolve")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("\n\n", 1)[1]
    p.add_argument("kind", choices=["reasoning", "entailment", "typos", "tokenizer", *MODEL_KINDS],
                   help="tokenizer: write a small Qwen-style tokenizer for this data to --out; rejection, execution, "
                        "evolve: data made and checked with a model")  # fmt: skip
    p.add_argument("--out", help="tokenizer: output directory; evolve: output JSONL")
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--think-ratio", type=float, default=0.5, help="reasoning: share of thinking examples")
    p.add_argument("--split", choices=["train", "dev", "test"], default="train",
                   help="typos: which disjoint pool of the plays' lines the premises come from "
                        "(train: half of them; dev, test: a quarter each)")  # fmt: skip
    p.add_argument("--flag-prob", type=float, default=0.5, help="reasoning: chance of a /think or /no_think flag")
    m = p.add_argument_group("rejection, execution, evolve")
    m.add_argument("--model", help="the model that samples (run dir, HF dir, .gguf or preset)")
    m.add_argument("--tokenizer", help="tokenizer.json or preset, when --model has none")
    m.add_argument("--prompts", help="prompt rows JSONL ({\"prompt\", \"answer\"} or {\"prompt\", \"tests\"}); "
                   "default: --n built-in arithmetic problems")
    m.add_argument("--kinds", default="arithmetic", help="built-in problem kinds (comma-separated)")
    m.add_argument("--k", type=int, default=8, help="samples per problem")
    m.add_argument("--max-new-tokens", type=int, default=128)
    m.add_argument("--temperature", type=float, default=1.0)
    m.add_argument("--no-thinking", action="store_true", help="render prompts in non-thinking mode")
    m.add_argument("--verifier", choices=["auto", "math", "math-verify", "steps"], default="auto",
                   help="rejection: math grades the final answer (math-verify: compared by the optional math-verify "
                        "package); steps also checks every step of an arithmetic chain (auto: math, or code for rows "
                        "with tests)")  # fmt: skip
    m.add_argument("--pairs-per-problem", type=int, default=2,
                   help="rejection/execution: preference pairs per problem at most")
    m.add_argument("--tests", choices=["auto", "generated", "given"], default="auto",
                   help="execution: the rows' own tests (given), tests the model writes (generated), or given where a "
                        "row has them and generated elsewhere (auto)")  # fmt: skip
    m.add_argument("--test-model", help="execution: the model that writes the tests (default: --model)")
    m.add_argument("--test-samples", type=int, default=4, help="execution: test-writing replies per task")
    m.add_argument("--min-tests", type=int, default=2,
                   help="execution: tasks with fewer model-written tests left after the sanity filter are skipped")
    m.add_argument("--sft-out", help="rejection/execution: accepted answers as SFT conversations (JSONL)")
    m.add_argument("--prefs-out", help="rejection/execution: accepted vs rejected answers as preference pairs (JSONL)")
    m.add_argument("--device", help="cpu, cuda, mps (default: best available)")
    m.add_argument("--json", action="store_true", help="print the statistics as JSON")


def run(args: argparse.Namespace) -> int:
    if args.kind == "tokenizer":
        if not args.out:
            raise UserError("gptqwen synth tokenizer needs --out DIR")
        print(synthetic.demo_tokenizer(args.vocab_size).save(args.out))
        return 0
    if args.n < 1:
        raise UserError(f"--n must be at least 1, got {args.n}")
    if args.kind in MODEL_KINDS:
        stats = _with_model(args)
        if args.json:
            print_json(stats)
        else:
            print(", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items()))
        return 0
    if args.kind == "reasoning":
        rows = synthetic.reasoning_conversations(args.n, args.seed, args.think_ratio, args.flag_prob)
    elif args.kind == "typos":
        rows = synthetic.typo_entailment_examples(args.n, args.seed, args.split)
    else:
        rows = synthetic.entailment_examples(args.n, args.seed)
    for row in rows:
        sys.stdout.write(json.dumps(row) + "\n")
    return 0


def _with_model(args: argparse.Namespace) -> dict:
    """rejection / execution / evolve (see the module docstring)."""
    from gptqwen.align import synth
    from gptqwen.align.grpo import load_prompt_rows
    from gptqwen.finetune.common import load_base
    from gptqwen.infer import SamplingParams

    if args.kind == "evolve" and not args.out:
        raise UserError("gptqwen synth evolve needs --out FILE.jsonl")
    if args.kind != "evolve" and not (args.sft_out or args.prefs_out):
        raise UserError(f"gptqwen synth {args.kind} needs --sft-out FILE and/or --prefs-out FILE")
    if args.kind == "execution" and not args.prompts:
        raise UserError("gptqwen synth execution needs --prompts rows: {\"prompt\": a task, \"entry_point\"?: the "
                        "function's name, \"tests\"?: Python asserts}")
    if args.k < 1:
        raise UserError(f"--k must be at least 1, got {args.k}")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if args.kind == "evolve" and not args.model:
        seeds = load_prompt_rows(synthetic.demo_tokenizer(), args.prompts, None if args.prompts else args.n, kinds, args.seed)
        evolved = synth.evolve([synth.public(r) for r in seeds], args.seed)
        synth.write_jsonl(args.out, evolved)
        return {"evolved": len(evolved), "out": args.out}
    if not args.model:
        raise UserError(f"gptqwen synth {args.kind} needs --model (the model that samples)")
    model, tok = load_base(args.model, args.tokenizer, args.device, args.seed)
    model.eval()
    rows = load_prompt_rows(tok, args.prompts, None if args.prompts else args.n, kinds, args.seed, not args.no_thinking)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    if args.kind == "evolve":
        kept, stats = synth.filter_evolved(model, tok, synth.evolve([synth.public(r) for r in rows], args.seed), args.k,
                                           params, not args.no_thinking)  # fmt: skip
        synth.write_jsonl(args.out, kept)
        return {**stats, "out": args.out}
    pairs = args.pairs_per_problem if args.prefs_out else 0
    if args.kind == "execution":
        from gptqwen.align.exec_tests import execution_feedback

        writer, writer_tok = load_base(args.test_model, None, args.device, args.seed) if args.test_model else (None, None)
        out = execution_feedback(model, tok, rows, args.k, params, args.tests, writer, writer_tok, args.test_samples,
                                 args.min_tests, pairs, not args.no_thinking, args.seed)  # fmt: skip
    else:
        out = synth.rejection_sample(model, tok, rows, args.k, params, args.verifier, pairs, seed=args.seed)
    if args.sft_out:
        synth.write_jsonl(args.sft_out, out["sft"])
    if args.prefs_out:
        synth.write_jsonl(args.prefs_out, out["prefs"])
    return out["stats"]
