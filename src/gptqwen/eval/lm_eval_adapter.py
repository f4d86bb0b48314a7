"""lm-evaluation-harness adapter: this project's models as lm-eval model `gptqwen`.

lm-eval finds models only in its own registry (no entry points), so the model has to be registered
in the process that runs lm-eval. This module registers it when imported, and doubles as a launcher
that registers it and then runs lm-eval's own command line:

    python -m gptqwen.eval.lm_eval_adapter --model gptqwen --model_args path=runs/qwen3-shakespeare \\
        --tasks my_task --include_path my_tasks/ --num_fewshot 4 --batch_size 8

`model_args`: `path=` (or `pretrained=`) a run dir, checkpoint dir, HF dir, .gguf file or Hub id (a preset name
builds untrained weights, so it needs `random_weights=true`); optional `dtype=`, `max_length=`, `adapter=` (a PEFT
LoRA folder). From Python, pass an instance instead of a name:
`lm_eval.simple_evaluate(model=GptqwenLM(path=...), tasks=[...])`.

`evaluate_with_lm_eval(scorer, task, shots)` runs one of this project's tasks (`gptqwen.eval.taskspec`)
through lm-eval: lm-eval builds the prompts, draws the few-shot examples and computes the metrics,
while our task supplies the per-record text; it backs `gptqwen eval --backend lm-eval`.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections import defaultdict
from typing import Any

from gptqwen.errors import UserError, require

require("lm_eval", "eval", "the lm-evaluation-harness adapter")

import torch  # noqa: E402
from lm_eval.api.model import LM  # noqa: E402

from gptqwen.eval.harness import EvalResult  # noqa: E402
from gptqwen.eval.lm import ScoringModel  # noqa: E402
from gptqwen.eval.scorers import generation_scores  # noqa: E402


class GptqwenLM(LM):
    """lm-eval's three request kinds, answered by `ScoringModel` (one implementation of the scoring)."""

    def __init__(self, path: str | None = None, pretrained: str | None = None, batch_size: int | str = 8,
                 device: str | None = None, dtype: str | None = None, max_length: int | None = None,
                 scorer: ScoringModel | None = None, max_batch_size: int | None = None, progress: bool = False,
                 adapter: str | None = None, random_weights: bool | str = False):
        super().__init__()
        if scorer is None:
            spec = path or pretrained
            if not spec:
                raise UserError("model_args needs path=<run dir | checkpoint dir | HF dir | .gguf | Hub id>")
            if isinstance(batch_size, str) and not batch_size.isdigit():
                batch_size = 8  # lm-eval's "auto" batch search is not supported; use a fixed batch
            if device and str(device).startswith("cuda") and not torch.cuda.is_available():
                print(f"warning: device '{device}' is not available; using the CPU", file=sys.stderr)
                device = None  # lm-eval's CLI asks for cuda by default; like its hf model, fall back
            if isinstance(random_weights, str):  # lm-eval passes model_args values as text
                random_weights = random_weights.strip().lower() in ("1", "true", "yes")
            scorer = ScoringModel.load(str(spec), device=device, dtype=dtype, batch_size=int(batch_size),
                                       max_length=max_length, progress=progress, adapter=adapter,
                                       random_weights=bool(random_weights))
        self.scorer = scorer

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.scorer.tokenizer, "name", "gptqwen")

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [tuple(r.args) for r in requests]
        scores = self.scorer.loglikelihood(pairs)
        out = []
        for pair, s in zip(pairs, scores):
            self.cache_hook.add_partial("loglikelihood", pair, (s.logprob, s.is_greedy))
            out.append((s.logprob, s.is_greedy))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        texts = [r.args[0] for r in requests]
        totals = self.scorer.rolling_loglikelihood([self.scorer.encode(t) for t in texts])
        for text, total in zip(texts, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        # group requests that share their stop strings and length, then generate each group in batches
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, r in enumerate(requests):
            kwargs = dict(r.args[1] or {})
            if kwargs.get("do_sample") or float(kwargs.get("temperature", 0) or 0) > 0:
                raise UserError("the gptqwen lm-eval model generates greedily; set do_sample: false in the task")
            until = kwargs.get("until") or [self.scorer.tokenizer.decode([self.scorer.tokenizer.eos_id])]
            until = [until] if isinstance(until, str) else list(until)
            groups[(tuple(until), int(kwargs.get("max_gen_toks", 256)))].append(i)
        out: list[str] = [""] * len(requests)
        for (until, max_new), idx in groups.items():
            texts = self.scorer.generate_until([requests[i].args[0] for i in idx], until, max_new)
            for i, text in zip(idx, texts):
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out


_REGISTERED = "gptqwen"


def register() -> None:
    """Register `GptqwenLM` as lm-eval model `gptqwen` (idempotent)."""
    import lm_eval.models  # noqa: F401  (lm-eval's own names first: it skips them once its registry is non-empty)
    from lm_eval.api.registry import model_registry, register_model

    if _REGISTERED not in model_registry:
        register_model(_REGISTERED)(GptqwenLM)


# ---- our tasks through lm-eval -------------------------------------------------------------------
_OUTPUT_TYPES = {"multiple_choice": "multiple_choice", "cloze": "loglikelihood",
                 "generate_until": "generate_until", "perplexity": "loglikelihood_rolling"}
_LM_EVAL_METRICS = {  # our name -> lm-eval's name, where lm-eval computes the same quantity
    "acc": "acc", "acc_norm": "acc_norm", "perplexity": "perplexity", "word_perplexity": "word_perplexity",
    "byte_perplexity": "byte_perplexity", "bits_per_byte": "bits_per_byte",
}


def lm_eval_task_config(task) -> dict[str, Any]:
    """An lm-eval task config that renders records exactly as `task` does."""
    if task.token_source is not None:
        raise UserError(f"task '{task.name}' is built from the model's tokens and cannot run through lm-eval; "
                        "use --backend gptqwen")
    from datasets import Dataset

    # plain functions only: lm-eval deep-copies its configs, and functions (unlike bound methods) copy as-is
    def dataset(**_):
        return {split: Dataset.from_list(docs) for split, docs in task.splits.items()}

    description = task.description
    if description and not description[-1].isspace():
        description += task.fewshot_delimiter  # the harness's rule, made explicit for lm-eval
    cfg: dict[str, Any] = {
        "task": task.name, "output_type": _OUTPUT_TYPES[task.output_type], "custom_dataset": dataset,
        "test_split": task.test_split, "description": description,
        "target_delimiter": task.target_delimiter, "fewshot_delimiter": task.fewshot_delimiter,
        "fewshot_config": {"sampler": "first_n" if task.fewshot_sampler == "first_n" else "default"},
    }
    if task.fewshot_split:
        cfg["fewshot_split"] = task.fewshot_split
    if task.output_type == "multiple_choice":
        if task.uses_choice_in_context():  # lm-eval's "multiple inputs": text -> gold index, choices -> contexts
            cfg["doc_to_text"] = lambda d: task.target_index(d, task.choices(d))
            cfg["doc_to_choice"] = lambda d: [task.text(d, c) for c in task.choices(d)]
            cfg["doc_to_target"] = lambda d: task.continuation(d)
        else:
            cfg["doc_to_text"] = lambda d: task.text(d)
            cfg["doc_to_choice"] = lambda d: task.choices(d)
            cfg["doc_to_target"] = lambda d: task.target_index(d, task.choices(d))
    elif task.output_type == "perplexity":
        cfg["doc_to_text"] = lambda d: ""
        cfg["doc_to_target"] = lambda d: task.text(d)
    elif task.output_type == "cloze":  # lm-eval scores (context, target) as is: the delimiter joins the target
        cfg["doc_to_text"] = lambda d: task.text(d)
        cfg["doc_to_target"] = lambda d: task.target_delimiter + task.targets(d)[0]
        cfg["target_delimiter"] = ""
    else:
        cfg["doc_to_text"] = lambda d: task.text(d)
        cfg["doc_to_target"] = lambda d: task.targets(d)[0]
    if task.output_type == "generate_until":
        # lm-eval's exact_match/f1 are not SQuAD's: score generations with our scorers
        cfg["generation_kwargs"] = {"until": list(task.until), "max_gen_toks": task.max_new_tokens, "do_sample": False}
        cfg["process_results"] = lambda d, res: generation_scores(res[0], task.targets(d))
        cfg["metric_list"] = [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in task.metrics]
    else:
        metrics = [_LM_EVAL_METRICS[m] for m in task.metrics if m in _LM_EVAL_METRICS]
        if not metrics:
            raise UserError(f"none of task '{task.name}' metrics ({', '.join(task.metrics)}) exist in lm-eval")
        cfg["metric_list"] = [{"metric": m} for m in metrics]
    return cfg


def evaluate_with_lm_eval(scorer: ScoringModel, task, shots: int = 0, limit: int | None = None, seed: int = 1234):
    """Run `task` through `lm_eval.simple_evaluate` with this model; returns an `EvalResult`."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    t0 = time.perf_counter()
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(sys.stderr):  # lm-eval prints progress notes; stdout may carry --json
        out = lm_eval.simple_evaluate(
            model=GptqwenLM(scorer=scorer), tasks=[lm_eval_task_config(task)], num_fewshot=shots, limit=limit,
            task_manager=TaskManager(include_defaults=False), fewshot_random_seed=seed, bootstrap_iters=1000,
            log_samples=False,
        )
    raw = out["results"][task.name]
    metrics = {}
    for ours in task.metrics:
        name = "exact_match" if ours == "exact_match" else _LM_EVAL_METRICS.get(ours, ours)
        if f"{name},none" in raw:
            stderr = raw.get(f"{name}_stderr,none")
            metrics[ours] = {"value": float(raw[f"{name},none"]),
                             "stderr": float(stderr) if isinstance(stderr, (int, float)) else float("nan")}
    n = out.get("n-samples", {}).get(task.name, {}).get("effective", limit or len(task.test_docs))
    return EvalResult(f"{scorer.name} (lm-eval)", task.name, shots, int(n), metrics, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    """Register the model, then hand the command line to lm-eval."""
    register()
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm-eval", *(sys.argv[1:] if argv is None else argv)]
    try:
        cli_evaluate()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from gptqwen.eval.lm_eval_adapter import main as _main  # the registered class lives in the imported module

    sys.exit(_main())
else:
    register()
