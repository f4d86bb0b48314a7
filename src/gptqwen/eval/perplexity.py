"""Perplexity and bits per byte: on any text file, and on the held-out part of the Shakespeare corpus.

    gptqwen eval --model runs/qwen3-shakespeare --task shakespeare          # held-out Shakespeare
    gptqwen eval --model runs/qwen3-shakespeare --perplexity notes.txt      # any UTF-8 text file

Text is scored with rolling windows of the model's context (`ScoringModel.rolling_loglikelihood`),
every token exactly once. Bits per byte divide the total negative log-likelihood by the UTF-8 bytes,
so models with different tokenizers compare fairly.

The held-out Shakespeare text is the validation split that `gptqwen data prepare shakespeare` makes
with the model's own tokenizer (blocks of `block_tokens` spread evenly over the corpus, a fraction
`val_fraction` of them; the corpus is run through `gptqwen.data.prepare` itself). With the project's
defaults (0.05, 1024) and the model's training tokenizer, these are exactly the tokens a
`gptqwen pretrain` run never trained on. Each held-out block is scored as its own document.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from gptqwen.data.prepare import prepare
from gptqwen.data.shards import TokenDataset
from gptqwen.errors import UserError
from gptqwen.eval.taskspec import DEFAULT_METRICS, Task


def heldout_blocks(sources: list[str], tokenizer, val_fraction: float = 0.05, block_tokens: int = 1024) -> list[list[int]]:
    """The validation blocks `gptqwen data prepare SOURCES` makes with `tokenizer`, one list per block.

    The split is not re-implemented here: the corpus goes through `gptqwen.data.prepare` itself (into a
    temporary folder), so the held-out tokens are exactly those of a dataset built the same way.
    """
    if not 0 < val_fraction < 1 or block_tokens < 2:
        raise UserError(f"held-out text needs 0 < val_fraction < 1 and block_tokens >= 2, "
                        f"got {val_fraction} and {block_tokens}")
    with tempfile.TemporaryDirectory(prefix="gptqwen-heldout-") as tmp:
        tokenizer.save(Path(tmp) / "tokenizer")
        prepare(sources, Path(tmp) / "data", tokenizer=str(Path(tmp) / "tokenizer"), val_fraction=val_fraction,
                block_tokens=block_tokens, progress=False)
        val = TokenDataset(Path(tmp) / "data", "val")
        stream = val.read(0, len(val)).tolist()
    # the validation split is its blocks back to back: cut it at the block size to score each on its own
    return [stream[s:s + block_tokens] for s in range(0, len(stream), block_tokens)]


def shakespeare_heldout(tokenizer, val_fraction: float = 0.05, block_tokens: int = 1024) -> list[list[int]]:
    return heldout_blocks(["shakespeare"], tokenizer, val_fraction, block_tokens)


TOKEN_SOURCES = {"shakespeare_heldout": shakespeare_heldout}


def token_segments(source: dict, tokenizer) -> list[list[int]]:
    """Resolve a task's `token_source: {name: ..., settings}` with the model's tokenizer."""
    settings = dict(source)
    name = settings.pop("name", None)
    if name not in TOKEN_SOURCES:
        raise UserError(f"unknown token_source '{name}'; choose one of {', '.join(TOKEN_SOURCES)}")
    try:
        return TOKEN_SOURCES[name](tokenizer, **settings)
    except TypeError as e:
        raise UserError(f"token_source '{name}': bad settings {settings} ({e})") from None


def file_task(path: str | Path) -> Task:
    """A one-document perplexity task over a UTF-8 text file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"text file '{path}' does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"text file '{path}' is not UTF-8 (byte offset {e.start}); convert it to UTF-8") from None
    if not text.strip():
        raise UserError(f"text file '{path}' is empty")
    return Task(name=p.name, output_type="perplexity", splits={"test": [{"text": text}]}, doc_to_text="text",
                metrics=DEFAULT_METRICS["perplexity"], source=str(p))
