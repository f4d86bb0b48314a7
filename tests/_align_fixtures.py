"""Fixtures the alignment tests share: the demo tokenizer and a tiny Qwen3 saved with it (embedding = its vocabulary)."""

import pytest
import torch

from gptqwen.config import Config
from gptqwen.finetune.synthetic import demo_tokenizer
from gptqwen.model import Transformer


@pytest.fixture(scope="module")
def tok():
    return demo_tokenizer(400)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    Transformer(Config.from_name("qwen3-tiny", vocab_size=tok.vocab_size)).save_pretrained(d)
    tok.save(d)
    return d
