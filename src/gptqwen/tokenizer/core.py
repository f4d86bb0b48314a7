"""`Tokenizer`: byte-level BPE with control-token safety, exact byte round trips and streaming decode.

    tok = Tokenizer.from_preset("qwen")            # the real Qwen2.5/Qwen3 vocabulary (151,669 ids)
    tok = Tokenizer.from_file("tokenizer.json")    # or a .tiktoken rank file
    ids = tok.encode("Hello 世界")                   # text typed by users never yields control tokens
    tok.decode(ids); tok.apply_chat_template(messages, enable_thinking=False)

The BPE itself runs in `tiktoken` (rank files) or `tokenizers` (tokenizer.json); see backends.py.
Control tokens: every special/added token (`<|im_start|>`, `<think>`, `<tool_call>`, ...). `encode`
spells them out as ordinary text unless `allow_special=True`; the chat renderer inserts the template's
own control tokens by id and encodes message content as plain text.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import functools
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import tokenizers

from gptqwen.errors import UserError, closest
from gptqwen.tokenizer import chat, presets
from gptqwen.tokenizer.backends import HFBackend, TiktokenBackend, bytes_to_token_string, token_string_to_bytes
from gptqwen.utils import atomic_write

_SURROGATE = re.compile("[\ud800-\udfff]")
RANK_FILE = "tokenizer.tiktoken"  # written beside tokenizer.json for tiktoken-backed vocabularies


class DecodeStream:
    """Incremental decoder: `step(id)` returns only complete UTF-8 characters (no mojibake when a
    character spans several tokens); `finish()` flushes what is left (invalid bytes become U+FFFD)."""

    def __init__(self, tokenizer: Tokenizer):
        self._tok = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def step(self, token_id: int) -> str:
        return self._utf8.decode(self._tok.decode_bytes([token_id]))

    def finish(self) -> str:
        return self._utf8.decode(b"", final=True)


class Tokenizer:
    """A byte-level BPE vocabulary plus its control tokens and chat format. Build it with a `from_*`
    constructor or `train_tokenizer`."""

    def __init__(self, backend, eos_token: str | None = None, bos_token: str | None = None,
                 pad_token: str | None = None, chat_template: str | None = None, name: str = "custom"):  # fmt: skip
        self._backend = backend
        self.name = name
        self.special_tokens: dict[str, int] = dict(backend.special_tokens)
        for role, tok in (("eos", eos_token), ("bos", bos_token), ("pad", pad_token)):
            if tok is None or tok in self.special_tokens:
                continue
            if backend.lookup(tok) is None:  # e.g. a GGUF file naming its eos as an ordinary vocab entry
                raise UserError(f"{role} token {tok!r} is not in this vocabulary; "
                                f"choose one of: {', '.join(list(self.special_tokens)[:10])}")  # fmt: skip
            self.special_tokens[tok] = backend.lookup(tok)
        self.eos_token, self.bos_token, self.pad_token = eos_token, bos_token, pad_token
        self.chat_template = chat_template
        self._special_ids = frozenset(self.special_tokens.values())

    # ----------------------------------------------------------------- constructors
    @classmethod
    def load(cls, spec: str | os.PathLike) -> Tokenizer:
        """What a `--tokenizer` option accepts: a preset name, a tokenizer.json / .tiktoken file, a
        directory holding tokenizer.json, or `encoder.json,vocab.bpe` for GPT-2's files. The one resolver of
        tokenizer specs; the tokenizer that comes with a model spec is `gptqwen.loading.load_tokenizer`."""
        text = str(spec)
        if text in presets.PRESETS and not Path(text).exists():
            return cls.from_preset(text)
        if "," in text and not Path(text).exists():
            encoder, _, bpe = text.partition(",")
            return cls.from_gpt2_files(encoder, bpe)
        if Path(text).expanduser().exists():
            return cls.from_file(text)
        raise UserError(f"no tokenizer '{text}': not a file or directory, and not a preset."
                        f"{closest(text, presets.PRESETS)} Presets: {', '.join(presets.PRESETS)}")  # fmt: skip

    @classmethod
    def from_preset(cls, name: str) -> Tokenizer:
        """`qwen` (= `qwen3`, `qwen2.5`: the Qwen2.5/Qwen3 vocabulary and chat format) or `cl100k` (GPT-4).
        `gpt2` has no vocabulary shipped here: use `Tokenizer.from_gpt2_files(encoder.json, vocab.bpe)`."""
        presets.check_preset(name)
        if name in ("qwen", "qwen3", "qwen2.5"):
            chat = "qwen2.5" if name == "qwen2.5" else "qwen3"
            return cls(_preset_backend("qwen"), eos_token="<|im_end|>", pad_token="<|endoftext|>",
                       chat_template=chat, name=name)  # fmt: skip
        if name == "cl100k":
            return cls(_preset_backend("cl100k"), eos_token="<|endoftext|>", pad_token="<|endoftext|>", name="cl100k")
        raise UserError("the gpt2 vocabulary is not shipped; pass your encoder.json and vocab.bpe files "
                        "(Tokenizer.from_gpt2_files, or --tokenizer encoder.json,vocab.bpe on the command line)")

    @classmethod
    def from_file(cls, path: str | os.PathLike, style: str | None = None) -> Tokenizer:
        """Load a `tokenizer.json` (or a directory holding one) or a `.tiktoken` rank file.

        A rank file carries no regex or control tokens: they are taken from `style` (`qwen`, `cl100k`,
        `gpt2`), or recognised from the file's size for the known vocabularies."""
        path = Path(path).expanduser()
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise UserError(f"tokenizer file '{path}' does not exist; pass a tokenizer.json, a .tiktoken file, "
                            f"a directory holding tokenizer.json, or a preset ({', '.join(presets.PRESETS)})")
        if path.suffix == ".json":
            return cls._from_tokenizer_json(path)
        ranks = load_rank_file(path)
        style = style or presets.KNOWN_RANK_FILES.get(len(ranks))
        if style is None:
            raise UserError(f"'{path}' is not one of the known rank files ({len(ranks)} ranks); "
                            f"say which split regex it uses with style='qwen', 'cl100k' or 'gpt2'")
        if style not in presets.PATTERNS:
            raise UserError(f"unknown tokenizer style '{style}'; use one of {', '.join(presets.PATTERNS)}")
        specials = _style_specials(style, len(ranks))
        backend = TiktokenBackend(ranks, presets.PATTERNS[style], specials, name=path.stem)
        eos = "<|im_end|>" if style == "qwen" else "<|endoftext|>"
        return cls(backend, eos_token=eos, pad_token="<|endoftext|>",
                   chat_template="qwen3" if style == "qwen" else None, name=path.stem)  # fmt: skip

    @classmethod
    def from_gpt2_files(cls, encoder_json: str | os.PathLike, vocab_bpe: str | os.PathLike) -> Tokenizer:
        """GPT-2's original `encoder.json` + `vocab.bpe` pair (50,257 ids)."""
        ranks = load_gpt2_files(Path(encoder_json), Path(vocab_bpe))
        backend = TiktokenBackend(ranks, presets.GPT2_PATTERN, _style_specials("gpt2", len(ranks)), name="gpt2")
        return cls(backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>", name="gpt2")

    @classmethod
    def from_hf(cls, tok: tokenizers.Tokenizer, chat_template: str | None = None, eos_token: str | None = None,
                bos_token: str | None = None, pad_token: str | None = None, name: str = "hf",
                take_ownership: bool = False) -> Tokenizer:  # fmt: skip
        """Wrap a `tokenizers.Tokenizer` (e.g. one rebuilt from GGUF metadata). With `take_ownership`
        the object may be reconfigured instead of copied (faster for large vocabularies)."""
        return cls(HFBackend(tok, owned=take_ownership), eos_token=eos_token, bos_token=bos_token,
                   pad_token=pad_token, chat_template=chat_template, name=name)  # fmt: skip

    @classmethod
    def _from_tokenizer_json(cls, path: Path) -> Tokenizer:
        cfg = _read_tokenizer_config(path.parent / "tokenizer_config.json")
        name, template = cfg.get("chat_template_name"), cfg.get("chat_template")
        if isinstance(template, list):  # the named-templates form: [{"name": "default", "template": ...}, ...]
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        if name and template in (None, chat.chat_template_jinja(name)):
            template = name  # our export: its Jinja is the shipped twin, so render natively; an edited one as written
        roles = {"eos_token": _token_str(cfg.get("eos_token")), "bos_token": _token_str(cfg.get("bos_token")),
                 "pad_token": _token_str(cfg.get("pad_token")), "chat_template": template,
                 "name": path.parent.name or "tokenizer"}  # fmt: skip
        rank_file = cfg.get("gptqwen_rank_file")
        if isinstance(rank_file, dict) and (path.parent / str(rank_file.get("file"))).is_file():
            try:
                specials = {str(k): int(v) for k, v in rank_file["special_tokens"].items()}
                backend = TiktokenBackend(load_rank_file(path.parent / rank_file["file"]), str(rank_file["pattern"]),
                                          specials, name=roles["name"])  # fmt: skip
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise UserError(f"'gptqwen_rank_file' in {path.parent / 'tokenizer_config.json'} is malformed "
                                f"({e}); delete that entry to load tokenizer.json instead") from e  # fmt: skip
            return cls(backend, **roles)
        try:
            tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # the Rust loader raises a bare Exception on malformed documents
            raise UserError(f"'{path}' is not a valid tokenizer.json ({str(e)[:200]})") from e
        return cls.from_hf(tok, take_ownership=True, **roles)

    # ----------------------------------------------------------------- ids and roles
    @property
    def vocab_size(self) -> int:
        """Number of ids, control tokens included (the embedding needs at least this many rows)."""
        return self._backend.n_vocab

    @property
    def eos_id(self) -> int | None:
        return self.special_tokens.get(self.eos_token) if self.eos_token else None

    @property
    def bos_id(self) -> int | None:
        return self.special_tokens.get(self.bos_token) if self.bos_token else None

    @property
    def pad_id(self) -> int | None:
        return self.special_tokens.get(self.pad_token) if self.pad_token else self.eos_id

    @property
    def stop_ids(self) -> set[int]:
        """Ids that end a generation: eos, plus the end-of-text / end-of-turn tokens the vocabulary has."""
        names = {self.eos_token, "<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>"}
        return {self.special_tokens[n] for n in names if n in self.special_tokens}

    def token_to_id(self, token: str) -> int | None:
        """Id of a control token or a vocabulary entry spelled as in tokenizer.json (e.g. 'Ġhello')."""
        return self._backend.lookup(token)

    def id_to_token(self, token_id: int) -> str:
        if token_id in self._special_ids:
            return self._backend.token_bytes[token_id].decode()
        return bytes_to_token_string(self.token_bytes(token_id))

    def token_bytes(self, token_id: int) -> bytes:
        b = self._backend.token_bytes[token_id] if 0 <= token_id < self.vocab_size else None
        if b is None:
            raise ValueError(f"token id {token_id} is not in this vocabulary (size {self.vocab_size})")
        return b

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    # ----------------------------------------------------------------- encode / decode
    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Encode text. Control-token strings in `text` become plain text unless `allow_special`."""
        if not text.isascii() and _SURROGATE.search(text):
            # Lone surrogates come from bytes decoded with 'surrogateescape': encode those bytes exactly.
            try:
                raw = text.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                raw = text.encode("utf-8", "replace")
            return self.encode_bytes(raw, allow_special)
        if allow_special:
            return self._backend.encode_special(text)
        return self._backend.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], allow_special: bool = False, num_threads: int | None = None,
                     return_numpy: bool = False) -> list[list[int]] | list[np.ndarray]:  # fmt: skip
        """Encode many texts on `num_threads` threads (default: one per CPU core). With `return_numpy`
        each result is a uint32 array: the fast form for data preparation, since building Python int
        lists is the part of encoding that cannot run in parallel."""
        texts = list(texts)
        if any(not t.isascii() and _SURROGATE.search(t) for t in texts):
            ids = [self.encode(t, allow_special) for t in texts]
            return [np.asarray(x, dtype=np.uint32) for x in ids] if return_numpy else ids
        threads = num_threads or min(len(texts), os.cpu_count() or 1) or 1
        return self._backend.encode_batch(texts, allow_special, threads, arrays=return_numpy)

    def encode_bytes(self, data: bytes, allow_special: bool = False) -> list[int]:
        """Encode arbitrary bytes: valid UTF-8 runs as text, invalid byte runs by BPE on the raw bytes."""
        ids: list[int] = []
        for chunk, valid in _utf8_runs(data):
            if valid:
                ids += self.encode(chunk.decode("utf-8"), allow_special)
            else:
                ids += self._backend.encode_piece(chunk)
        return ids

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The exact bytes the ids stand for (the inverse of `encode_bytes`)."""
        ids = ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]  # tensors and arrays too
        try:
            return self._backend.decode_bytes(ids)
        except (KeyError, IndexError, ValueError, OverflowError, TypeError):
            bad = [i for i in ids if not (0 <= i < self.vocab_size) or self._backend.token_bytes[i] is None]
            raise ValueError(f"token ids not in this vocabulary (size {self.vocab_size}): {bad[:5]}") from None

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Decode ids to text; bytes that are not valid UTF-8 become U+FFFD (use decode_bytes for exact bytes)."""
        if skip_special:
            ids = [i for i in ids if i not in self._special_ids]
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_stream(self) -> DecodeStream:
        return DecodeStream(self)

    # ----------------------------------------------------------------- chat
    def apply_chat_template(self, messages: list[dict], tools: list[dict] | None = None,
                            add_generation_prompt: bool = True, enable_thinking: bool = True,
                            tokenize: bool = False, **kwargs) -> str | list[int]:  # fmt: skip
        """Render a conversation in this tokenizer's chat format (text, or ids with `tokenize=True`)."""
        return chat.apply_chat_template(self, messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                        enable_thinking=enable_thinking, tokenize=tokenize, **kwargs)  # fmt: skip

    def render_for_sft(self, messages: list[dict], tools: list[dict] | None = None,
                       enable_thinking: bool = True) -> tuple[list[int], list[int]]:  # fmt: skip
        """Ids of a whole conversation and a 0/1 mask that is 1 exactly on assistant-generated tokens."""
        return chat.render_for_sft(self, messages, tools=tools, enable_thinking=enable_thinking)

    # ----------------------------------------------------------------- save
    def to_tokenizers(self) -> tokenizers.Tokenizer:
        """This vocabulary as a `tokenizers.Tokenizer` (the engine behind transformers' fast tokenizers)."""
        if isinstance(self._backend, HFBackend):
            return self._backend.full
        return tokenizers.Tokenizer.from_str(json.dumps(self._backend.to_json()))

    def save(self, directory: str | os.PathLike) -> Path:
        """Write tokenizer.json + tokenizer_config.json, loadable by transformers' PreTrainedTokenizerFast
        and by `Tokenizer.from_file(directory)`."""
        directory = Path(directory)
        doc = self._backend.to_json()
        with atomic_write(directory / "tokenizer.json") as f:
            f.write(json.dumps(doc, ensure_ascii=False))
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1 << 30,
               "eos_token": self.eos_token, "bos_token": self.bos_token, "pad_token": self.pad_token,
               "clean_up_tokenization_spaces": False, "add_prefix_space": False}  # fmt: skip
        if isinstance(self._backend, TiktokenBackend):
            # Also keep the rank file: `from_file` then runs tiktoken again (faster to load and encode).
            ranks = sorted(self._backend.ranks.items(), key=lambda kv: kv[1])
            with atomic_write(directory / RANK_FILE) as f:
                f.write("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks))
            cfg["gptqwen_rank_file"] = {"file": RANK_FILE, "pattern": self._backend.pattern,
                                        "special_tokens": self._backend.special_tokens}  # fmt: skip
        if self.chat_template in ("qwen3", "qwen2.5"):
            cfg["chat_template_name"] = self.chat_template  # rendered natively by gptqwen
        elif self.chat_template:
            cfg["chat_template"] = self.chat_template
        with atomic_write(directory / "tokenizer_config.json") as f:
            json.dump(cfg, f, indent=2, ensure_ascii=False)
        return directory

    def __repr__(self) -> str:
        return (f"Tokenizer({self.name!r}, vocab_size={self.vocab_size}, specials={len(self.special_tokens)}, "
                f"eos={self.eos_token!r}, chat_template={_template_label(self.chat_template)!r})")  # fmt: skip


def _template_label(t: str | None) -> str | None:
    return t if t is None or len(t) < 20 else "jinja"


def load_rank_file(path: str | os.PathLike) -> dict[bytes, int]:
    """Parse a tiktoken rank file: one `base64(token) rank` pair per line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read rank file '{path}': {e.strerror}") from e
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            raise UserError(f"'{path}' line {lineno} is not a tiktoken rank line ('<base64 token> <rank>'): "
                            f"{line[:60]!r}; is this really a .tiktoken file?") from None  # fmt: skip
    if not ranks:
        raise UserError(f"rank file '{path}' is empty")
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise UserError(f"rank file '{path}' is malformed: ranks must be 0..{len(ranks) - 1}, each once")
    if any(bytes([b]) not in ranks for b in range(256)):
        raise UserError(f"rank file '{path}' lacks some of the 256 single-byte tokens, so it is not byte-level BPE")
    return ranks


def load_gpt2_files(encoder_json: Path, vocab_bpe: Path) -> dict[bytes, int]:
    """Ranks from GPT-2's file pair: encoder.json maps byte-level token strings to ids, and vocab.bpe
    lists the merges in order, merge k creating the token with id 256 + k; both must agree."""
    for p in (encoder_json, vocab_bpe):
        if not p.is_file():
            raise UserError(f"GPT-2 vocabulary file '{p}' does not exist; pass encoder.json and vocab.bpe")
    bad = f"'{encoder_json}' and '{vocab_bpe}' are not a valid GPT-2 encoder.json/vocab.bpe pair"
    try:
        encoder = json.loads(encoder_json.read_text(encoding="utf-8"))
        merges = [line.split() for line in vocab_bpe.read_text(encoding="utf-8").splitlines()[1:] if line.strip()]
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{bad} ({e})") from e
    if not isinstance(encoder, dict):
        raise UserError(f"{bad} (encoder.json must be a JSON object)")
    ranks: dict[bytes, int] = {}
    for token, i in encoder.items():
        if token in ("<|endoftext|>", "<|startoftext|>"):
            continue
        b = token_string_to_bytes(token)
        if b is None or not isinstance(i, int):
            raise UserError(f"{bad} (encoder.json entry {token!r}: {i!r} is not a byte-level token)")
        ranks[b] = i
    for k, pair in enumerate(merges):
        merged = token_string_to_bytes("".join(pair)) if len(pair) == 2 else None
        if merged is None or ranks.get(merged) != 256 + k:
            raise UserError(f"{bad} (merge {k + 1} {' '.join(pair)!r} does not create the token with id {256 + k})")
    if len(ranks) != 256 + len(merges):
        raise UserError(f"{bad} ({len(ranks)} tokens in encoder.json but 256 bytes + {len(merges)} merges)")
    return ranks


@functools.cache
def _preset_backend(family: str) -> TiktokenBackend:
    # Shared between Tokenizer objects: a backend is never modified after construction.
    if family == "qwen":
        specials = {t: presets.QWEN_N_BPE + k for k, t in enumerate(presets.QWEN_SPECIAL_TOKENS)}
        return TiktokenBackend(load_rank_file(presets.qwen_rank_file()), presets.QWEN_PATTERN, specials, name="qwen")
    ranks = load_rank_file(presets.cl100k_rank_file())
    return TiktokenBackend(ranks, presets.CL100K_PATTERN, presets.CL100K_SPECIAL_TOKENS, name="cl100k")


def _style_specials(style: str, n_ranks: int) -> dict[str, int]:
    if style == "qwen":
        return {t: n_ranks + k for k, t in enumerate(presets.QWEN_SPECIAL_TOKENS)}
    if style == "cl100k" and n_ranks == 100256:
        return dict(presets.CL100K_SPECIAL_TOKENS)
    return {"<|endoftext|>": n_ranks}


def _read_tokenizer_config(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"'{path}' is not valid JSON ({e}); fix or delete it") from e
    return cfg if isinstance(cfg, dict) else {}


def _token_str(value) -> str | None:
    # tokenizer_config.json stores tokens either as strings or as AddedToken dicts.
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _utf8_runs(data: bytes) -> Iterable[tuple[bytes, bool]]:
    """Split bytes into maximal valid-UTF-8 runs and runs of bytes that cannot be decoded."""
    pos, n, bad = 0, len(data), bytearray()
    while pos < n:
        try:
            data[pos:].decode("utf-8")
            valid_end = bad_end = n
        except UnicodeDecodeError as e:
            valid_end, bad_end = pos + e.start, pos + e.end
        if valid_end > pos:
            if bad:
                yield bytes(bad), False
                bad = bytearray()
            yield data[pos:valid_end], True
        bad += data[valid_end:bad_end]
        pos = bad_end
    if bad:
        yield bytes(bad), False
