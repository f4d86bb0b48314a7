"""`gptqwen data prepare`: sources, shards, the split, and every bad-input path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gptqwen.data import prepare as prep
from gptqwen.data.shards import TokenDataset, dtype_for_vocab, read_index
from gptqwen.data.sources import SourceSpec, iter_documents, shakespeare_files, shakespeare_plain
from gptqwen.errors import UserError
from gptqwen.tokenizer import Tokenizer

DOCS = [
    "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n",
    "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\nDeny thy father and refuse thy name.\n" * 3,
    "HAMLET:\nTo be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 5,
    "Ünïcödé line with émojis 🎭 and more text to tokenize.\n" * 4,
]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    from gptqwen.tokenizer import train_tokenizer

    d = tmp_path_factory.mktemp("tok")
    train_tokenizer(DOCS * 3, 300, style="qwen").save(d)
    return d


@pytest.fixture
def corpus(tmp_path) -> Path:
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text(DOCS[0])
    (root / "sub" / "b.md").write_text(DOCS[1])
    with open(root / "c.jsonl", "w") as f:
        for d in DOCS[2:]:
            f.write(json.dumps({"text": d}) + "\n")
    return root


def _stream(out: Path, block: int, f: float) -> list[int]:
    """Re-interleave train and val blocks by the split rule: the original token stream."""
    train, val = TokenDataset(out, "train"), TokenDataset(out, "val")
    parts, ti, vi, j = [], 0, 0, 0
    while ti < len(train) or vi < len(val):
        to_val = int((j + 1) * f) > int(j * f) if ti < len(train) else True
        src, pos = (val, vi) if to_val and vi < len(val) else (train, ti)
        n = min(block, len(src) - pos)
        parts.append(src.read(pos, n))
        if src is val:
            vi += n
        else:
            ti += n
        j += 1
    return np.concatenate(parts).tolist()


def test_roundtrip_exact_ids(tmp_path, corpus, tokenizer_dir):
    tok = Tokenizer.load(str(tokenizer_dir))
    sep = prep.document_separator(tok)
    files = [corpus / "a.txt", corpus / "c.jsonl", corpus / "sub" / "b.md"]  # sorted folder order
    texts = [DOCS[0], DOCS[2], DOCS[3], DOCS[1]]
    assert [p.source for p in iter_documents([str(corpus)])] == [str(files[0]), f"{files[1]}#0", f"{files[1]}#1", str(files[2])]
    expected = [i for t in texts for i in tok.encode(t) + [sep]]
    out = tmp_path / "ds"
    index = prep.prepare([str(corpus)], out, tokenizer=str(tokenizer_dir), val_fraction=0.25, block_tokens=16,
                         shard_tokens=40, progress=False)
    assert index["dtype"] == "uint16" and index["meta"]["documents"] == 4
    assert len(index["splits"]["train"]) > 1  # rolled over into several shards
    assert _stream(out, 16, 0.25) == expected
    assert index["meta"]["tokens"]["val"] == pytest.approx(len(expected) / 4, abs=16)
    train = TokenDataset(out, "train", verify=True)
    assert train.read(35, 10).tolist() == np.concatenate([train.read(35, 5), train.read(40, 5)]).tolist()  # across shards
    assert TokenDataset(out, "val").read(0, 16).tolist() == expected[48:64]  # block j=3 is the first validation block


def test_workers_do_not_change_output(tmp_path, corpus, tokenizer_dir):
    a = prep.prepare([str(corpus)], tmp_path / "a", tokenizer=str(tokenizer_dir), block_tokens=8, progress=False)
    b = prep.prepare([str(corpus)], tmp_path / "b", tokenizer=str(tokenizer_dir), block_tokens=8, workers=2, progress=False)
    assert a["splits"] == b["splits"]


def test_trained_tokenizer_single_file_gets_val_split(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("".join(DOCS) * 2)
    index = prep.prepare([str(f)], tmp_path / "ds", train_vocab=300, val_fraction=0.1, block_tokens=32, progress=False)
    tok = Tokenizer.load(str(tmp_path / "ds" / "tokenizer"))  # the tokenizer trained on the file, saved beside
    assert tok.vocab_size == index["vocab_size"] == 300
    stream = tok.encode(f.read_text()) + [prep.document_separator(tok)]
    assert _stream(tmp_path / "ds", 32, 0.1) == stream
    blocks = [len(stream[i:i + 32]) for i in range(0, len(stream), 32)]  # every 10th block is validation
    assert index["meta"]["tokens"] == {"train": len(stream) - sum(blocks[9::10]), "val": sum(blocks[9::10])}
    assert sum(blocks[9::10]) > 0 and index["bytes_per_token"] == pytest.approx(len(f.read_bytes()) / len(stream), abs=1e-3)


def test_weights_and_builtin_sources():
    plays = shakespeare_files()
    assert len(plays) == 38 and plays == sorted(plays)  # the First Folio's 36, Pericles and Edward III
    text = shakespeare_plain(plays[0].read_text())
    assert "**" not in text and ":\n" in text
    docs = list(iter_documents(["synthetic:arithmetic:50@2"]))
    assert len(docs) == 100 and docs[0].text == docs[1].text and "Answer:" in docs[0].text
    half = list(iter_documents([{"source": "synthetic:arithmetic:400", "weight": 0.5}]))
    assert len(half) == 200
    with pytest.raises(UserError, match="out of range"):
        SourceSpec.parse("x@0")


def test_dtype_for_vocab():
    assert dtype_for_vocab(65536) == np.uint16 and dtype_for_vocab(151_936) == np.uint32


# ---------------------------------------------------------------- bad input


def test_empty_corpus(tmp_path, tokenizer_dir):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="empty"):
        prep.prepare([str(tmp_path / "empty.txt")], tmp_path / "ds", tokenizer=str(tokenizer_dir), progress=False)
    assert not (tmp_path / "ds").exists()
    with pytest.raises(UserError, match="no data sources"):
        prep.prepare([], tmp_path / "ds", tokenizer=str(tokenizer_dir))


def test_non_utf8_fails_or_skips(tmp_path, corpus, tokenizer_dir, capsys):
    (corpus / "bad.txt").write_bytes(b"fine text\n\xff\xfe broken")
    with pytest.raises(UserError, match=r"bad\.txt' is not valid UTF-8 \(byte offset 10\).*--on-error skip"):
        prep.prepare([str(corpus)], tmp_path / "ds", tokenizer=str(tokenizer_dir), progress=False)
    assert not (tmp_path / "ds").exists()
    index = prep.prepare([str(corpus)], tmp_path / "ds", tokenizer=str(tokenizer_dir), on_error="skip", progress=False)
    assert index["meta"]["documents"] == 4
    assert "bad.txt' is not valid UTF-8 (byte offset 10); skipped" in capsys.readouterr().err


def test_unreadable_file_and_bad_jsonl(tmp_path, corpus, tokenizer_dir, monkeypatch):
    (corpus / "d.jsonl").write_text('{"text": "ok"}\n{not json}\n')
    with pytest.raises(UserError, match=r"d\.jsonl:2: malformed JSON"):
        prep.prepare([str(corpus / "d.jsonl")], tmp_path / "ds", tokenizer=str(tokenizer_dir), progress=False)
    (corpus / "d.jsonl").write_text('{"body": "ok"}\n')
    with pytest.raises(UserError, match="record has no 'text' field"):
        prep.prepare([str(corpus / "d.jsonl")], tmp_path / "ds", tokenizer=str(tokenizer_dir), progress=False)
    real_open = open

    def guarded(path, *a, **k):
        if str(path).endswith("a.txt"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", guarded)
    with pytest.raises(UserError, match=r"a\.txt' cannot be read \(Permission denied\)"):
        prep.prepare([str(corpus / "a.txt")], tmp_path / "ds", tokenizer=str(tokenizer_dir), progress=False)


def test_missing_source_and_existing_output(tmp_path, corpus, tokenizer_dir):
    with pytest.raises(UserError, match="neither a file"):
        prep.prepare([str(tmp_path / "nope.txt")], tmp_path / "ds", tokenizer=str(tokenizer_dir))
    with pytest.raises(UserError, match="matches no files"):
        prep.prepare([str(tmp_path / "*.zzz")], tmp_path / "ds", tokenizer=str(tokenizer_dir))
    out = tmp_path / "ds"
    prep.prepare([str(corpus)], out, tokenizer=str(tokenizer_dir), progress=False)
    before = (out / "index.json").read_bytes()
    with pytest.raises(UserError, match="--overwrite"):
        prep.prepare([str(corpus)], out, tokenizer=str(tokenizer_dir), progress=False)
    assert (out / "index.json").read_bytes() == before
    with pytest.raises(UserError, match="out of range"):
        prep.prepare([str(corpus)], tmp_path / "x", tokenizer=str(tokenizer_dir), val_fraction=1.5)


def test_corrupt_and_truncated_shards(tmp_path, corpus, tokenizer_dir):
    out = tmp_path / "ds"
    prep.prepare([str(corpus)], out, tokenizer=str(tokenizer_dir), progress=False)
    shard = out / read_index(out)["splits"]["train"][0]["file"]
    data = shard.read_bytes()
    shard.write_bytes(data[:-2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        TokenDataset(out, "train")
    shard.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])
    TokenDataset(out, "train")  # same size: only the checksum can tell
    with pytest.raises(UserError, match="checksum"):
        TokenDataset(out, "train", verify=True)
    (out / "index.json").write_text("{broken")
    with pytest.raises(UserError, match="corrupt"):
        TokenDataset(out, "train")
    with pytest.raises(UserError, match="not a token dataset"):
        TokenDataset(tmp_path, "train")


def test_cli_prepare(tmp_path, corpus, tokenizer_dir, capsys):
    from gptqwen.cli import main

    assert main(["data", "prepare", str(corpus), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "ds"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["meta"]["documents"] == 4
    assert main(["data", "prepare", str(tmp_path / "missing"), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1
