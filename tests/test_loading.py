"""The one resolver of each kind: model specs (`gptqwen.loading`), dtype names and devices (`gptqwen.utils`)."""

from __future__ import annotations

import pytest
import torch

from gptqwen.cli import main
from gptqwen.config import Config
from gptqwen.errors import UserError
from gptqwen.loading import from_pretrained, load_model_and_tokenizer, load_tokenizer
from gptqwen.model import Transformer
from gptqwen.tokenizer import Tokenizer
from gptqwen.utils import parse_dtype, pick_device


@pytest.mark.parametrize("name, want", [("float32", torch.float32), ("fp32", torch.float32), ("bf16", torch.bfloat16),
                                        ("BFloat16", torch.bfloat16), ("fp16", torch.float16), ("half", torch.float16),
                                        (torch.float16, torch.float16)])
def test_parse_dtype_names(name, want):
    assert parse_dtype(name) is want


@pytest.mark.parametrize("bad", ["float8", "int8", "", "torch.float32"])
def test_parse_dtype_rejects_unknown_names(bad):
    with pytest.raises(UserError, match="unknown dtype"):
        parse_dtype(bad)


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(None).type in ("cpu", "cuda", "mps")  # None and "auto" pick the best available
    assert pick_device("auto") == pick_device(None)
    with pytest.raises(UserError, match="unknown device 'gpu0'"):
        pick_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            pick_device("cuda")


def test_model_specs_resolve_and_bad_paths_fail_kindly(tmp_path):
    model, tok = load_model_and_tokenizer("qwen3-tiny", dtype="bf16", device="cpu", random_weights=True)
    assert isinstance(model, Transformer) and tok is None and next(model.parameters()).dtype is torch.bfloat16
    with pytest.raises(UserError, match="unknown dtype"):
        load_model_and_tokenizer("qwen3-tiny", dtype="float8", random_weights=True)
    with pytest.raises(UserError, match="does not exist"):
        load_model_and_tokenizer(str(tmp_path / "missing" / "model"))
    with pytest.raises(UserError, match="does not exist"):
        load_model_and_tokenizer(str(tmp_path / "missing.gguf"))
    with pytest.raises(UserError, match="Did you mean"):
        load_model_and_tokenizer("qwen3-tinny")
    with pytest.raises(UserError, match="has no config.json"):
        from_pretrained(tmp_path)  # a folder, but not a checkpoint
    with pytest.raises(UserError, match="gptqwen run folder"):
        load_tokenizer(tmp_path)  # neither an HF checkpoint nor a run


def test_hf_directory_round_trip_with_its_tokenizer(tmp_path):
    cfg = Config.from_name("qwen3-tiny")
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    model.save_pretrained(tmp_path / "hf")
    loaded, tok = load_model_and_tokenizer(str(tmp_path / "hf"))
    assert tok is None  # saved without a tokenizer
    ids = torch.randint(0, cfg.vocab_size, (1, 8))
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert from_pretrained(tmp_path / "hf", dtype="auto").lm_head.weight.dtype is torch.float32
    Tokenizer.from_preset("qwen").save(tmp_path / "hf")
    assert load_tokenizer(tmp_path / "hf").vocab_size == Tokenizer.from_preset("qwen").vocab_size


def test_run_directory_tokenizer_found_from_a_checkpoint_folder(tmp_path):
    tok = Tokenizer.from_preset("qwen")
    tok.save(tmp_path / "run" / "tokenizer")
    (tmp_path / "run" / "ckpt_0000004").mkdir()
    assert load_tokenizer(tmp_path / "run" / "ckpt_0000004").vocab_size == tok.vocab_size


def test_a_preset_is_refused_unless_random_weights_are_asked_for(capsys):
    """A preset is an architecture, not a model: loading one for inference needs random_weights / --random-weights
    (it used to build random weights silently, with the real vocabulary for full-size Qwen presets)."""
    with pytest.raises(UserError, match="'qwen3-0.6b' is a preset.*not a trained model.*Qwen/Qwen3-0.6B.*--random-weights"):
        load_model_and_tokenizer("qwen3-0.6b")
    with pytest.raises(UserError, match="235.*B parameters.*more than this machine's"):
        load_model_and_tokenizer("qwen3-235b-a22b", random_weights=True)  # refused before any allocation
    for verb in (["generate", "--prompt", "hi"], ["chat"], ["serve"], ["tools", "eval"], ["eval", "--task", "copy"]):
        assert main([*verb, "--model", "qwen3-0.6b"]) == 2
        assert "is a preset" in capsys.readouterr().err, verb
    # with the flag the preset is built; qwen3-tiny then fails only for lack of a vocabulary
    for verb in (["generate", "--prompt", "hi"], ["eval", "--task", "copy"]):
        assert main([*verb, "--model", "qwen3-tiny", "--random-weights"]) == 2
        assert "has no tokenizer" in capsys.readouterr().err, verb
