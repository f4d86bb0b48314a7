"""gptqwen: one PyTorch codebase for the GPT and Qwen model lineage.

Public API (imported lazily so `import gptqwen` stays cheap):
    Config, from_pretrained, Tokenizer, Engine, UserError
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from gptqwen.errors import UserError

__version__ = "0.1.0"

_LAZY = {
    "Config": "gptqwen.config",
    "Transformer": "gptqwen.model",
    "from_pretrained": "gptqwen.loading",
    "Tokenizer": "gptqwen.tokenizer",
    "Engine": "gptqwen.infer",
}

__all__ = ["UserError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gptqwen' has no attribute {name!r}")
