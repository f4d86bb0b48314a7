"""Scaling sweeps: a grid of model sizes × token budgets (or IsoFLOP profiles) trained from one recipe.

    specs = plan_sweep("qwen3-shakespeare", overrides, sizes=[{"n_layer": 2, "n_embd": 64}, ...], tokens=[2e5, 1e6])
    rows = run_sweep(specs, "runs/sweep")          # trains what is not finished, returns every finished row
    write_csv(rows, "runs/sweep/runs.csv")         # what `gptqwen scaling fit` reads

A size is a dict of model overrides on the recipe (a dotted key such as `train.lr` sets another section, so
that each size can have its own learning rate); a budget is D tokens (rounded to whole optimizer steps of
batch_size × seq_len tokens), or, with `flops`, an IsoFLOP budget C giving each size D = C / 6N, or, with
`ratios`, a number of tokens per parameter r giving each size D = r·N (a ray of one shape of training, as
the GPT-4 report's "same methodology" runs and Chinchilla's 20 tokens per parameter). With `seeds`, every
run is repeated once per seed (`train.seed`), so the run-to-run spread can be measured. Each run is a
folder trained through the normal pretraining entry point (`gptqwen.train.trainer.pretrain`), so it is
logged, checkpointed and resumable; a finished run has `result.json` and is skipped, an interrupted one is
resumed. `shard=(i, k)` trains only every k-th run starting at i, so k processes or machines sharing the
folder split a sweep between them. N counts all parameters (params_nonembed leaves out the embeddings),
`flops` is 6ND and `flops_exact` the project's own count (6N plus attention, `Config.flops_per_token`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gptqwen.data.prepare import ensure_dataset
from gptqwen.data.shards import TokenDataset
from gptqwen.errors import UserError
from gptqwen.train import checkpoint as ckpt_io
from gptqwen.train.recipe import load_recipe
from gptqwen.train.trainer import model_config, pretrain
from gptqwen.utils import atomic_write

RESULT = "result.json"
COLUMNS = ("run", "params", "params_nonembed", "tokens", "flops", "flops_exact", "steps", "seed", "loss",
           "train_loss", "val_loss", "wall_s")


@dataclass(frozen=True)
class RunSpec:
    """One planned run: its folder name, recipe overrides and the N, D, C it will have.

    A resumed run's `wall_s` (in its row) counts only the invocation that finished it."""

    name: str
    overrides: tuple[str, ...]
    steps: int
    params: int
    params_nonembed: int
    tokens: int
    flops: float
    flops_exact: float
    seed: int | None = None


def _dataset_vocab(recipe) -> tuple[int, int | None]:
    """Vocabulary size and EOS id of the recipe's token dataset (built now if missing, as pretraining would)."""
    d = recipe.data
    ensure_dataset(d.sources, d.dir, progress=False, tokenizer=d.tokenizer, train_vocab=None if d.tokenizer else d.train_vocab,
                   style=d.style, val_fraction=d.val_fraction, on_error=d.on_error, text_key=d.text_key)  # fmt: skip
    ds = TokenDataset(d.dir, "train")
    return ds.vocab_size, ds.eos_id


def _size_name(size: dict[str, Any]) -> str:
    return "-".join(f"{k.rpartition('.')[2]}{v}" for k, v in size.items()) or "base"


def _size_overrides(size: dict[str, Any]) -> list[str]:
    """Recipe overrides of one size: bare keys are model fields; dotted ones (train.lr) name their section."""
    return [f"{k}={v}" if "." in k else f"model.{k}={v}" for k, v in size.items()]


def plan_sweep(recipe_name: str | None, overrides: list[str], sizes: list[dict[str, Any]],
               tokens: list[float] | None = None, flops: list[float] | None = None,
               min_steps: int = 1, max_flops: float | None = None, ratios: list[float] | None = None,
               seeds: list[int] | None = None) -> list[RunSpec]:
    """Every (size, budget[, seed]) run of the sweep, with its N, D and C worked out before any training.

    Runs of fewer than `min_steps` optimizer steps are left out: an IsoFLOP budget gives the largest sizes
    only a few steps, too early in training to follow the power law the others trace. Runs whose exact
    FLOP count is above `max_flops` are left out too (e.g. 1/100 of a target's, on a grid of tokens)."""
    if min_steps < 1:
        raise UserError(f"--min-steps must be at least 1, not {min_steps}")
    if max_flops is not None and not (max_flops > 0 and math.isfinite(max_flops)):
        raise UserError(f"--max-flops must be a positive number, not {max_flops}")
    given = [b for b in (tokens, flops, ratios) if b is not None]
    if len(given) != 1:
        raise UserError("give the budgets one way: token counts (--tokens), IsoFLOP compute budgets (--flops) or "
                        "tokens per parameter (--tokens-per-param)")
    budgets = given[0]
    if not budgets or any(not (b > 0 and math.isfinite(b)) for b in budgets):
        raise UserError(f"the budgets must be positive numbers, not {budgets}")
    if seeds is not None and (not seeds or len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds)):
        raise UserError(f"--seeds takes distinct non-negative integers, e.g. 1,2,3, not {seeds}")
    if not sizes:
        raise UserError("give at least one model size (--size n_layer=2,n_embd=64)")
    base = load_recipe(recipe_name, overrides)
    vocab, eos = _dataset_vocab(base)
    specs = []
    for size in sizes:
        size_overrides = _size_overrides(size)
        sized = load_recipe(recipe_name, overrides + size_overrides)
        cfg = model_config(sized, vocab, eos)
        n = cfg.num_params()
        step_tokens = sized.train.batch_size * sized.train.seq_len  # a size may set its own batch or length
        for budget in budgets:
            d = budget if tokens is not None else budget * n if ratios is not None else budget / (6 * n)
            steps = max(1, round(d / step_tokens))
            d_real = steps * step_tokens
            flops_exact = float(cfg.flops_per_token(sized.train.seq_len)) * d_real
            if steps < min_steps or (max_flops is not None and flops_exact > max_flops):
                continue
            for seed in seeds or [None]:
                suffix, seeded = ("", []) if seed is None else (f"-seed{seed}", [f"train.seed={seed}"])
                specs.append(RunSpec(
                    name=f"{_size_name(size)}-steps{steps}{suffix}",
                    overrides=tuple(size_overrides + [f"train.max_steps={steps}"] + seeded), steps=steps, params=n,
                    params_nonembed=cfg.num_params(embeddings=False), tokens=d_real, flops=6.0 * n * d_real,
                    flops_exact=flops_exact, seed=seed,
                ))  # fmt: skip
    if not specs:
        raise UserError(f"every run of the sweep has fewer than --min-steps {min_steps} steps or more than --max-flops "
                        f"{max_flops} FLOPs; change the budgets")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise UserError("two runs of the sweep round to the same size and number of steps; use budgets further apart")
    return specs


def read_result(run_dir: Path) -> dict[str, Any] | None:
    """The row of a finished run, or None while it is unfinished."""
    path = run_dir / RESULT
    return json.loads(path.read_text()) if path.is_file() else None


def run_sweep(recipe_name: str | None, overrides: list[str], specs: list[RunSpec], out: str | Path,
              shard: tuple[int, int] = (0, 1), quiet: bool = True, log=print) -> list[dict[str, Any]]:
    """Train this shard's unfinished runs into `out/<run name>`; return the rows of every finished run."""
    index, count = shard
    if not 0 <= index < count:
        raise UserError(f"shard {index}/{count} does not exist; use i/k with 0 <= i < k")
    out = Path(out)
    for i, spec in enumerate(specs):
        run_dir = out / spec.name
        if i % count != index or read_result(run_dir) is not None:
            continue
        recipe = load_recipe(recipe_name, overrides + list(spec.overrides))
        resume = bool(ckpt_io.list_checkpoints(run_dir))
        log(f"[{i + 1}/{len(specs)}] {spec.name}: N {spec.params:,}, D {spec.tokens:,}, C {spec.flops:.3g}"
            + (" (resuming)" if resume else ""))
        start = time.perf_counter()
        summary = pretrain(recipe, run_dir, resume=resume, quiet=quiet)
        row = {k: v for k, v in asdict(spec).items() if k not in ("name", "overrides")}
        row.update(run=spec.name, train_loss=summary.get("loss"), val_loss=summary.get("val_loss"),
                   wall_s=round(time.perf_counter() - start, 3))
        row["loss"] = row["val_loss"] if row["val_loss"] is not None else row["train_loss"]
        with atomic_write(run_dir / RESULT) as f:
            json.dump(row, f, indent=2)
    return [r for r in (read_result(out / s.name) for s in specs) if r is not None]


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write the rows (one per finished run) as the CSV `gptqwen scaling fit` reads."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(path) as f:
        f.write(buf.getvalue())
    return Path(path)


def parse_size(text: str) -> dict[str, Any]:
    """'n_layer=2,n_embd=64' -> {'n_layer': '2', 'n_embd': '64'} (values stay text: the recipe parses them)."""
    size = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise UserError(f"--size '{text}': write model fields as key=value pairs, e.g. n_layer=2,n_embd=64")
        size[key.strip()] = value.strip()
    if not size:
        raise UserError("--size needs at least one key=value model field")
    return size
