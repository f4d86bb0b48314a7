"""The few-shot harness: GPT-3's evaluation protocol over tasks from `gptqwen.eval.taskspec`.

For each test record the prompt is

    description + (example_1 + fewshot_delimiter) + ... + (example_K + fewshot_delimiter) + query

where an example is `text + target_delimiter + answer` and the K examples are drawn from the task's
few-shot split with a generator seeded by (seed, record index): the same seed gives the same prompts
whatever `--limit` is, and the record itself is never among its own examples. The prompt is then
scored by the task's kind (multiple choice, cloze, generate-until or perplexity) through a
`ScoringModel`, and per-item scores are aggregated with standard errors.

    from gptqwen.eval.harness import evaluate
    result = evaluate(ScoringModel.load("runs/qwen3-shakespeare"), load_task("copy"), shots=4)
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field

from gptqwen.errors import UserError
from gptqwen.eval import scorers
from gptqwen.eval.lm import ScoringModel
from gptqwen.eval.perplexity import token_segments
from gptqwen.eval.taskspec import Task


@dataclass
class EvalResult:
    model: str
    task: str
    shots: int
    n: int
    metrics: dict[str, dict]  # name -> {"value": v, "stderr": s}
    seconds: float
    samples: list[dict] = field(default_factory=list, repr=False)

    def to_dict(self, with_samples: bool = False) -> dict:
        d = asdict(self)
        if not with_samples:
            d.pop("samples")
        return d


# ---- prompts ---------------------------------------------------------------------------------------
def fewshot_indices(task: Task, index: int, k: int, seed: int) -> list[int]:
    """Indices into the few-shot split of the K examples for test record `index`.

    The test record is excluded by position when the few-shot split is the test split, and by
    content (its rendered prompt) always, so a duplicate across splits cannot leak the answer.
    """
    if k == 0:
        return []
    pool = task.fewshot_docs
    test_doc = task.test_docs[index]
    own_text = _example_key(task, test_doc)
    allowed = [i for i, d in enumerate(pool)
               if not (task.fewshot_from_test and i == index) and _example_key(task, d) != own_text]
    if k > len(allowed):
        split = task.fewshot_split or task.test_split
        raise UserError(f"task '{task.name}' has only {len(allowed)} few-shot examples in split '{split}' "
                        f"(not counting the test item); use --shots {len(allowed)} or fewer")
    if task.fewshot_sampler == "first_n":
        return allowed[:k]
    return random.Random(f"{seed}:{index}").sample(allowed, k)


def _example_key(task: Task, doc: dict) -> str:
    if task.uses_choice_in_context():
        return repr(sorted(doc.items(), key=str))
    return task.text(doc)


def format_example(task: Task, doc: dict) -> str:
    """A solved example: question, delimiter, gold answer."""
    if task.output_type == "multiple_choice":
        choices = task.choices(doc)
        gold = choices[task.target_index(doc, choices)]
        if task.uses_choice_in_context():
            return task.text(doc, gold) + task.target_delimiter + task.continuation(doc)
        return task.text(doc) + task.target_delimiter + gold
    return task.text(doc) + task.target_delimiter + task.targets(doc)[0]


def fewshot_prefix(task: Task, index: int, k: int, seed: int) -> str:
    """Description plus K solved examples, each followed by the few-shot delimiter."""
    pool = task.fewshot_docs
    examples = "".join(format_example(task, pool[i]) + task.fewshot_delimiter
                       for i in fewshot_indices(task, index, k, seed))
    description = task.description
    if description and not description[-1].isspace():
        description += task.fewshot_delimiter  # a description ending in a word still gets its own paragraph
    return description + examples


# ---- evaluation ------------------------------------------------------------------------------------
def evaluate(lm: ScoringModel, task: Task, shots: int = 0, limit: int | None = None, seed: int = 1234,
             bootstrap_iters: int = 1000, stride: int | None = None) -> EvalResult:
    """Run one task at one shot count; `limit` keeps the first N test records."""
    if shots < 0:
        raise UserError(f"--shots must be >= 0, got {shots}")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be >= 1, got {limit}")
    if task.output_type == "perplexity" and shots:
        raise UserError(f"task '{task.name}' measures perplexity and takes no few-shot examples; use --shots 0")
    t0 = time.perf_counter()
    runner = {"multiple_choice": _multiple_choice, "cloze": _cloze, "generate_until": _generate,
              "perplexity": _perplexity}[task.output_type]
    items = runner(lm, task, range(len(task.test_docs))[:limit], shots, seed, stride, limit)
    metrics = scorers.aggregate(task.output_type, [it["scores"] for it in items], task.metrics, bootstrap_iters)
    return EvalResult(lm.name, task.name, shots, len(items), metrics, time.perf_counter() - t0, samples=items)


def _multiple_choice(lm: ScoringModel, task: Task, indices, shots: int, seed: int, stride, limit) -> list[dict]:
    plans, requests = [], []
    for i in indices:
        doc, prefix = task.test_docs[i], fewshot_prefix(task, i, shots, seed)
        choices = task.choices(doc)
        gold = task.target_index(doc, choices)
        if task.uses_choice_in_context():  # Winogrande: the option goes in the context, the rest is scored
            cont = task.target_delimiter + task.continuation(doc)
            pairs = [(prefix + task.text(doc, c), cont) for c in choices]
        else:
            ctx = prefix + task.text(doc)
            pairs = [(ctx, task.target_delimiter + c) for c in choices]
        plans.append((i, choices, gold, len(requests), pairs))
        requests += pairs
    uncond = None
    if "acc_uncond" in task.metrics:
        uncond_pairs = [(task.uncond_context, cont) for *_, pairs in plans for _, cont in pairs]
        uncond = lm.loglikelihood(uncond_pairs, desc=f"{task.name} unconditional")
    scores = lm.loglikelihood(requests, desc=f"{task.name} {shots}-shot")
    items = []
    for i, choices, gold, start, pairs in plans:
        got = scores[start:start + len(pairs)]
        lls = [s.logprob for s in got]
        u = [s.logprob for s in uncond[start:start + len(pairs)]] if uncond is not None else None
        per_item = scorers.multiple_choice_scores(gold, lls, choices, [s.n_tokens for s in got], u)
        items.append({"index": i, "prompt": pairs[gold][0], "choices": choices, "gold": gold, "loglikelihoods": lls,
                      "scores": per_item})
    return items


def _cloze(lm: ScoringModel, task: Task, indices, shots: int, seed: int, stride, limit) -> list[dict]:
    prompts = [(i, fewshot_prefix(task, i, shots, seed) + task.text(task.test_docs[i])) for i in indices]
    targets = [task.targets(task.test_docs[i])[0] for i, _ in prompts]
    results = lm.loglikelihood([(p, task.target_delimiter + t) for (_, p), t in zip(prompts, targets)],
                               desc=f"{task.name} {shots}-shot")
    return [{"index": i, "prompt": p, "target": t, "scores": {"acc": float(r.is_greedy), "ll": r.logprob}}
            for (i, p), t, r in zip(prompts, targets, results)]


def _generate(lm: ScoringModel, task: Task, indices, shots: int, seed: int, stride, limit) -> list[dict]:
    prompts = [(i, fewshot_prefix(task, i, shots, seed) + task.text(task.test_docs[i])) for i in indices]
    # as in lm-eval the query ends without the target delimiter: " 124" is one token, " " + "124" is not
    outs = lm.generate_until([p for _, p in prompts], task.until, task.max_new_tokens,
                             desc=f"{task.name} {shots}-shot")
    items = []
    for (i, p), out in zip(prompts, outs):
        refs = task.targets(task.test_docs[i])
        items.append({"index": i, "prompt": p, "output": out, "references": refs,
                      "scores": scorers.generation_scores(out, refs)})
    return items


def _perplexity(lm: ScoringModel, task: Task, indices, shots: int, seed: int, stride, limit) -> list[dict]:
    if task.token_source is not None:  # documents made with the model's tokenizer: only now is it known
        segments = token_segments(task.token_source, lm.tokenizer)[:limit]
        texts = [lm.tokenizer.decode(s) for s in segments]
        indices = range(len(segments))
    else:
        texts = [task.text(task.test_docs[i]) for i in indices]
        segments = [lm.encode(t) for t in texts]
    lls = lm.rolling_loglikelihood(segments, stride=stride, desc=f"{task.name} perplexity")
    return [{"index": i, "scores": (ll, len(seg), len(t.split()), len(t.encode("utf-8")))}
            for i, t, seg, ll in zip(indices, texts, segments, lls)]
