"""Evaluation task specs: a small YAML file describing how to turn JSONL records into prompts.

A task is a YAML file (or a built-in name, see `gptqwen eval --list-tasks`: the files of the data folder
`gptqwen/eval/tasks/`). The keys follow
lm-evaluation-harness so a task written for one reads naturally in the other:

    task: hellaswag_mini                 # name (default: the file name)
    output_type: multiple_choice         # multiple_choice | cloze | generate_until | perplexity
    data_files: {test: hs.jsonl, train: hs_train.jsonl}   # JSONL, paths relative to the YAML
    fewshot_split: train                 # where few-shot examples come from (default: train if given)
    description: "Complete the story.\\n\\n"
    doc_to_text: "{{ctx}}"               # Jinja template, or just a field name
    doc_to_choice: endings               # field name, YAML list, or template rendering a Python list
    doc_to_target: label                 # index / answer text (multiple choice); string or list (others)
    target_delimiter: " "                # between question and answer
    fewshot_delimiter: "\\n\\n"            # between few-shot examples
    metrics: [acc, acc_norm]

Winogrande-style "partial" scoring: when `doc_to_text` uses the variable `choice`, each option is
put into the context and the shared `doc_to_continuation` is scored. Instead of `data_files`, a
task may name a generator (`generator: {name: arithmetic, ...}`, see `gptqwen.eval.synthetic`), and a
perplexity task a `token_source` (`{name: shakespeare_heldout}`, see `gptqwen.eval.perplexity`).
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gptqwen import utils
from gptqwen.errors import UserError, closest
from gptqwen.eval.synthetic import generate_splits

OUTPUT_TYPES = ("multiple_choice", "cloze", "generate_until", "perplexity")
METRICS: dict[str, tuple[str, ...]] = {
    # acc_norm: per character (lm-eval); acc_norm_tokens: per token (GPT-3);
    # acc_uncond: P(choice|ctx) / P(choice|uncond_context) (GPT-3 on ARC, OpenBookQA, RACE)
    "multiple_choice": ("acc", "acc_norm", "acc_norm_tokens", "acc_uncond"),
    "cloze": ("acc", "perplexity"),
    "generate_until": ("exact_match", "f1"),
    "perplexity": ("token_perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte"),
}
DEFAULT_METRICS = {
    "multiple_choice": ("acc", "acc_norm"),
    "cloze": ("acc", "perplexity"),
    "generate_until": ("exact_match", "f1"),
    "perplexity": ("token_perplexity", "word_perplexity", "bits_per_byte"),
}
_KEYS = {
    "task", "output_type", "data_files", "generator", "test_split", "fewshot_split", "fewshot_sampler",
    "description", "doc_to_text", "doc_to_target", "doc_to_choice", "doc_to_continuation",
    "target_delimiter", "fewshot_delimiter", "metrics", "until", "max_new_tokens", "uncond_context",
    "token_source",
}
BUILTIN_DIR = Path(__file__).with_name("tasks")  # package data: the built-in task YAMLs


@dataclass
class Task:
    """A loaded task: its settings plus the documents of each split."""

    name: str
    output_type: str
    splits: dict[str, list[dict]]
    test_split: str = "test"
    fewshot_split: str | None = None
    fewshot_sampler: str = "random"  # random (seeded, per item) | first_n (canonical order)
    description: str = ""
    doc_to_text: str = "text"
    doc_to_target: Any = None
    doc_to_choice: Any = None
    doc_to_continuation: str | None = None
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    metrics: tuple[str, ...] = ()
    until: tuple[str, ...] = ("\n\n",)
    max_new_tokens: int = 32
    uncond_context: str = "Answer:"
    token_source: dict | None = None  # perplexity on tokens made with the model's tokenizer (perplexity.py)
    source: str = ""  # where the task came from, for messages
    _templates: dict = field(default_factory=dict, repr=False)

    # ---- documents ---------------------------------------------------------------------------
    @property
    def test_docs(self) -> list[dict]:
        return self.splits[self.test_split]

    @property
    def fewshot_docs(self) -> list[dict]:
        return self.splits[self.fewshot_split or self.test_split]

    @property
    def fewshot_from_test(self) -> bool:
        return (self.fewshot_split or self.test_split) == self.test_split

    # ---- rendering ---------------------------------------------------------------------------
    def _render(self, spec: Any, doc: dict, key: str, **extra: Any) -> Any:
        """Resolve one `doc_to_*` spec: a literal, a field name, or a Jinja template."""
        if not isinstance(spec, str):
            return spec
        if spec in doc and not extra:
            return doc[spec]
        template = self._templates.get(spec)
        if template is None:
            template = self._templates[spec] = _jinja_env().from_string(spec)
        import jinja2

        try:
            return template.render(**doc, **extra)
        except jinja2.UndefinedError as e:
            raise UserError(f"task '{self.name}': {key} {spec!r} failed on a record ({e}); "
                            f"record fields are {sorted(doc)}") from None
        except Exception as e:  # template runtime errors (bad filter, wrong type) are the user's
            raise UserError(f"task '{self.name}': {key} {spec!r} failed on a record: {e}") from None

    def uses_choice_in_context(self) -> bool:
        return isinstance(self.doc_to_text, str) and "choice" in self.doc_to_text and "{" in self.doc_to_text

    def text(self, doc: dict, choice: str | None = None) -> str:
        extra = {"choice": choice} if choice is not None else {}
        out = self._render(self.doc_to_text, doc, "doc_to_text", **extra)
        if not isinstance(out, str):
            raise UserError(f"task '{self.name}': doc_to_text must give a string, got {type(out).__name__}")
        return out

    def choices(self, doc: dict) -> list[str]:
        out = self._render(self.doc_to_choice, doc, "doc_to_choice")
        if isinstance(out, str):
            out = _literal(out, fallback=out)
        if isinstance(out, dict):
            out = list(out.values())
        if not isinstance(out, list) or len(out) < 2 or not all(isinstance(c, str) for c in out):
            raise UserError(f"task '{self.name}': doc_to_choice must give a list of at least two strings, "
                            f"got {out!r}")
        return out

    def target_index(self, doc: dict, choices: list[str]) -> int:
        """The gold answer of a multiple-choice record as an index into `choices`."""
        out = self._render(self.doc_to_target, doc, "doc_to_target")
        if isinstance(out, str) and out.strip().lstrip("-").isdigit():
            out = int(out.strip())
        if isinstance(out, bool) or not isinstance(out, (int, str)):
            raise UserError(f"task '{self.name}': doc_to_target must give an index or a choice, got {out!r}")
        if isinstance(out, str):
            if out not in choices:
                raise UserError(f"task '{self.name}': target {out!r} is not one of the choices {choices}")
            return choices.index(out)
        if not 0 <= out < len(choices):
            raise UserError(f"task '{self.name}': target index {out} is out of range for {len(choices)} choices")
        return out

    def targets(self, doc: dict) -> list[str]:
        """All acceptable answers of a cloze/generation record (first one is used in few-shot examples)."""
        out = self._render(self.doc_to_target, doc, "doc_to_target")
        if isinstance(out, str) and out.startswith("[") and out.endswith("]"):
            out = _literal(out, fallback=out)
        if isinstance(out, (int, float)) and not isinstance(out, bool):
            out = str(out)
        if isinstance(out, str):
            out = [out]
        if not isinstance(out, list) or not out or not all(isinstance(t, str) for t in out):
            raise UserError(f"task '{self.name}': doc_to_target must give a string or a list of strings, got {out!r}")
        return out

    def continuation(self, doc: dict) -> str:
        out = self._render(self.doc_to_continuation, doc, "doc_to_continuation")
        if not isinstance(out, str):
            raise UserError(f"task '{self.name}': doc_to_continuation must give a string")
        return out


# ---------------------------------------------------------------------------------------------
def _jinja_env():
    import jinja2

    return jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def _literal(text: str, fallback: Any) -> Any:
    """A rendered template read as a Python literal (lists of choices or answers), else `fallback`."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return fallback


def read_jsonl(path: Path, what: str = "task data") -> list[dict]:
    """Read a JSONL file of objects; blank lines are skipped; errors name the file and line."""
    return [row for _, row in utils.read_jsonl(path, what)]


def builtin_task_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def load_task(spec: str | os.PathLike) -> Task:
    """Load a task from a YAML path or a built-in task name."""
    path = Path(spec).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise UserError(f"task file '{spec}' does not exist")
        return task_from_config(_read_yaml(path), base_dir=path.parent, default_name=path.stem, source=str(path))
    names = builtin_task_names()
    if str(spec) not in names:
        raise UserError(f"unknown task '{spec}'.{closest(str(spec), names)} Pass a task .yaml file or "
                        f"one of the built-in tasks (gptqwen eval --list-tasks)")
    path = BUILTIN_DIR / f"{spec}.yaml"
    return task_from_config(_read_yaml(path), base_dir=BUILTIN_DIR, default_name=str(spec), source=f"built-in:{spec}")


def _read_yaml(path: Path) -> dict:
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"task file '{path}' is not valid YAML: {str(e).splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise UserError(f"task file '{path}' is not UTF-8 text") from None
    if not isinstance(cfg, dict):
        raise UserError(f"task file '{path}' must be a YAML mapping of settings (task:, output_type:, ...)")
    return cfg


def task_from_config(cfg: dict, base_dir: Path | None = None, default_name: str = "task",
                     source: str = "") -> Task:
    """Validate a task config dict and load its documents."""
    name = str(cfg.get("task", default_name))
    where = source or name
    unknown = set(cfg) - _KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise UserError(f"task '{where}': unknown setting '{key}'.{closest(key, _KEYS)} Valid settings: "
                        f"{', '.join(sorted(_KEYS))}")
    otype = cfg.get("output_type")
    if otype not in OUTPUT_TYPES:
        raise UserError(f"task '{where}': output_type must be one of {', '.join(OUTPUT_TYPES)}, got {otype!r}")

    splits = _load_splits(cfg, base_dir or Path.cwd(), where)
    test_split = str(cfg.get("test_split", "test"))
    if test_split not in splits:
        raise UserError(f"task '{where}': test split '{test_split}' not found; splits are {sorted(splits)}")
    fewshot_split = cfg.get("fewshot_split")
    if fewshot_split is None:
        fewshot_split = next((s for s in ("train", "validation", "dev") if s in splits and s != test_split), None)
    elif fewshot_split not in splits:
        raise UserError(f"task '{where}': fewshot split '{fewshot_split}' not found; splits are {sorted(splits)}")

    metrics = cfg.get("metrics", DEFAULT_METRICS[otype])
    if isinstance(metrics, str):
        metrics = [metrics]
    for m in metrics:
        if m not in METRICS[otype]:
            raise UserError(f"task '{where}': unknown metric '{m}' for {otype} tasks.{closest(str(m), METRICS[otype])}"
                            f" Valid metrics: {', '.join(METRICS[otype])}")
    sampler = cfg.get("fewshot_sampler", "random")
    if sampler not in ("random", "first_n"):
        raise UserError(f"task '{where}': fewshot_sampler must be 'random' or 'first_n', got {sampler!r}")
    until = cfg.get("until", ["\n\n"])
    until = [until] if isinstance(until, str) else until
    if not isinstance(until, list) or not all(isinstance(u, str) and u for u in until):
        raise UserError(f"task '{where}': until must be a string or a list of non-empty strings")

    task = Task(
        name=name, output_type=otype, splits=splits, test_split=test_split, fewshot_split=fewshot_split,
        fewshot_sampler=sampler, description=_str(cfg, "description", "", where),
        doc_to_text=cfg.get("doc_to_text", "text"), doc_to_target=cfg.get("doc_to_target"),
        doc_to_choice=cfg.get("doc_to_choice"), doc_to_continuation=cfg.get("doc_to_continuation"),
        target_delimiter=_str(cfg, "target_delimiter", " ", where),
        fewshot_delimiter=_str(cfg, "fewshot_delimiter", "\n\n", where),
        metrics=tuple(metrics), until=tuple(until), max_new_tokens=int(cfg.get("max_new_tokens", 32)),
        uncond_context=_str(cfg, "uncond_context", "Answer:", where), token_source=cfg.get("token_source"),
        source=where,
    )
    _check_shape(task)
    return task


def _str(cfg: dict, key: str, default: str, where: str) -> str:
    value = cfg.get(key, default)
    if not isinstance(value, str):
        raise UserError(f"task '{where}': {key} must be a string, got {value!r}")
    return value


def _load_splits(cfg: dict, base_dir: Path, where: str) -> dict[str, list[dict]]:
    if sum(k in cfg for k in ("data_files", "generator", "token_source")) != 1:
        raise UserError(f"task '{where}': give exactly one of data_files (JSONL per split), generator "
                        "or token_source (perplexity tasks)")
    if "token_source" in cfg:
        src = cfg["token_source"]
        if cfg.get("output_type") != "perplexity" or not isinstance(src, dict) or "name" not in src:
            raise UserError(f"task '{where}': token_source is for perplexity tasks and must be a mapping with a 'name'")
        return {"test": []}  # the documents are made with the model's tokenizer at evaluation time
    if "generator" in cfg:
        gen = cfg["generator"]
        if not isinstance(gen, dict) or "name" not in gen:
            raise UserError(f"task '{where}': generator must be a mapping with a 'name' (and its settings)")
        return generate_splits(**gen)
    files = cfg["data_files"]
    if isinstance(files, str):
        files = {"test": files}
    if not isinstance(files, dict) or not files:
        raise UserError(f"task '{where}': data_files must map split names to JSONL files, e.g. {{test: data.jsonl}}")
    return {str(split): read_jsonl(base_dir / str(p), f"task '{where}' split '{split}'") for split, p in files.items()}


def _check_shape(task: Task) -> None:
    """Render the first test and few-shot record so template mistakes fail before any model runs."""
    if task.token_source is not None:
        return
    needs_choice = task.output_type == "multiple_choice"
    if needs_choice and task.doc_to_choice is None:
        raise UserError(f"task '{task.source}': multiple_choice tasks need doc_to_choice")
    if task.output_type in ("multiple_choice", "cloze", "generate_until") and task.doc_to_target is None:
        raise UserError(f"task '{task.source}': {task.output_type} tasks need doc_to_target")
    if task.uses_choice_in_context() and task.doc_to_continuation is None:
        raise UserError(f"task '{task.source}': doc_to_text uses 'choice' (partial scoring), which needs "
                        "doc_to_continuation: the text after the blank that is scored")
    for doc in (task.test_docs[0], task.fewshot_docs[0]):
        if needs_choice:
            choices = task.choices(doc)
            task.target_index(doc, choices)
            task.text(doc, choices[0]) if task.uses_choice_in_context() else task.text(doc)
            if task.doc_to_continuation is not None:
                task.continuation(doc)
        else:
            task.text(doc)
            if task.output_type != "perplexity":
                task.targets(doc)
