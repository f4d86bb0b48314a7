"""The YAML pipeline: IO formats, bad input, resume after a crash, reports, CLI, Dask and processes."""

import json
from pathlib import Path

import pytest
import yaml

from gptqwen.cli import main
from gptqwen.data import pipeline as pl
from gptqwen.data import steps
from gptqwen.data.io import ReadStats, read_documents, write_documents
from gptqwen.data.synthetic import planted_pairs
from gptqwen.errors import UserError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def corpus(tmp_path, n_pairs=30, fmt="jsonl"):
    texts, _, _ = planted_pairs(n_pairs=n_pairs, n_singletons=30, words=80, targets=(0.9, 0.3))
    docs = [{"text": t, "n": i} for i, t in enumerate(texts)] + [{"text": texts[0].upper(), "n": -1}]
    path = tmp_path / f"in.{fmt}"
    write_documents(path, docs)
    return path, docs


def spec(tmp_path, inp, **kw):
    raw = {"input": str(inp), "output": str(tmp_path / "work"), "workers": 1, "shard_docs": 25,
           "steps": ["exact_dedup", "minhash_dedup", {"gopher_quality": {"min_doc_words": 10, "min_stop_words": 0}}]}
    raw.update(kw)
    return raw


def final_texts(summary):
    return [d["text"] for d in read_documents(summary["final_shards"], allow_empty=True)]


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "jsonl.zst", "parquet"])
def test_formats_round_trip(tmp_path, fmt):
    docs = [{"text": f"doc {i} é 中文", "meta": {"i": i}} for i in range(2100)]
    assert write_documents(tmp_path / f"x.{fmt}", docs) == 2100
    assert list(read_documents(tmp_path / f"x.{fmt}")) == docs


def test_pipeline_report_and_formats(tmp_path):
    inp, docs = corpus(tmp_path, fmt="jsonl.gz")
    summary = pl.run_pipeline(spec(tmp_path, inp, format="parquet", output_file=str(tmp_path / "out.jsonl.zst")),
                              log=lambda m: None)
    ingest, exact, near, quality = summary["steps"]
    assert ingest["docs_out"] == len(docs) and exact["removed"] == {"exact_duplicate": 1}
    assert near["removed"] == {"near_duplicate": 15}  # the 15 pairs at Jaccard 0.9, none of the 0.3 ones
    assert quality["docs_in"] == near["docs_out"] and quality["bytes_in"] == near["bytes_out"]
    assert json.loads((tmp_path / "work" / "report.json").read_text())["steps"][1]["step"] == "exact_dedup"
    assert len(list(read_documents(tmp_path / "out.jsonl.zst"))) == summary["output_docs"] == quality["docs_out"]
    assert "exact_duplicate=1" in pl.format_report(summary)


def test_resume_after_crash_skips_finished_work(tmp_path, monkeypatch):
    inp, _ = corpus(tmp_path)
    clean = pl.run_pipeline(spec(tmp_path / "clean", inp), log=lambda m: None)
    calls, crash = [], [True]
    original = steps.FilterStep.process

    def crashing(self, docs, state, stats, shard):
        calls.append(shard)
        if len(calls) == 2 and crash and crash.pop():  # only the first run crashes, on its 2nd shard
            raise RuntimeError("simulated crash")
        yield from original(self, docs, state, stats, shard)

    monkeypatch.setattr(steps.FilterStep, "process", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pl.run_pipeline(spec(tmp_path, inp), log=lambda m: None)
    work = tmp_path / "work"
    step_dir = next(work.glob("*_gopher_quality"))
    assert not (step_dir / "_SUCCESS").exists() and len(list(step_dir.glob("*.stats.json"))) == 1
    assert not list(step_dir.glob(".*.tmp"))  # nothing half-written
    done_before = {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file() and "gopher" not in str(p)}
    calls.clear()
    summary = pl.run_pipeline(spec(tmp_path, inp), log=lambda m: None)
    assert len(calls) == len(summary["steps"][-1]["shards"]) - 1  # only the unfinished shards ran
    assert all(p.stat().st_mtime_ns == t for p, t in done_before.items() if p.exists())
    assert final_texts(summary) == final_texts(clean)
    # a changed setting re-runs that step (and later ones) only
    calls.clear()
    changed = spec(tmp_path, inp)
    changed["steps"][-1] = {"gopher_quality": {"min_doc_words": 11, "min_stop_words": 0}}
    pl.run_pipeline(changed, log=lambda m: None)
    assert len(calls) == len(summary["steps"][-1]["shards"])


def test_bad_records_are_reported_with_line_numbers(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = "a perfectly fine document with enough words to pass the filter we use here today"
    path.write_bytes(b"\n".join([json.dumps({"text": good}).encode(), b"{broken", b"\xff\xfe binary junk",
                                 json.dumps({"body": "x"}).encode(), json.dumps({"text": good + " too"}).encode()]) + b"\n")
    stats = ReadStats()
    assert len(list(read_documents(path, stats=stats))) == 2  # no good record lost
    assert [s.split(": ")[0] for s in stats.samples] == [f"{path}:{n}" for n in (2, 3, 4)]
    summary = pl.run_pipeline({"input": str(path), "output": str(tmp_path / "w"), "workers": 1, "steps": ["pii"]},
                              log=lambda m: None)
    assert summary["steps"][0]["removed"] == {"bad_record": 3} and len(summary["steps"][0]["bad_samples"]) == 3
    with pytest.raises(UserError, match=r"bad.jsonl:2: malformed JSON"):
        pl.run_pipeline({"input": str(path), "output": str(tmp_path / "w2"), "on_error": "fail", "steps": ["pii"]})


@pytest.mark.parametrize("raw,match", [
    ({"input": "missing.jsonl", "output": "w", "steps": ["pii"]}, "does not exist"),
    ({"input": "in.jsonl", "output": "w", "steps": ["dedupe"]}, "unknown step 'dedupe'.*exact_dedup"),
    ({"input": "in.jsonl", "output": "w", "steps": [{"fineweb": {"short_line_thr": 7}}]}, r"\[0, 1\]"),
    ({"input": "in.jsonl", "output": "w", "steps": [{"minhash_dedup": {"bands": 0}}]}, "positive integer"),
    ({"input": "in.jsonl", "output": "w", "steps": [{"minhash_dedup": {"band": 3}}]}, "no setting 'band'"),
    ({"input": "in.jsonl", "output": "w", "steps": ["pii"], "format": "csv"}, "format must be"),
    ({"input": "in.jsonl", "output": "w", "steps": ["pii"], "executor": "spark"}, "executor must be"),
    ({"input": "in.jsonl", "output": "w", "stepz": ["pii"]}, "unknown pipeline setting"),
    ({"input": "in.jsonl", "output": "w", "steps": []}, "needs 'steps'"),
    ({"input": "empty.jsonl", "output": "w", "steps": ["pii"]}, "no valid documents"),
    ({"input": "in.jsonl", "output": "w", "steps": ["pii"], "text_key": "body"}, "no valid documents"),
])
def test_bad_pipelines(tmp_path, monkeypatch, raw, match):
    monkeypatch.chdir(tmp_path)
    write_documents("in.jsonl", [{"text": "hello world"}])
    Path("empty.jsonl").write_text("")
    with pytest.raises(UserError, match=match):
        pl.run_pipeline(raw, log=lambda m: None)


def test_cli_run_yaml_and_errors(tmp_path, capsys):
    inp, _ = corpus(tmp_path)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"input": inp.name, "output": "work", "steps": ["exact_dedup"]}))
    assert main(["data", "run", str(tmp_path / "p.yaml"), "--workers", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["steps"][1]["removed"] == {"exact_duplicate": 1} and out["output_dir"].startswith(str(tmp_path))
    (tmp_path / "bad.yaml").write_text("input: [unclosed\n")
    assert main(["data", "run", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert "not valid YAML at line" in err and "Traceback" not in err
    assert main(["data", "dedup", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert main(["data", "filter", str(inp), "-o", str(tmp_path / "o.jsonl"), "--filters", "pii",
                 "--set", "c4.min_num_sentences=2"]) == 2
    assert "not in --filters" in capsys.readouterr().err


def _ids(paths) -> list[str]:
    return [d["id"] for d in read_documents(paths, allow_empty=True)]


def test_readme_pipeline_runs_on_its_sample(tmp_path, monkeypatch, capsys):
    """`gptqwen data run examples/pipeline.yaml`, as the README says, in a copy of examples/ (the pipeline writes
    ../runs/ beside it). Each sample document is there for one step, named for it: which step drops which."""
    import shutil

    shutil.copytree(EXAMPLES, tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    assert main(["data", "run", "examples/pipeline.yaml", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    steps = {s["step"]: s for s in out["steps"]}
    assert steps["ingest"]["bad_samples"] == [
        "examples/data/sample.jsonl:12: malformed JSON (Expecting property name enclosed in double quotes)"]
    work = tmp_path / "runs/pipeline-demo"  # one folder per step: NN_<step>/ holds what the step kept
    kept = {name: _ids(work / f"{k:02d}_{name}") for k, name in enumerate(steps)}
    before, dropped = ["en0", "en1", "en2", "en3", "en0-copy", "en1-near", "pii", "spam", "code", "zh", "leak"], {}
    for name, ids in kept.items():
        dropped[name], before = [i for i in before if i not in ids], ids
    assert dropped == {"ingest": [], "exact_dedup": ["en0-copy"], "minhash_dedup": ["en1-near"],
                       "language": ["spam", "code"], "gopher_repetition": [], "gopher_quality": [], "pii": [],
                       "decontaminate": ["leak"], "classify": [], "mix": []}
    assert steps["language"]["removed"] == {"language_unknown": 1, "language_low_score": 1}
    assert steps["decontaminate"]["removed"] == {"decontam_lcs": 1}
    assert steps["decontaminate"]["dirty_eval"]["sets"]["eval"]["dirty_ids"] == ["q1"]
    # mix: 12 documents, 3/4 English, 1/4 Chinese, drawn from the 6 that are left
    final = list(read_documents([work / "clean.jsonl.gz"]))
    assert out["output_docs"] == len(final) == 12 and {d["id"] for d in final} == {"en0", "en1", "en2", "en3", "pii", "zh"}
    assert sorted(d["domain"] for d in final) == ["en"] * 9 + ["zh"] * 3
    [pii] = {d["text"] for d in final if d["id"] == "pii"}
    assert pii.endswith("To join the mailing list, write to <EMAIL> or call <PHONE> after six.")
    assert json.loads((work / "report.json").read_text())["output_docs"] == 12


def test_dask_local_cluster_matches_local_run(tmp_path):
    pytest.importorskip("distributed")
    inp, _ = corpus(tmp_path)
    local = pl.run_pipeline(spec(tmp_path / "a", inp), log=lambda m: None)
    dask = pl.run_pipeline(spec(tmp_path / "b", inp, executor="dask",
                                dask={"n_workers": 2, "processes": False}), log=lambda m: None)
    assert final_texts(dask) == final_texts(local)
    assert [s["removed"] for s in dask["steps"]] == [s["removed"] for s in local["steps"]]


def test_process_pool_matches_inline(tmp_path):
    inp, _ = corpus(tmp_path)
    inline = pl.run_pipeline(spec(tmp_path / "a", inp), log=lambda m: None)
    pooled = pl.run_pipeline(spec(tmp_path / "b", inp, workers=2), log=lambda m: None)
    assert final_texts(pooled) == final_texts(inline)
