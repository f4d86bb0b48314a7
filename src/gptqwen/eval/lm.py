"""The model side of evaluation: batched log-likelihoods, rolling windows and greedy generation.

`ScoringModel(model, tokenizer)` answers the three questions every evaluation asks
(the same three lm-evaluation-harness asks, so its adapter is a thin shell around this class):

  * `loglikelihood([(context, continuation), ...])` -> log P(continuation | context) and whether the
    continuation is the greedy one. Requests are sorted by length, right-padded and scored with one
    forward per batch; right padding needs no attention mask because causal attention never looks ahead.
  * `rolling_loglikelihood(token_segments)` -> total log-probability of each segment, scoring every
    token exactly once in windows of the model's context (see `rolling_windows`).
  * `generate_until(contexts, until, max_new_tokens)` -> greedy continuations cut at the first stop string
    (batched through `gptqwen.infer.Engine`).

Prompts that do not fit the model's context raise a UserError rather than being silently truncated.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from gptqwen.data.prepare import document_separator
from gptqwen.errors import UserError
from gptqwen.infer import Engine, SamplingParams
from gptqwen.loading import load_model_and_tokenizer


@dataclass
class LogLikelihood:
    logprob: float  # natural log
    is_greedy: bool
    n_tokens: int


def rolling_windows(n_targets: int, max_len: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """Plan windows over `seq = [prefix] + tokens` (len n_targets + 1) scoring each token exactly once.

    Returns `(start, end, n_scored)`: the window feeds `seq[start:end]` (at most `max_len` tokens) and
    scores its last `n_scored` predictions, i.e. the tokens `seq[end - n_scored + 1 : end + 1]`. Each new
    window advances by `stride` tokens (default: `max_len`, disjoint windows) and always takes a full
    context when one is available, so later tokens see at least `max_len - stride` tokens of history.
    """
    stride = max_len if stride is None else stride
    if not 1 <= stride <= max_len:
        raise UserError(f"stride {stride} must be between 1 and the context length {max_len}")
    windows, done = [], 0
    while done < n_targets:
        end = min(done + (max_len if not windows else stride), n_targets)
        windows.append((max(0, end - max_len), end, end - done))
        done = end
    return windows


class ScoringModel:
    """A model plus tokenizer, with the batched scoring calls evaluation needs."""

    def __init__(self, model: torch.nn.Module, tokenizer, batch_size: int = 8, max_length: int | None = None,
                 progress: bool = True, name: str = "model"):
        if tokenizer is None:
            raise UserError(f"model '{name}' has no tokenizer (a bare preset); evaluate a checkpoint directory, "
                            "a run directory or a .gguf file")
        if batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {batch_size}")
        self.model, self.tokenizer, self.batch_size, self.progress, self.name = model.eval(), tokenizer, batch_size, progress, name
        self.max_length = int(max_length or model.config.max_seq_len)
        self.device = next(model.parameters()).device

    @classmethod
    def load(cls, spec: str, device: str | None = None, dtype: str | None = None, adapter: str | None = None,
             random_weights: bool = False, **kwargs) -> ScoringModel:
        """Load through `gptqwen.loading` (run dir, HF dir, Hub id, .gguf, or a preset with `random_weights`;
        `adapter`: a PEFT LoRA folder merged in)."""
        model, tok = load_model_and_tokenizer(spec, dtype=dtype, device=device, adapter=adapter,
                                              random_weights=random_weights)
        return cls(model, tok, name=spec, **kwargs)

    @property
    def prefix_id(self) -> int:
        """The token that conditions an empty context: the pretraining document separator (<|endoftext|>)."""
        return int(document_separator(self.tokenizer))

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Tokens of context and continuation; trailing whitespace moves to the continuation (lm-eval's rule).

        Encoding the two separately keeps the continuation's tokens independent of the context, so
        every choice of a question is scored on exactly its own tokens.
        """
        stripped = context.rstrip()
        if stripped != context:
            continuation = context[len(stripped):] + continuation
            context = stripped
        cont = self.encode(continuation)
        if not cont:
            raise UserError(f"a continuation encodes to no tokens: {continuation!r}")
        ctx = self.encode(context) if context else [self.prefix_id]  # empty context: a document start
        return ctx, cont

    # ---- log-likelihood ---------------------------------------------------------------------------
    def loglikelihood(self, requests: Sequence[tuple[str, str]], desc: str = "loglikelihood") -> list[LogLikelihood]:
        return self.loglikelihood_tokens([self.encode_pair(c, x) for c, x in requests], desc=desc)

    def loglikelihood_tokens(self, pairs: Sequence[tuple[list[int], list[int]]],
                             desc: str = "loglikelihood") -> list[LogLikelihood]:
        """Score token pairs in batches (longest first, so a batch too large for memory fails at once)."""
        for ctx, cont in pairs:
            if len(ctx) + len(cont) - 1 > self.max_length:
                raise UserError(
                    f"a prompt of {len(ctx) + len(cont) - 1} tokens does not fit the model's context of "
                    f"{self.max_length}; use fewer --shots, shorter task texts, or a model with a longer context")
        unique = list(dict.fromkeys((tuple(c), tuple(x)) for c, x in pairs))  # MC choices share many requests
        order = sorted(range(len(unique)), key=lambda i: -(len(unique[i][0]) + len(unique[i][1])))
        scores: dict[tuple, LogLikelihood] = {}
        with _progress(len(order), desc, self.progress) as advance:
            for b in range(0, len(order), self.batch_size):
                batch = [unique[i] for i in order[b:b + self.batch_size]]
                for key, score in zip(batch, self._score_batch(batch)):
                    scores[key] = score
                advance(len(batch))
        return [scores[(tuple(c), tuple(x))] for c, x in pairs]

    @torch.no_grad()
    def _score_batch(self, batch: list[tuple[tuple[int, ...], tuple[int, ...]]]) -> list[LogLikelihood]:
        inputs = [list(c + x)[:-1] for c, x in batch]
        width = max(map(len, inputs))
        ids = torch.full((len(inputs), width), self.prefix_id, dtype=torch.long)  # padding: never attended
        for i, row in enumerate(inputs):
            ids[i, : len(row)] = torch.tensor(row)
        # only positions from the earliest continuation on are needed: ask the model for just those
        first = min(len(c) - 1 for c, _ in batch)
        logits = self.model(ids.to(self.device), logits_to_keep=width - first).logits
        out = []
        for i, (c, x) in enumerate(batch):
            start = len(c) - 1 - first
            logprobs = torch.log_softmax(logits[i, start:start + len(x)].float(), dim=-1)
            target = torch.tensor(x, device=logprobs.device)
            token_lp = logprobs.gather(-1, target[:, None]).squeeze(-1)
            greedy = bool((logprobs.argmax(-1) == target).all())
            out.append(LogLikelihood(float(token_lp.sum()), greedy, len(x)))
        return out

    def rolling_loglikelihood(self, segments: Sequence[list[int]], stride: int | None = None,
                              desc: str = "perplexity") -> list[float]:
        """Total log-probability of each token segment, conditioned on a leading document separator."""
        pairs, owner = [], []
        for s, tokens in enumerate(segments):
            seq = [self.prefix_id] + list(tokens)
            for start, end, n in rolling_windows(len(tokens), self.max_length, stride):
                pairs.append((seq[start:end + 1 - n], seq[end + 1 - n:end + 1]))
                owner.append(s)
        totals = [0.0] * len(segments)
        for s, score in zip(owner, self.loglikelihood_tokens(pairs, desc=desc)):
            totals[s] += score.logprob
        return totals

    # ---- generation --------------------------------------------------------------------------------
    def generate_until(self, contexts: Sequence[str], until: Sequence[str], max_new_tokens: int = 32,
                       desc: str = "generate") -> list[str]:
        """Greedy continuations, cut before the first stop string."""
        prompts = [self.encode(c) if c else [self.prefix_id] for c in contexts]
        for p in prompts:
            if len(p) + max_new_tokens > self.max_length:
                raise UserError(f"a prompt of {len(p)} tokens plus {max_new_tokens} new tokens does not fit the "
                                f"model's context of {self.max_length}; use fewer --shots or shorter texts")
        outputs = []
        with _progress(len(prompts), desc, self.progress) as advance:
            for b in range(0, len(prompts), self.batch_size):
                outputs += self._generate(prompts[b:b + self.batch_size], list(until), max_new_tokens)
                advance(len(prompts[b:b + self.batch_size]))
        return [cut_at_stop(text, until) for text in outputs]

    def _generate(self, prompts: list[list[int]], until: list[str], max_new_tokens: int) -> list[str]:
        if getattr(self, "_engine", None) is None:
            self._engine = Engine(self.model, self.tokenizer)
        params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, stop=until)
        return [r.text for r in self._engine.generate(prompts, params)]


def cut_at_stop(text: str, until: Iterable[str]) -> str:
    cut = min((i for i in (text.find(s) for s in until) if i >= 0), default=len(text))
    return text[:cut]


class _progress:
    """A rich progress bar on stderr (off when disabled or for tiny jobs); yields an `advance(n)` function."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.total, self.desc, self.enabled = total, desc, enabled and total > 1
        self.bar = None

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=Console(stderr=True), transient=True)
        self.bar.start()
        task = self.bar.add_task(self.desc, total=self.total)
        return lambda n: self.bar.update(task, advance=n)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
