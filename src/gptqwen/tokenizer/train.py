"""Train a byte-level BPE vocabulary in a family's style (`gptqwen tokenizer train`).

    tok = train_tokenizer([text1, text2], vocab_size=4096, style="qwen")
    tok = train_tokenizer([Path("a.txt"), Path("b.txt")], vocab_size=8192, style="gpt2")

The `tokenizers` BPE trainer does the counting and merging (multi-threaded, with a progress bar).
The style fixes the split regex (Qwen splits digits one by one, GPT-2 keeps digit runs) and the
control tokens, which are appended after the learned tokens as in the real vocabularies.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from gptqwen.errors import UserError
from gptqwen.tokenizer import presets
from gptqwen.tokenizer.backends import onig_pattern
from gptqwen.tokenizer.core import Tokenizer

_BATCH_CHARS = 1 << 20  # hand the trainer ~1 MB at a time so its threads have work to share


def train_tokenizer(texts: Iterable[str] | Iterable[os.PathLike], vocab_size: int, style: str = "qwen",
                    special_tokens: list[str] | None = None, show_progress: bool = True,
                    min_frequency: int = 2) -> Tokenizer:  # fmt: skip
    """Learn a vocabulary of `vocab_size` ids (control tokens included) from strings or text files.

    Items that are `os.PathLike` are read as UTF-8 files; plain strings are training text.
    """
    if style not in presets.STYLE_DEFAULTS:
        raise UserError(f"unknown tokenizer style '{style}'; use one of: {', '.join(presets.STYLE_DEFAULTS)}")
    defaults = presets.STYLE_DEFAULTS[style]
    specials = list(dict.fromkeys(special_tokens if special_tokens is not None else defaults["special_tokens"]))
    n_bpe = vocab_size - len(specials)
    if n_bpe < 256:
        raise UserError(f"vocab size {vocab_size} is too small: byte-level BPE needs the 256 byte tokens plus "
                        f"{len(specials)} control tokens, so use --vocab-size {256 + len(specials)} or more")  # fmt: skip

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(onig_pattern(presets.PATTERNS[style])), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=False),
    ])  # fmt: skip
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=n_bpe, min_frequency=min_frequency, show_progress=show_progress,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[],
    )  # fmt: skip
    seen = _Counter()
    tok.train_from_iterator(seen.wrap(_batches(texts)), trainer=trainer)
    if seen.chars == 0 or not seen.any_text:
        raise UserError("the training corpus is empty; pass text files with some content")
    tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in specials])

    eos = defaults["eos"] if defaults["eos"] in specials else (specials[0] if specials else None)
    pad = defaults["pad"] if defaults["pad"] in specials else eos
    chat = defaults["chat"] if all(t in specials for t in ("<|im_start|>", "<|im_end|>")) else None
    return Tokenizer.from_hf(tok, chat_template=chat, eos_token=eos, pad_token=pad, name=f"trained-{style}",
                              take_ownership=True)


class _Counter:
    """Counts what flows into the trainer, to tell an empty corpus apart from a small one."""

    def __init__(self) -> None:
        self.chars, self.any_text = 0, False

    def wrap(self, batches: Iterator[list[str]]) -> Iterator[list[str]]:
        for batch in batches:
            for s in batch:
                self.chars += len(s)
                self.any_text = self.any_text or bool(s.strip())
            yield batch


def _batches(items: Iterable) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for item in items:
        for text in _read(item):
            batch.append(text)
            size += len(text)
            if size >= _BATCH_CHARS:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


def _read(item) -> Iterator[str]:
    if isinstance(item, str):
        yield item
        return
    if not isinstance(item, os.PathLike):
        raise UserError(f"training input must be strings or file paths, got {type(item).__name__}")
    path = Path(item)
    if not path.is_file():
        raise UserError(f"training file '{path}' does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            # Line-sized pieces let the trainer spread one big file over its threads.
            yield from f
    except UnicodeDecodeError as e:
        raise UserError(f"training file '{path}' is not UTF-8 text (bad byte at offset {e.start}); "
                        f"convert it first, e.g. iconv -t utf-8") from e  # fmt: skip
