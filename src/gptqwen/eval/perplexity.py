"""Perplexity and bits per byte: on any text file, and on the held-out part of the Shakespeare corpus.

    gptqwen eval --model runs/shakespeare --task shakespeare          # held-out Shakespeare
    gptqwen eval --model runs/shakespeare --perplexity notes.txt      # any UTF-8 text file

Text is scored with rolling windows of the model's context (`ScoringModel.rolling_loglikelihood`),
every token exactly once. Bits per byte divide the total negative log-likelihood by the UTF-8 bytes,
so models with different tokenizers compare fairly.

The held-out Shakespeare text is the validation split `gptqwen data prepare shakespeare` makes: the
plays (in `gptqwen.data.sources` order, as plain script text, EOS after each) are tokenized with the
model's own tokenizer, cut into blocks of `block_tokens`, and block j is held out when
floor((j+1)·f) > floor(j·f). With the project's defaults (f = 0.05, 1024-token blocks) and the model's
training tokenizer, these are exactly the tokens a `gptqwen pretrain` run never trained on.
Each held-out block is scored as its own document.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from gptqwen.errors import UserError
from gptqwen.eval.tasks import Task


@lru_cache(maxsize=1)
def _plays() -> tuple[str, ...]:
    from gptqwen.data.sources import shakespeare_files, shakespeare_plain

    return tuple(shakespeare_plain(p.read_text(encoding="utf-8")) for p in shakespeare_files())


def shakespeare_text(split: str = "all") -> str:
    """The whole corpus as plain text (used for the word lists of the synthetic probes)."""
    if split != "all":
        raise UserError("the held-out Shakespeare split is defined on tokens; use shakespeare_heldout_blocks")
    return "\n".join(_plays())


def is_heldout_block(j: int, val_fraction: float) -> bool:
    """The split rule of `gptqwen data prepare`: validation blocks are spread evenly over the stream."""
    return int((j + 1) * val_fraction) > int(j * val_fraction)


def shakespeare_heldout_blocks(tokenizer, val_fraction: float = 0.05, block_tokens: int = 1024) -> list[list[int]]:
    """The held-out token blocks of the Shakespeare corpus under `tokenizer`."""
    if not 0 < val_fraction < 1 or block_tokens < 2:
        raise UserError(f"held-out Shakespeare needs 0 < val_fraction < 1 and block_tokens >= 2, "
                        f"got {val_fraction} and {block_tokens}")
    stream: list[int] = []
    for play in _plays():
        stream += list(tokenizer.encode(play))
        stream.append(int(tokenizer.eos_id))
    blocks = [stream[s:s + block_tokens] for s in range(0, len(stream), block_tokens)]
    held = [b for j, b in enumerate(blocks) if is_heldout_block(j, val_fraction)]
    return held or blocks[-1:]  # as in `data prepare`, a tiny corpus still holds something out


TOKEN_SOURCES = {"shakespeare_heldout": shakespeare_heldout_blocks}


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
    from gptqwen.eval.tasks import DEFAULT_METRICS

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
