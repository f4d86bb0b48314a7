"""A resumable, sharded data pipeline described by a YAML file: `gptqwen data run pipeline.yaml`.

```yaml
input: raw/*.jsonl.gz          # files, globs or directories: JSONL (plain/.gz/.zst) or Parquet
output: work/                  # one directory per step, plus report.json
text_key: text
on_error: skip                 # bad input records: skip (counted, with line numbers) or fail
format: jsonl.zst              # shard format: jsonl | jsonl.gz | jsonl.zst | parquet
shard_docs: 10000              # documents per shard written by the ingest step
workers: 0                     # processes on this machine (0 = all cores)
executor: local                # or dask (see dask: address / n_workers / processes)
output_file: clean.jsonl.zst   # optional: also merge the final shards into one file
steps:
  - exact_dedup
  - minhash_dedup: {bands: 14, rows: 8}
  - gopher_quality: {min_doc_words: 50}
  - decontaminate: {eval: [evals/*.jsonl]}
```

Every step reads the previous step's shards and writes its own, each shard atomically with a
`.stats.json` beside it; a finished step leaves `_SUCCESS` with a fingerprint of its settings and
of everything upstream. Re-running after a crash skips finished steps and finished shards; a
changed setting re-runs that step and everything after it. Memory per task is one batch of
documents (plus, for dedup, 8 bytes x bands per document of the whole corpus in the driver).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from gptqwen.data.distributed import make_executor
from gptqwen.data.io import ReadStats, expand_inputs, file_format, read_documents, write_documents
from gptqwen.data.steps import ShardStats, Step, build_step
from gptqwen.errors import UserError, closest
from gptqwen.utils import atomic_write, refuse_file_in_path

FORMATS = ("jsonl", "jsonl.gz", "jsonl.zst", "parquet")
SETTINGS = {"input", "output", "text_key", "on_error", "format", "shard_docs", "workers", "executor", "dask",
            "output_file", "steps"}
PATH_SETTINGS = {"decontaminate": ("eval",), "classify": ("model",)}


@dataclass
class PipelineSpec:
    input: list[str]
    output: Path
    steps: list[tuple[str, dict | None]]
    text_key: str = "text"
    on_error: str = "skip"
    format: str = "jsonl"
    shard_docs: int = 10000
    workers: int = 0
    executor: str = "local"
    dask: dict = field(default_factory=dict)
    output_file: str | None = None

    @classmethod
    def from_dict(cls, raw: Any, base: Path = Path(".")) -> PipelineSpec:
        if not isinstance(raw, dict):
            raise UserError("a pipeline file must be a YAML mapping with at least input, output and steps")
        unknown = set(raw) - SETTINGS
        if unknown:
            key = sorted(unknown)[0]
            raise UserError(f"unknown pipeline setting '{key}'.{closest(key, SETTINGS)} Settings: {', '.join(sorted(SETTINGS))}")
        for key in ("input", "output", "steps"):
            if not raw.get(key):
                raise UserError(f"the pipeline needs '{key}'")
        steps = []
        for entry in raw["steps"]:
            if isinstance(entry, str):
                steps.append((entry, None))
            elif isinstance(entry, dict) and len(entry) == 1:
                steps.append(next(iter(entry.items())))
            else:
                raise UserError(f"a step is a name or a one-key mapping name: {{settings}}, got {entry!r}")
        inputs = raw["input"] if isinstance(raw["input"], list) else [raw["input"]]
        resolve = lambda p: os.path.normpath(p if Path(str(p)).is_absolute() else base / str(p))  # noqa: E731
        for name, params in steps:  # file settings of steps are relative to the YAML file too
            for key in PATH_SETTINGS.get(name, ()):
                if isinstance(params, dict) and params.get(key):
                    value = params[key]
                    params[key] = [resolve(v) for v in value] if isinstance(value, list) else resolve(value)
        spec = cls(
            input=[resolve(p) for p in inputs], output=Path(resolve(raw["output"])), steps=steps,
            **{k: raw[k] for k in ("text_key", "on_error", "format", "shard_docs", "workers", "executor", "dask") if k in raw},
            output_file=resolve(raw["output_file"]) if raw.get("output_file") else None,
        )
        spec.validate()
        return spec

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise UserError(f"format must be one of {', '.join(FORMATS)}, got '{self.format}'")
        if self.on_error not in ("skip", "fail"):
            raise UserError(f"on_error must be 'skip' or 'fail', got '{self.on_error}'")
        if not isinstance(self.shard_docs, int) or self.shard_docs < 1:
            raise UserError(f"shard_docs must be a positive integer, got {self.shard_docs!r}")
        if not isinstance(self.workers, int) or self.workers < 0:
            raise UserError(f"workers must be 0 (all cores) or a positive integer, got {self.workers!r}")
        if self.executor not in ("local", "dask"):
            raise UserError(f"executor must be 'local' or 'dask', got '{self.executor}'")
        if self.output_file:
            file_format(self.output_file)
        for name, params in self.steps:
            build_step(name, params, self.text_key)  # validates names and settings before any work


def load_spec(path: str | Path, overrides: dict | None = None) -> PipelineSpec:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"pipeline file '{path}' does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"pipeline file '{path}' is not valid YAML{where}: {getattr(e, 'problem', None) or e}") from e
    if isinstance(raw, dict) and overrides:
        raw.update({k: v for k, v in overrides.items() if v is not None})
    return PipelineSpec.from_dict(raw, path.parent)


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---- shard tasks (top-level so process pools and Dask can pickle them) ----

def _ingest_task(path: str, file_no: int, out_dir: str, spec: PipelineSpec) -> dict:
    """Split one input file into shards of `shard_docs` documents; returns its read stats."""
    marker = Path(out_dir) / f"input_{file_no:05d}.stats.json"
    if marker.exists():
        return json.loads(marker.read_text())
    stats = ReadStats()
    docs = read_documents(path, spec.text_key, spec.on_error, stats)
    names, part = [], 0
    while True:
        chunk = []
        for doc in docs:
            doc.setdefault("id", f"{Path(path).name}:{stats.docs}")
            chunk.append(doc)
            if len(chunk) == spec.shard_docs:
                break
        if not chunk:
            break
        name = f"shard_{file_no:05d}_{part:05d}"
        write_documents(Path(out_dir) / f"{name}.{spec.format}", chunk)
        names.append(name)
        part += 1
        if len(chunk) < spec.shard_docs:
            break
    result = {"shards": names, "docs": stats.docs, "bytes": stats.bytes, "bad": stats.bad,
              "bad_samples": stats.samples, "empty_files": stats.empty_files}
    with atomic_write(marker) as f:
        json.dump(result, f)
    return result


def _prepass_task(step: Step, in_path: str, out_path: str, text_key: str) -> str:
    if not Path(out_path).exists():
        result = step.prepass(read_documents(in_path, text_key, "fail", allow_empty=True))
        with atomic_write(out_path, "wb") as f:
            np.savez(f, **result)
    return out_path


def _process_task(step: Step, in_path: str, out_path: str, state: Any, shard: str, text_key: str) -> dict:
    stats_path = Path(out_path + ".stats.json")
    if stats_path.exists():
        return json.loads(stats_path.read_text())
    stats = ShardStats()

    def counted_in():
        for doc in read_documents(in_path, text_key, "fail", allow_empty=True):
            stats.docs_in += 1
            stats.bytes_in += len(doc[text_key].encode())
            yield doc

    def counted_out():
        for doc in step.process(counted_in(), state, stats, shard):
            stats.docs_out += 1
            stats.bytes_out += len(doc[text_key].encode())
            yield doc

    write_documents(out_path, counted_out())
    with atomic_write(stats_path) as f:
        json.dump(stats.to_json(), f)
    return stats.to_json()


# ---- driver ----

class Pipeline:
    def __init__(self, spec: PipelineSpec, log=None):
        self.spec = spec
        self.log = log or (lambda msg: print(msg, file=sys.stderr))

    def run(self) -> dict:
        spec = self.spec
        inputs = [str(p) for p in expand_inputs(spec.input)]
        refuse_file_in_path(spec.output, "the work folder")
        if spec.output_file:
            refuse_file_in_path(Path(spec.output_file).parent, "the output file's folder")
        spec.output.mkdir(parents=True, exist_ok=True)
        reports = []
        with make_executor(spec.executor, spec.workers, spec.dask) as ex:
            fp = _fingerprint([(p, os.path.getsize(p), os.path.getmtime(p)) for p in inputs],
                              spec.text_key, spec.on_error, spec.format, spec.shard_docs)
            step_dir = spec.output / "00_ingest"
            report = self._done(step_dir, fp)
            if report is None:
                t0 = time.time()
                self._fresh(step_dir, fp)
                results = ex.map(_ingest_task, [(p, i, str(step_dir), spec) for i, p in enumerate(inputs)])
                shards = [s for r in results for s in r["shards"]]
                if not sum(r["docs"] for r in results):
                    raise UserError(f"the inputs hold no valid documents with a '{spec.text_key}' field "
                                    f"({sum(r['bad'] for r in results)} bad records); check input and text_key")
                report = {"step": "ingest", "shards": shards, "seconds": round(time.time() - t0, 2),
                          "docs_in": sum(r["docs"] + r["bad"] for r in results),
                          "docs_out": sum(r["docs"] for r in results), "bytes_in": sum(r["bytes"] for r in results),
                          "bytes_out": sum(r["bytes"] for r in results), "modified": 0,
                          "removed": {"bad_record": sum(r["bad"] for r in results)} if any(r["bad"] for r in results) else {},
                          "bad_samples": [s for r in results for s in r["bad_samples"]][:20],
                          "empty_files": [s for r in results for s in r["empty_files"]]}
                self._finish(step_dir, fp, report)
            self._log_step(report)
            reports.append(report)
            shards, prev = report["shards"], step_dir
            for k, (name, params) in enumerate(spec.steps, 1):
                step = build_step(name, params, spec.text_key)
                files = [(f, os.path.getsize(f), os.path.getmtime(f)) for f in step.files()]
                fp = _fingerprint(fp, name, step.params, files)
                step_dir = spec.output / f"{k:02d}_{name}"
                report = self._done(step_dir, fp)
                if report is None:
                    report = self._run_step(ex, step, shards, prev, step_dir, fp)
                self._log_step(report)
                reports.append(report)
                prev = step_dir
        final = [str(prev / f"{s}.{spec.format}") for s in shards]
        summary = {"output_dir": str(prev), "final_shards": final, "steps": reports}
        if spec.output_file:
            summary["output_file"] = spec.output_file
            summary["output_docs"] = write_documents(spec.output_file, read_documents(final, spec.text_key, "fail", allow_empty=True))
        with atomic_write(spec.output / "report.json") as f:
            json.dump(summary, f, indent=2)
        return summary

    def _run_step(self, ex, step: Step, shards: list[str], prev: Path, step_dir: Path, fp: str) -> dict:
        spec, t0 = self.spec, time.time()
        self._fresh(step_dir, fp)
        ins = {s: str(prev / f"{s}.{spec.format}") for s in shards}
        state: dict[str, Any] = {}
        if step.prepass_needed:
            (step_dir / "prepass").mkdir(exist_ok=True)
            paths = ex.map(_prepass_task, [(step, ins[s], str(step_dir / "prepass" / f"{s}.npz"), spec.text_key) for s in shards])
            results = {}
            for s, p in zip(shards, paths):
                with np.load(p, allow_pickle=False) as z:
                    results[s] = {k: z[k] for k in z.files}
            state = step.plan(results, step_dir)
        args = [(step, ins[s], str(step_dir / f"{s}.{spec.format}"), state.get(s), s, spec.text_key) for s in shards]
        total = ShardStats()
        for r in ex.map(_process_task, args):
            total.merge(ShardStats.from_json(r))
        report = {"step": step.name, "shards": shards, "seconds": round(time.time() - t0, 2), **total.to_json()}
        if step.name == "mix":
            report["mixture"] = _mixture_report(step, total)
        if "cer" in total.extra:  # pdf_extract with reference_key: the character error rate over all shards
            report["cer"] = round(total.extra["cer"]["edits"] / max(1, total.extra["cer"]["chars"]), 5)
        if (step_dir / "dirty_eval.json").exists():
            report["dirty_eval"] = json.loads((step_dir / "dirty_eval.json").read_text())
        self._finish(step_dir, fp, report)
        return report

    @staticmethod
    def _done(step_dir: Path, fp: str) -> dict | None:
        marker = step_dir / "_SUCCESS"
        if marker.exists():
            done = json.loads(marker.read_text())
            if done.get("fingerprint") == fp:
                return done["report"]
        return None

    @staticmethod
    def _fresh(step_dir: Path, fp: str) -> None:
        """Keep a half-finished step's shards only if they were made with the same settings."""
        tag = step_dir / "_FINGERPRINT"
        if step_dir.exists() and not (tag.exists() and tag.read_text() == fp):
            if not tag.exists() and any(step_dir.iterdir()):  # not a step folder of ours: the user's, left alone
                raise UserError(f"'{step_dir}' is not a pipeline step folder (no _FINGERPRINT); choose another work folder")
            shutil.rmtree(step_dir)
        step_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(tag) as f:
            f.write(fp)

    @staticmethod
    def _finish(step_dir: Path, fp: str, report: dict) -> None:
        with atomic_write(step_dir / "report.json") as f:
            json.dump(report, f, indent=2)
        with atomic_write(step_dir / "_SUCCESS") as f:
            json.dump({"fingerprint": fp, "report": report}, f)

    def _log_step(self, r: dict) -> None:
        why = ", ".join(f"{k} {v}" for k, v in sorted(r["removed"].items(), key=lambda kv: -kv[1])[:4])
        self.log(f"{r['step']:<18} in {r['docs_in']:>9,} kept {r['docs_out']:>9,} ({r['seconds']}s){'  removed: ' + why if why else ''}")


def _mixture_report(step: Step, total: ShardStats) -> dict:
    out = total.extra.get("domains", {})
    n = sum(out.values()) or 1
    weights = step.params["weights"]
    norm = sum(weights.values()) or 1
    return {"target": {d: round(w / norm, 4) for d, w in weights.items()},
            "realised": {d: round(c / n, 4) for d, c in sorted(out.items())}, "docs": dict(out)}


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def format_report(summary: dict) -> str:
    """The per-step table printed after a run."""
    head = f"{'step':<18} {'docs in':>10} {'kept':>10} {'removed':>9} {'modified':>9} {'bytes in':>9} {'bytes out':>9}  why removed"
    lines = [head, "-" * len(head)]
    for r in summary["steps"]:
        why = ", ".join(f"{k}={v}" for k, v in sorted(r["removed"].items(), key=lambda kv: -kv[1]))
        lines.append(f"{r['step']:<18} {r['docs_in']:>10,} {r['docs_out']:>10,} {sum(r['removed'].values()):>9,} "
                     f"{r['modified']:>9,} {_size(r['bytes_in']):>9} {_size(r['bytes_out']):>9}  {why}")
        if "mixture" in r:
            m = r["mixture"]
            shares = (f"{d}: target {m['target'].get(d, 0):.3f} realised {v:.3f}" for d, v in m["realised"].items())
            lines.append("    mixture " + ", ".join(shares))
        if "cer" in r:
            lines.append(f"    character error rate {r['cer']:.4f} ({r['extra']['cer']['chars']:,} reference characters)")
        if "dirty_eval" in r:
            for name, s in r["dirty_eval"]["sets"].items():
                lines.append(f"    eval {name}: {s['dirty']}/{s['total']} dirty (N={s['n']}), {s['clean']} clean")
    lines.append(f"output: {summary['output_dir']}" + (f"  and {summary['output_file']}" if summary.get("output_file") else ""))
    return "\n".join(lines)


def run_pipeline(spec: PipelineSpec | dict, log=None) -> dict:
    if isinstance(spec, dict):
        spec = PipelineSpec.from_dict(spec)
    return Pipeline(spec, log).run()
