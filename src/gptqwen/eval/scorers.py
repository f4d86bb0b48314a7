"""Per-item scores and their aggregation, with standard errors.

Multiple choice follows GPT-3 / lm-evaluation-harness: the answer is the choice with the highest
log-likelihood (`acc`), optionally normalised by the choice's length in characters (`acc_norm`,
lm-eval), in tokens (`acc_norm_tokens`, GPT-3), or by its unconditional probability given a neutral
"Answer:" context (`acc_uncond`, GPT-3 on ARC / OpenBookQA / RACE). Generation is compared with the
SQuAD normalisation (lower case, no punctuation or articles, single spaces): exact match and token F1,
the best over all acceptable answers. Means get the standard error of the mean (sample standard
deviation / sqrt(n), like lm-eval); perplexities, which are not means, get a seeded bootstrap.
"""

from __future__ import annotations

import math
import random
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
# keep a minus sign or decimal point that belongs to a number: "-12" must not match "12"
_PUNCT = re.compile(r"(?!(?<![\w])-(?=\d))(?!(?<=\d)\.(?=\d))[" + re.escape(string.punctuation) + "]")


def argmax(values: Sequence[float]) -> int:
    """Index of the largest value; the first one on ties (as numpy's argmax, which lm-eval uses)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def multiple_choice_scores(gold: int, lls: Sequence[float], choices: Sequence[str], n_tokens: Sequence[int],
                           uncond_lls: Sequence[float] | None = None) -> dict[str, float]:
    scores = {
        "acc": float(argmax(lls) == gold),
        "acc_norm": float(argmax([ll / max(1, len(c)) for ll, c in zip(lls, choices)]) == gold),
        "acc_norm_tokens": float(argmax([ll / max(1, n) for ll, n in zip(lls, n_tokens)]) == gold),
    }
    if uncond_lls is not None:
        scores["acc_uncond"] = float(argmax([ll - u for ll, u in zip(lls, uncond_lls)]) == gold)
    return scores


def normalize_answer(text: str) -> str:
    text = _PUNCT.sub("", text.lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def generation_scores(prediction: str, references: Sequence[str]) -> dict[str, float]:
    return {
        "exact_match": max(float(normalize_answer(prediction) == normalize_answer(r)) for r in references),
        "f1": max(token_f1(prediction, r) for r in references),
    }


# ---- aggregation ---------------------------------------------------------------------------------
def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def mean_stderr(xs: Sequence[float]) -> float:
    """Standard error of the mean with the n-1 sample variance (lm-eval's `mean_stderr`)."""
    n = len(xs)
    if n < 2:
        return float("nan")
    mu = mean(xs)
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (n - 1) / n)


def bootstrap_stderr(statistic: Callable[[list], float], items: Sequence, iters: int = 1000, seed: int = 1234) -> float:
    """Standard deviation of `statistic` over `iters` resamples (with replacement) of `items`."""
    n = len(items)
    if n < 2:
        return float("nan")
    rng = random.Random(seed)
    values = [statistic([items[rng.randrange(n)] for _ in range(n)]) for _ in range(iters)]
    mu = mean(values)
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (iters - 1))


def exp_neg_mean(lls: list[float]) -> float:
    """Perplexity over items from their log-likelihoods: exp(-mean ll) (lm-eval's LAMBADA perplexity)."""
    return math.exp(-mean(lls))


def corpus_perplexities(items: list[tuple[float, int, int, int]]) -> dict[str, float]:
    """Token / word / byte perplexity and bits per byte from (logprob, tokens, words, bytes) per document."""
    ll = sum(i[0] for i in items)
    tokens, words, nbytes = (sum(i[k] for i in items) for k in (1, 2, 3))
    return {
        "token_perplexity": math.exp(-ll / max(1, tokens)),
        "word_perplexity": math.exp(-ll / max(1, words)),
        "byte_perplexity": math.exp(-ll / max(1, nbytes)),
        "bits_per_byte": -ll / max(1, nbytes) / math.log(2),
    }


def aggregate(output_type: str, items: list, metrics: Sequence[str], bootstrap_iters: int = 1000) -> dict[str, dict]:
    """Aggregate per-item results into `{metric: {"value": v, "stderr": s}}`."""
    out = {}
    if output_type == "perplexity":
        for m in metrics:
            stat = lambda xs, m=m: corpus_perplexities(xs)[m]  # noqa: E731
            out[m] = {"value": stat(items), "stderr": bootstrap_stderr(stat, items, bootstrap_iters)}
        return out
    for m in metrics:
        if m == "perplexity":  # cloze tasks: items carry the target's log-likelihood
            lls = [it["ll"] for it in items]
            out[m] = {"value": exp_neg_mean(lls), "stderr": bootstrap_stderr(exp_neg_mean, lls, bootstrap_iters)}
        else:
            xs = [it[m] for it in items]
            out[m] = {"value": mean(xs), "stderr": mean_stderr(xs)}
    return out
