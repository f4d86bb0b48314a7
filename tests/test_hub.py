"""Hugging Face Hub ids as model specs, against a local folder laid out like the Hub cache (no network):
cache hits load, misses offline / without network / without huggingface_hub are clear UserErrors, and what counts
as a Hub id.

    OMP_NUM_THREADS=1 .venv/bin/pytest -q tests/test_hub.py
"""

from __future__ import annotations

import sys

import pytest
import torch

from gptqwen import hub
from gptqwen.cli import main
from gptqwen.config import Config
from gptqwen.errors import UserError
from gptqwen.hf import save_pretrained
from gptqwen.loading import from_pretrained, load_model_and_tokenizer
from gptqwen.model import Transformer
from gptqwen.tokenizer import train_tokenizer

pytest.importorskip("huggingface_hub")
REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """HF_HUB_CACHE at a fresh folder holding `Org/Tiny` (a tiny Qwen3 with a tokenizer), as the Hub lays it out:
    models--Org--Tiny/snapshots/<revision>/... and refs/main naming the revision. Returns (cache, model)."""
    root = tmp_path / "hub"
    repo = root / "models--Org--Tiny"
    torch.manual_seed(0)
    model = Transformer(Config.from_name("qwen3-tiny", n_layer=1, vocab_size=300)).eval()
    tok = train_tokenizer(["the cat sat on the mat"] * 20, vocab_size=300, style="qwen")
    save_pretrained(model, repo / "snapshots" / REV, tokenizer=tok)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return root, model


def test_hub_id_loads_from_the_cache(cache):
    _, model = cache
    loaded, tok = load_model_and_tokenizer("Org/Tiny")
    assert loaded.config.name == "Tiny" and tok is not None and tok.chat_template == "qwen3"
    ids = torch.randint(0, 300, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    assert from_pretrained("Org/Tiny").config.n_layer == 1


def test_hub_id_on_the_command_line(cache, capsys):
    assert main(["generate", "--model", "Org/Tiny", "--prompt", "the cat", "--max-new-tokens", "3",
                 "--temperature", "0"]) == 0  # fmt: skip
    assert capsys.readouterr().out.strip()


def test_not_cached_offline_says_so(cache):
    with pytest.raises(UserError, match="not in the local cache.*HF_HUB_OFFLINE is set.*hf download Org/Other"):
        from_pretrained("Org/Other")


def test_not_cached_without_network_says_so(cache, monkeypatch):
    """Online mode with an unreachable Hub (a closed local port as the endpoint)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(UserError, match="not in the local cache and the Hub could not be reached"):
        from_pretrained("Org/Other")


def test_incomplete_snapshot_offline_is_not_used(cache):
    root, _ = cache
    (root / "models--Org--Part" / "snapshots" / REV).mkdir(parents=True)
    (root / "models--Org--Part" / "snapshots" / REV / "config.json").write_text("{}")
    (root / "models--Org--Part" / "refs").mkdir()
    (root / "models--Org--Part" / "refs" / "main").write_text(REV)
    with pytest.raises(UserError, match="not in the local cache"):
        from_pretrained("Org/Part")


def test_without_huggingface_hub_names_the_package(cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # `import huggingface_hub` now fails
    with pytest.raises(UserError, match=r"needs the 'huggingface_hub' package.*gptqwen\[hub\]"):
        from_pretrained("Org/Tiny")


def test_what_counts_as_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert hub.is_hub_id("Qwen/Qwen3-0.6B") and hub.is_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct")
    for spec in ("qwen3-tiny", "a/b/c", "Qwen/model.gguf", "Qwen/config.json", "./Qwen/x", "/abs/path", "a--b/c", "a/.."):
        assert not hub.is_hub_id(spec), spec
    (tmp_path / "runs").mkdir()  # a typo below an existing folder is a path, not a Hub id
    assert not hub.is_hub_id("runs/qwen3-shakespear")
    with pytest.raises(UserError, match="model path 'runs/qwen3-shakespear' does not exist"):
        from_pretrained("runs/qwen3-shakespear")


@pytest.mark.parametrize("error, message", [("RepositoryNotFoundError", "has no model by that name"),
                                            ("GatedRepoError", "says the model is gated")])
def test_unknown_or_gated_repo_is_a_user_error(cache, monkeypatch, error, message):
    """What the Hub answers for a misspelt (or private) id and for a gated model, as one clear error each."""
    import httpx
    from huggingface_hub import errors

    response = httpx.Response(404 if "NotFound" in error else 403, request=httpx.Request("GET", "https://hf.test"))

    def answer(repo_id, local_files_only=False, **kwargs):
        if local_files_only:
            raise errors.LocalEntryNotFoundError("not cached")
        raise getattr(errors, error)("Hub says no", response=response)

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.snapshot_download", answer)
    with pytest.raises(UserError, match=f"'Org/Typo' is not a local path, and the Hugging Face Hub {message}"):
        from_pretrained("Org/Typo")
