"""What a new user runs into first: paths of their own are never clobbered, presets name their runs, --version,
MFU never above 100%, one default temperature, chat history with and without readline."""

from __future__ import annotations

import builtins
import sys

import pytest
import torch

from gptqwen import __version__
from gptqwen.cli import main
from gptqwen.commands import chat
from gptqwen.commands.engine_options import add_sampling_arguments
from gptqwen.data.prepare import ensure_dataset, prepare
from gptqwen.errors import UserError
from gptqwen.infer.sampling import DEFAULT_TEMPERATURE, SamplingParams
from gptqwen.train import metrics
from gptqwen.train.recipe import TrainConfig, load_recipe, model_name

DOCS = ["a small corpus of words for the tokenizer to learn, said the user " * 20]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(DOCS[0])
    return str(path)


@pytest.mark.parametrize("build", ["prepare", "ensure"])
def test_dataset_never_replaces_a_users_file_or_folder(tmp_path, corpus, build):
    mine = tmp_path / "notes.txt"
    mine.write_text("my precious notes")
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"\xff\xd8")

    def make(out, **kw):
        if build == "prepare":
            return prepare([corpus], out, train_vocab=300, progress=False, **kw)
        return ensure_dataset([corpus], out, progress=False, train_vocab=300)

    for target, why in ((mine, "is a file"), (mine / "ds", "lies under the file"), (folder, "not a token dataset")):
        with pytest.raises(UserError, match=why):
            make(target)
    assert mine.read_text() == "my precious notes" and (folder / "cat.jpg").read_bytes() == b"\xff\xd8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "notes.txt", "photos"]  # nothing moved aside
    empty = tmp_path / "empty"
    empty.mkdir()
    assert make(empty)["vocab_size"] == 300  # an empty folder is fine, and so is replacing our own dataset
    if build == "prepare":
        assert make(empty, overwrite=True)["vocab_size"] == 300


def test_pretrain_refuses_file_paths_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f.txt").write_text("mine")
    for argv, why in ((["--out", "f.txt"], "is a file"), (["--out", "f.txt/run"], "lies under the file"),
                      (["data.dir=f.txt"], "is a file")):
        assert main(["pretrain", "--preset", "gpt2-tiny", "train.max_steps=1", *argv]) == 2
        err = capsys.readouterr().err
        assert why in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]  # no dataset, no run folder


def test_preset_names_the_recipe_model_and_run_folder():
    assert load_recipe().name == "qwen3-shakespeare"  # the recipe's own model keeps the recipe's name
    plain = load_recipe(preset="gpt2-tiny")
    assert plain.name == "gpt2-tiny" and model_name(plain.model) == "gpt2-tiny"
    over = load_recipe(preset="gpt2-124m", overrides=["model.n_layer=4", "model.rope_theta=1e6"])
    assert over.name == model_name(over.model) == "gpt2-124m+n_layer=4+rope_theta=1e+06"
    assert over.to_dict()["name"] == over.name
    assert model_name({"preset": "qwen3-tiny", "n_layer": 4, "n_embd": 192}) == "qwen3-tiny+n_layer=4+n_embd=192"


def test_pretrain_default_out_follows_the_preset(tmp_path, monkeypatch):
    from gptqwen.commands import pretrain

    seen = {}
    monkeypatch.setattr("gptqwen.train.trainer.run_recipe", lambda recipe, out, **kw: seen.update(out=out) or [])
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "--preset", "gpt2-tiny", "model.n_layer=1", "--quiet"]) == 0
    assert seen["out"] == "runs/gpt2-tiny+n_layer=1"
    assert pretrain.__doc__ and "runs/<model name>" in pretrain.__doc__


def test_version(capsys):
    for flag in ("--version", "-V"):
        assert main([flag]) == 0
        assert capsys.readouterr().out.strip() == f"gptqwen {__version__}"


def test_mfu_text_never_above_100_percent():
    assert metrics.mfu_text(0.4321) == "MFU 43.2%"
    assert metrics.mfu_text(1.3) == "MFU n/a (peak underestimated)"


def test_nominal_gpu_peaks_and_best_cpu_peak(monkeypatch, tmp_path):
    assert metrics.nominal_peak("NVIDIA H100 80GB HBM3", torch.bfloat16) == 989.4e12
    assert metrics.nominal_peak("NVIDIA H200", torch.bfloat16) == 989.4e12
    assert metrics.nominal_peak("NVIDIA A100-SXM4-80GB", torch.bfloat16) == 312e12
    assert metrics.nominal_peak("NVIDIA GeForce GTX 1080", torch.bfloat16) is None
    monkeypatch.setenv("GPTQWEN_CACHE", str(tmp_path))
    measured = iter([5e10, 2e10])  # a quiet run, then a run on a busy machine
    monkeypatch.setattr(metrics, "measure_matmul_peak", lambda device, dtype, seconds=0.5: next(measured))
    cpu = torch.device("cpu")
    assert metrics.peak_flops(cpu, torch.float32) == 5e10
    assert metrics.peak_flops(cpu, torch.float32) == 5e10  # the busy measurement does not lower the peak
    assert (tmp_path / "matmul_peak.json").exists()


def test_one_default_temperature():
    import argparse

    p = argparse.ArgumentParser()
    add_sampling_arguments(p)
    assert p.parse_args([]).temperature == DEFAULT_TEMPERATURE == SamplingParams().temperature
    assert TrainConfig().temperature == DEFAULT_TEMPERATURE
    p = argparse.ArgumentParser()
    chat.add_arguments(p)
    assert p.parse_args(["--model", "x"]).temperature == DEFAULT_TEMPERATURE


def test_chat_history_is_saved_and_works_without_readline(tmp_path, monkeypatch):
    pytest.importorskip("readline")
    history = tmp_path / "chat_history"
    monkeypatch.setenv("GPTQWEN_CACHE", str(tmp_path))
    save = chat.start_history()
    import readline

    readline.clear_history()
    readline.add_history("what is 2+2?")
    save()
    assert "what is 2+2?" in history.read_text()
    readline.clear_history()
    chat.start_history()  # the next session starts with the earlier lines
    assert readline.get_history_item(readline.get_current_history_length()) == "what is 2+2?"
    readline.clear_history()

    real_import = builtins.__import__

    def no_readline(name, *args, **kwargs):
        if name == "readline":
            raise ImportError("no readline on this platform")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "readline")
    monkeypatch.setattr(builtins, "__import__", no_readline)
    chat.start_history()()  # no readline: nothing to load or save, and no error


def test_folder_outputs_never_replace_a_file(tmp_path, corpus, capsys):
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    for out in (mine, mine / "tok"):  # every folder writer goes through utils.atomic_dir
        assert main(["tokenizer", "train", corpus, "--vocab-size", "300", "--out", str(out)]) == 2
        assert "Traceback" not in capsys.readouterr().err
    assert mine.read_text() == "mine"


def test_dedup_pipeline_leaves_user_paths_alone(tmp_path, capsys):
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"text": "one small document"}\n')
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    work = tmp_path / "work" / "00_ingest"
    work.mkdir(parents=True)
    (work / "photo.jpg").write_bytes(b"\xff")
    for extra, why in ((["-o", str(mine / "out.jsonl")], "lies under the file"),
                       (["-o", str(tmp_path / "out.jsonl"), "--work", str(mine)], "is a file"),
                       (["-o", str(tmp_path / "out.jsonl"), "--work", str(work.parent)], "not a pipeline step folder")):
        assert main(["data", "dedup", str(docs), "--workers", "1", *extra]) == 2
        assert why in capsys.readouterr().err
    assert mine.read_text() == "mine" and (work / "photo.jpg").read_bytes() == b"\xff"


def test_file_outputs_refuse_folders_and_files_in_the_way(tmp_path):
    from gptqwen.utils import atomic_write

    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    for target, why in ((mine / "out.jsonl", "is a file"), (tmp_path, "is a folder")):
        with pytest.raises(UserError, match=why), atomic_write(target) as f:
            f.write("x")
    assert mine.read_text() == "mine"


@pytest.mark.parametrize("argv", [["tools", "prepare", "--n", "4"], ["scaling", "sweep", "--size", "n_layer=1", "--tokens", "1000"],
                                  ["sft", "--synthetic", "8"], ["data", "prepare", "shakespeare", "--train-tokenizer", "300"]])
def test_other_verbs_refuse_a_file_as_out(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f.txt").write_text("mine")
    assert main([*argv, "--out", "f.txt"]) == 2
    err = capsys.readouterr().err
    assert "is a file" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"] and (tmp_path / "f.txt").read_text() == "mine"
