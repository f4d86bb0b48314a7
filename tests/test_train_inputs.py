"""`gptqwen pretrain` on bad input: one-line errors (exit 2), and nothing created or overwritten.

Covers the trainer's end of issue 4's list: empty corpus, non-UTF-8 files (fail, or skip by flag),
corrupt or truncated shards, corrupt checkpoints, out-of-range settings. The data stage's own checks
(unreadable files, malformed JSONL, checksums) are tested in test_prepare.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from gptqwen.cli import main
from gptqwen.data.sources import shakespeare_files, shakespeare_plain
from gptqwen.train.trainer import pretrain
from test_train import tiny_data, tiny_recipe  # noqa: F401  (tiny_data is a fixture)


def pretrain_cli(tmp_path: Path, sources: list[str], *extra: str) -> int:
    raw = tiny_recipe(tmp_path / "ds", max_steps=1, eval_interval=0, ckpt_interval=0).to_dict()
    raw["data"].update(sources=sources, train_vocab=300, val_fraction=0.0)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(raw))
    return main(["pretrain", "--config", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "run"), "--quiet", *extra])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


def test_empty_corpus(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    assert pretrain_cli(tmp_path, [str(tmp_path / "empty.txt")]) == 2
    assert "empty" in one_line_error(capsys)
    assert not (tmp_path / "ds").exists() and not (tmp_path / "run").exists()


def test_non_utf8_file_fails_or_is_skipped(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "plays.txt").write_text(shakespeare_plain(shakespeare_files()[0].read_text())[:20_000])
    (corpus / "latin1.txt").write_bytes("Fair Verona, où nous plaçons notre scène".encode("latin-1"))
    assert pretrain_cli(tmp_path, [str(corpus)]) == 2
    err = one_line_error(capsys)
    assert "latin1.txt' is not valid UTF-8" in err and "skip" in err
    assert not (tmp_path / "ds").exists() and not (tmp_path / "run").exists()

    assert pretrain_cli(tmp_path, [str(corpus)], "data.on_error=skip") == 0
    assert "latin1.txt' is not valid UTF-8" in capsys.readouterr().err  # a warning naming the file
    assert (tmp_path / "run" / "ckpt_0000001").is_dir()


@pytest.mark.parametrize("damage, message", [("truncate", "truncated or corrupt"), ("grow", "truncated or corrupt"),
                                             ("flip", "checksum")])  # fmt: skip
def test_corrupt_or_truncated_shard(tmp_path, tiny_data, damage, message):  # noqa: F811
    from gptqwen.errors import UserError

    data = tmp_path / "ds"
    shutil.copytree(tiny_data, data)
    shard = data / "train_000000.bin"
    raw = bytearray(shard.read_bytes())
    if damage == "flip":
        raw[100] ^= 0xFF
    shard.write_bytes(raw[: len(raw) // 2] if damage == "truncate" else raw + b"\0\0" if damage == "grow" else raw)
    with pytest.raises(UserError, match=message):
        pretrain(tiny_recipe(data, max_steps=1), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_corrupt_gathered_checkpoint(tmp_path, tiny_data, capsys):  # noqa: F811
    from gptqwen.errors import UserError

    run = tmp_path / "run"
    pretrain(tiny_recipe(tiny_data, max_steps=2, ckpt_interval=0), run, quiet=True)
    weights = run / "ckpt_0000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match="model.safetensors cannot be read"):
        pretrain(tiny_recipe(tiny_data, max_steps=4, ckpt_interval=0), run, resume=True, quiet=True)
    assert main(["export", str(run), str(tmp_path / "hf")]) == 2
    assert "cannot be read" in one_line_error(capsys) and not (tmp_path / "hf").exists()
    (run / "ckpt_0000002" / "state.json").write_text("{not json")
    with pytest.raises(UserError, match="state.json is unreadable"):
        pretrain(tiny_recipe(tiny_data, max_steps=4, ckpt_interval=0), run, resume=True, quiet=True)
    before.pop(run / "ckpt_0000002" / "state.json")
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != "state.json"} == before


@pytest.mark.parametrize("override, message", [
    ("train.ckpt_format=zip", "train.ckpt_format = 'zip' is out of range; it must be gathered or sharded"),
    ("train.keep_last=0", "train.keep_last = 0 is out of range"),
    ("train.seq_len=1", "train.seq_len = 1 is out of range"),
    ("data.on_error=ignore", "data.on_error = 'ignore' is out of range; it must be fail or skip"),
    ("train.tensorboard=maybe", "train.tensorboard must be true or false"),
])  # fmt: skip
def test_out_of_range_settings(tmp_path, capsys, override, message):
    assert main(["pretrain", override, "--out", str(tmp_path / "run")]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "run").exists()
