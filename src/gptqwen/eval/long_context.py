"""Long-context evaluation: passkey retrieval, multi-key needle retrieval and perplexity by token position.

    gptqwen eval --model SmolLM2.gguf --task passkey --context-lengths 2048 4096 8192 --trials 5 --plot pk.png
    gptqwen eval --model SmolLM2.gguf --task passkey --context-lengths 16384 --yarn 2 --dca 6144 2048
    gptqwen eval --model runs/long --task needle --context-lengths 1024 2048 --keys 4
    gptqwen eval --model runs/long --task ppl-position --context-lengths 4096 --document book.txt --plot ppl.png

Passkey (Mohtashami & Jaggi 2023): a random number hidden at a relative depth inside repeated filler text,
then the question; the model answers greedily through the `Engine` (chunked prefill, KV cache sized to the
request) and a trial counts when the first number in its answer is the key. The prompt plus the answer budget
is exactly the context length. Needle: `keys` named numbers at random depths, the question asks for one.
Perplexity by position: windows of the context length cut from a document (default: the held-out Shakespeare
blocks), per-token negative log-likelihood averaged in position buckets; it shows where a model stops using
its context. `extend_context` (model/dca.py) applies --yarn / --dca / --allow-longer first; a context beyond
what the model can take is a UserError. The wording of the prompts lives in `gptqwen.data.retrieval`, whose
training documents (`synthetic:retrieval`, answers included) teach a model trained here the same task.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gptqwen.data.retrieval import (
    FILLER,
    INTRO,
    NAMES,
    PASSKEY_QUESTION,
    needle_question,
    passkey_needle,
    random_key,
)
from gptqwen.errors import UserError, require
from gptqwen.eval.perplexity import heldout_blocks
from gptqwen.infer import Engine, SamplingParams
from gptqwen.utils import save_figure

LONG_TASKS = ("passkey", "needle", "ppl-position")


@dataclass
class LongContextSettings:
    context_lengths: list[int]
    depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    trials: int = 5
    keys: int = 4  # needles per prompt (needle task)
    digits: int = 5
    seed: int = 1234
    batch_size: int = 1
    buckets: int = 16  # position buckets (ppl-position)
    document: str | None = None

    def validate(self) -> None:
        if not self.context_lengths or min(self.context_lengths) < 64:
            raise UserError("give --context-lengths of at least 64 tokens each")
        if not self.depths or not all(0.0 <= d <= 1.0 for d in self.depths):
            raise UserError(f"--depths must lie in [0, 1], got {self.depths}")
        if self.trials < 1 or self.keys < 1 or not 1 <= self.digits <= 12 or self.buckets < 1 or self.batch_size < 1:
            raise UserError("--trials, --keys, --buckets and --batch-size must be >= 1, and digits 1..12")


def _ids(tok, text: str) -> list[int]:
    return list(tok.encode(text))


def haystack(tok, length: int, needles: list[tuple[float, str]], question: str) -> list[int]:
    """Exactly `length` tokens: intro, filler sentences with each (depth, text) needle after the filler unit at that
    relative depth, then the question. UserError when the needles and question alone do not fit."""
    head, tail, unit = _ids(tok, INTRO), _ids(tok, question), _ids(tok, FILLER)
    pieces = [_ids(tok, " " + text) for _, text in needles]
    room = length - len(head) - len(tail) - sum(map(len, pieces))
    if room < len(unit):
        raise UserError(f"a context of {length} tokens cannot hold the intro, {len(needles)} needle(s) and the "
                        "question; use longer --context-lengths")
    n_units, extra = divmod(room, len(unit))
    filler = [list(unit) for _ in range(n_units)]
    # top up to the exact length with the start of one more sentence group, right after the intro: a sentence cut
    # short beside the needle or the question would be the one odd thing a small model sees there
    filler[0] = unit[:extra] + filler[0]
    at = sorted((round(d * n_units), i) for i, (d, _) in enumerate(needles))
    body, k = [], 0
    for u in range(n_units + 1):
        while k < len(at) and at[k][0] == u:
            body += pieces[at[k][1]]
            k += 1
        if u < n_units:
            body += filler[u]
    ids = head + body + tail
    assert len(ids) == length
    return ids


def _first_number(text: str) -> str | None:
    m = re.search(r"\d+", text)
    return m.group(0) if m else None


class LongContextEval:
    """Runs the long-context tasks on one loaded model (after `extend_context`)."""

    def __init__(self, model: torch.nn.Module, tokenizer, settings: LongContextSettings, progress=None) -> None:
        if tokenizer is None:
            raise UserError("long-context tasks need the model's tokenizer; evaluate a checkpoint, run dir or .gguf")
        settings.validate()
        self.model, self.tok, self.s = model.eval(), tokenizer, settings
        self.engine = Engine(model, tokenizer)
        self.progress = progress or (lambda msg: None)
        self.answer_budget = settings.digits + 3  # new tokens: the number (a token per digit at worst) and slack

    def _answers(self, prompts: list[list[int]]) -> list[str]:
        params = SamplingParams(temperature=0.0, max_new_tokens=self.answer_budget, ignore_eos=False)
        out = []
        for b in range(0, len(prompts), self.s.batch_size):
            out += [r.text for r in self.engine.generate(prompts[b:b + self.s.batch_size], params)]
        return out

    def passkey(self) -> list[dict]:
        """One row per (context length, depth): trials, correct, accuracy."""
        rows, rng = [], random.Random(self.s.seed)
        for L in self.s.context_lengths:
            for depth in self.s.depths:
                keys = [random_key(rng, self.s.digits) for _ in range(self.s.trials)]
                prompts = [haystack(self.tok, L - self.answer_budget, [(depth, passkey_needle(k))], PASSKEY_QUESTION)
                           for k in keys]
                got = [_first_number(a) for a in self._answers(prompts)]
                rows.append(self._row("passkey", L, depth, keys, got))
                self.progress(f"passkey L={L} depth={depth:.2f}: {rows[-1]['correct']}/{self.s.trials}")
        return rows

    def needle(self) -> list[dict]:
        """Multi-key retrieval: `keys` named pass keys at random depths, the question names one of them; one row per
        context length."""
        if self.s.keys > len(NAMES):
            raise UserError(f"--keys must be at most {len(NAMES)}")
        rows, rng = [], random.Random(self.s.seed)
        for L in self.s.context_lengths:
            prompts, want = [], []
            for _ in range(self.s.trials):
                names = rng.sample(NAMES, self.s.keys)
                keys = [random_key(rng, self.s.digits) for _ in names]
                needles = [(rng.random(), f"The pass key for {n} is {k}.") for n, k in zip(names, keys)]
                ask = rng.randrange(self.s.keys)
                prompts.append(haystack(self.tok, L - self.answer_budget, needles, needle_question(names[ask])))
                want.append(keys[ask])
            got = [_first_number(a) for a in self._answers(prompts)]
            rows.append(self._row("needle", L, None, want, got))
            self.progress(f"needle L={L} keys={self.s.keys}: {rows[-1]['correct']}/{self.s.trials}")
        return rows

    def _row(self, task: str, L: int, depth: float | None, want: list[str], got: list[str | None]) -> dict:
        correct = sum(w == g for w, g in zip(want, got))
        n = len(want)
        acc = correct / n
        return {"task": task, "context_length": L, "depth": depth, "trials": n, "correct": correct,
                "accuracy": acc, "stderr": math.sqrt(acc * (1 - acc) / n), "keys": want, "answers": got}

    @torch.inference_mode()
    def ppl_by_position(self) -> list[dict]:
        """One row per context length: mean NLL per position bucket over the document's windows."""
        rows = []
        for L in self.s.context_lengths:
            windows = self._windows(L)
            nll_sum = torch.zeros(L - 1, dtype=torch.float64)
            for w in windows:
                nll_sum += self._token_nll(w)
            nll = nll_sum / len(windows)
            edges = [round(i * (L - 1) / self.s.buckets) for i in range(self.s.buckets + 1)]
            buckets = [{"start": a + 1, "end": b, "nll": float(nll[a:b].mean()), "ppl": float(nll[a:b].mean().exp())}
                       for a, b in zip(edges, edges[1:]) if b > a]
            rows.append({"task": "ppl-position", "context_length": L, "windows": len(windows),
                         "nll": float(nll.mean()), "ppl": float(nll.mean().exp()), "buckets": buckets})
            self.progress(f"ppl-position L={L}: {len(windows)} window(s), ppl {rows[-1]['ppl']:.3f}")
        return rows

    def _windows(self, L: int) -> list[list[int]]:
        if self.s.document is None:  # the held-out Shakespeare blocks, cut at the context length
            blocks = heldout_blocks(["shakespeare"], self.tok, block_tokens=L)
            windows = [b for b in blocks if len(b) == L]
        else:
            p = Path(self.s.document).expanduser()
            if not p.is_file():
                raise UserError(f"--document '{self.s.document}' does not exist")
            ids = _ids(self.tok, p.read_text(encoding="utf-8", errors="strict"))
            windows = [ids[a:a + L] for a in range(0, len(ids) - L + 1, L)]
        if not windows:
            raise UserError(f"the document has fewer than {L} tokens; give a longer --document or shorter "
                            "--context-lengths")
        return windows[:max(self.s.trials, 1)]

    def _token_nll(self, ids: list[int]) -> torch.Tensor:
        """NLL of tokens 1..L-1 of one window, [L-1] float64; the LM head runs in slices (no [L, vocab] logits)."""
        x = torch.tensor([ids], device=self.engine.device)
        hidden = self.model(x, logits_to_keep=1, return_hidden=True).hidden[0]
        out = []
        for a in range(0, len(ids) - 1, 512):
            b = min(len(ids) - 1, a + 512)
            logp = self.model.lm_head(hidden[a:b]).float().log_softmax(-1)
            out.append(-logp.gather(-1, x[0, a + 1:b + 1, None])[:, 0].double().cpu())
        return torch.cat(out)


def plot_passkey_heatmap(rows: list[dict], out: str | Path, title: str = "passkey retrieval") -> Path:
    """Accuracy heat-map: depth (rows) by context length (columns), each cell labelled correct/trials."""
    require("matplotlib", "plot", "the passkey heat-map")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({r["context_length"] for r in rows})
    depths = sorted({r["depth"] for r in rows})
    grid = [[next((r for r in rows if r["context_length"] == L and r["depth"] == d), None) for L in lengths]
            for d in depths]
    fig, ax = plt.subplots(figsize=(1.3 * len(lengths) + 2, 0.6 * len(depths) + 1.5))
    ax.imshow([[c["accuracy"] if c else float("nan") for c in row] for row in grid], cmap="RdYlGn", vmin=0, vmax=1,
              aspect="auto")
    for i, row in enumerate(grid):
        for j, c in enumerate(row):
            if c:
                ax.text(j, i, f"{c['correct']}/{c['trials']}", ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(lengths)), [str(L) for L in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("passkey depth")
    ax.set_title(title)
    fig.tight_layout()
    path = save_figure(fig, out, dpi=120)
    plt.close(fig)
    return path


def plot_ppl_by_position(rows: list[dict], out: str | Path, title: str = "perplexity by position") -> Path:
    """Perplexity of each position bucket, one line per context length."""
    require("matplotlib", "plot", "the perplexity-by-position plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        b = r["buckets"]
        ax.plot([(x["start"] + x["end"]) / 2 for x in b], [x["ppl"] for x in b], marker="o",
                label=r.get("label", f"L={r['context_length']}"))
    ax.set_xlabel("token position")
    ax.set_ylabel("perplexity")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = save_figure(fig, out, dpi=120)
    plt.close(fig)
    return path
