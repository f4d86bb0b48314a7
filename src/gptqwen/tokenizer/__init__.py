"""Byte-level BPE tokenizers: the real Qwen and GPT-4 vocabularies, training, and the Qwen chat format.

    from gptqwen.tokenizer import Tokenizer, train_tokenizer
    tok = Tokenizer.from_preset("qwen")
    tok = train_tokenizer(["some text", ...], vocab_size=4096, style="qwen")

Modules: core.py (Tokenizer), backends.py (tiktoken / tokenizers engines), train.py (training),
chat.py (chat templates, SFT masks, parsing generated turns), stats.py (compression statistics).
"""

from gptqwen.tokenizer.core import Tokenizer
from gptqwen.tokenizer.train import train_tokenizer

__all__ = ["Tokenizer", "train_tokenizer"]
