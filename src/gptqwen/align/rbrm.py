"""Rule-based reward models (GPT-4's RBRM): a rubric judged zero-shot by a model, plus programmatic rules.

    from gptqwen.align.rbrm import Rubric
    rubric = Rubric.load("refusal-style", judge="my-chat-model/")   # a built-in name or a YAML file
    rubric.rewards(rows, completions)       # rows: {"prompt": text or messages, ...}
    grpo.rewards=[rbrm:refusal-style, math] grpo.reward_weights=[1.0, 1.0]     # in a GRPO recipe

A rubric (YAML; see gptqwen/align/rubrics/refusal-style.yaml) holds a `template` with `{prompt}` and
`{response}` (and `{reference}`, the prompt row's "answer": a judge with a reference answer, as Qwen3's general RL;
gptqwen/align/rubrics/reference-answer.yaml), `classes` (a letter or word each, with a reward) and `rules`. The judge reads the filled-in
template (through its chat template with thinking off when `chat: true`) and the classes are compared by
the log-probability of each class's token as the next token: `mode: expected` gives Σ p(class)·reward
with p renormalised over the classes, `argmax` the reward of the likeliest class. Every class must be a
single token of the judge's vocabulary, or loading fails naming the class.

Rules add `reward` when they fire: `regex` (the answer matches), `max_words` (the answer is longer),
`min_words` (shorter), `format: think` (the think/answer structure is missing), `verifier: math|code|
constraints` (the verifier accepts the completion). The total is `weight`·judge + Σ fired rules.
"""

from __future__ import annotations

import importlib.resources
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from gptqwen.align.rewards import BUILTIN, RewardFn, format_reward
from gptqwen.errors import UserError, closest
from gptqwen.finetune.common import load_base
from gptqwen.tokenizer.chat import parse_assistant

RULE_KINDS = ("regex", "max_words", "min_words", "format", "verifier")


@dataclass
class Rule:
    name: str
    kind: str
    value: object
    reward: float


@dataclass
class Rubric:
    name: str
    template: str = ""
    classes: dict[str, float] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)
    judge_spec: str | None = None
    chat: bool = True
    mode: str = "expected"
    weight: float = 1.0
    judge: object = None  # (model, tokenizer, class token ids) once loaded

    @classmethod
    def load(cls, spec: str, judge: str | None = None, device: str | None = None, with_judge: bool = True) -> Rubric:
        """A rubric from a YAML file or a built-in name; its judge model loaded when it has classes (unless
        `with_judge` is False: e.g. to write the judge's own training data, `judge_conversations`)."""
        path = Path(spec)
        builtin = importlib.resources.files("gptqwen") / "align" / "rubrics"
        names = sorted(p.name[:-5] for p in builtin.iterdir() if p.name.endswith(".yaml"))
        if path.suffix in (".yaml", ".yml") or path.exists():
            if not path.is_file():
                raise UserError(f"rubric file '{spec}' does not exist")
            text = path.read_text(encoding="utf-8")
        elif spec in names:
            text = (builtin / f"{spec}.yaml").read_text(encoding="utf-8")
        else:
            raise UserError(f"unknown rubric '{spec}'.{closest(spec, names)} Built-in rubrics: {', '.join(names)}; "
                            "or give a YAML file")  # fmt: skip
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise UserError(f"rubric '{spec}' is not valid YAML: {str(e).splitlines()[0]}") from None
        rubric = cls.from_dict(raw, spec)
        if judge is not None:
            rubric.judge_spec = judge
        if rubric.classes and with_judge:
            rubric.load_judge(device)
        return rubric

    @classmethod
    def from_dict(cls, raw: dict, where: str = "rubric") -> Rubric:
        known = {"name", "judge", "chat", "mode", "weight", "template", "classes", "rules", "description"}
        for k in raw:
            if k not in known:
                raise UserError(f"{where}: unknown rubric key '{k}'.{closest(str(k), known)}")
        classes = {}
        for c, spec in (raw.get("classes") or {}).items():
            reward = spec.get("reward") if isinstance(spec, dict) else spec
            if isinstance(reward, bool) or not isinstance(reward, (int, float)):
                raise UserError(f"{where}: class '{c}' needs a numeric 'reward'")
            classes[str(c)] = float(reward)
        if classes and "{response}" not in str(raw.get("template", "")):
            raise UserError(f"{where}: the template must contain {{response}} (and usually {{prompt}})")
        if raw.get("mode", "expected") not in ("expected", "argmax"):
            raise UserError(f"{where}: mode must be expected or argmax, not {raw.get('mode')!r}")
        rules = [_rule(r, i, where) for i, r in enumerate(raw.get("rules") or [])]
        if not classes and not rules:
            raise UserError(f"{where}: a rubric needs classes (for a judge) or rules")
        return cls(str(raw.get("name", where)), str(raw.get("template", "")), classes, rules, raw.get("judge"),
                   bool(raw.get("chat", True)), raw.get("mode", "expected"), float(raw.get("weight", 1.0)))  # fmt: skip

    def load_judge(self, device: str | None = None) -> None:
        """Load the judge and find each class's token; a clear error when the judge cannot express a class."""
        if not self.judge_spec:
            raise UserError(f"rubric '{self.name}' has classes but no judge; set 'judge:' in the rubric to a model")
        model, tok = load_base(self.judge_spec, None, device)
        ids = {}
        for c in self.classes:
            found = tok.encode(c)
            if len(found) != 1:
                raise UserError(f"rubric '{self.name}': the judge '{self.judge_spec}' has no single token for class "
                                f"'{c}' (it encodes to {len(found)} tokens); use class names that are one token")  # fmt: skip
            ids[c] = found[0]
        self.judge = (model.eval(), tok, ids)

    @torch.no_grad()
    def class_probs(self, prompts: list[str], responses: list[str], references: list[str] | None = None,
                    batch_size: int = 16) -> torch.Tensor:  # fmt: skip
        """[N, classes] probabilities of the rubric's classes by the judge (renormalised over the classes).
        `references` fill the template's `{reference}` (a reference answer, Qwen3's model-based reward with one).
        Texts run in left-padded batches (the padding masked), one next-token distribution each."""
        model, tok, ids = self.judge
        device = next(model.parameters()).device
        refs = references if references is not None else [None] * len(prompts)
        seqs = []
        for p, r, ref in zip(prompts, responses, refs):
            if ref is None and "{reference}" in self.template:
                raise UserError(f"rubric '{self.name}' compares with a reference answer ({{reference}}), but a prompt "
                                "row has no 'answer'; give every row an answer or use another rubric")  # fmt: skip
            text = self.template.format(prompt=p, response=r, reference=ref)
            x = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=True, enable_thinking=False) \
                if self.chat else tok.encode(text)  # fmt: skip
            seqs.append(x[-(model.config.max_seq_len - 1):])  # the end holds the question; a long reply loses its start
        out = []
        pad = tok.pad_id if tok.pad_id is not None else 0
        for s in range(0, len(seqs), batch_size):
            chunk = seqs[s:s + batch_size]
            width = max(len(x) for x in chunk)
            ids_t = torch.tensor([[pad] * (width - len(x)) + x for x in chunk], device=device)
            mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in chunk], device=device)
            padded = min(len(x) for x in chunk) < width
            logits = model(ids_t, attention_mask=mask if padded else None, logits_to_keep=1).logits[:, -1].float()
            out.append(torch.softmax(logits[:, list(ids.values())], -1).cpu())
        return torch.cat(out)

    def rewards(self, rows: list[dict], completions: list[str]) -> list[float | None]:
        totals = [0.0] * len(completions)
        if self.classes:
            prompts = [r["prompt"] if isinstance(r["prompt"], str) else r["prompt"][-1]["content"] for r in rows]
            answers = [parse_assistant(c)["content"] or "" for c in completions]
            refs = [None if r.get("answer") is None else str(r["answer"]) for r in rows]
            probs = self.class_probs(prompts, answers, refs)
            values = torch.tensor(list(self.classes.values()))
            judged = (probs * values).sum(-1) if self.mode == "expected" else values[probs.argmax(-1)]
            totals = [self.weight * float(v) for v in judged]
        for rule in self.rules:
            fired = _fires(rule, rows, completions)
            totals = [t + rule.reward * f for t, f in zip(totals, fired)]
        return totals


def judge_conversations(rubric: Rubric, examples: list[dict]) -> list[dict]:
    """SFT conversations that teach a judge model `rubric`: each example {"prompt", "response", "reference"?,
    "label": a class} becomes the filled-in template as the user turn (as `class_probs` renders it) and the class
    as a non-thinking reply, so a model trained here can be the rubric's judge."""
    out = []
    for ex in examples:
        if ex["label"] not in rubric.classes:
            raise UserError(f"rubric '{rubric.name}' has no class '{ex['label']}' (classes: {', '.join(rubric.classes)})")
        text = rubric.template.format(prompt=ex["prompt"], response=ex["response"], reference=ex.get("reference"))
        out.append({"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": ex["label"]}]})
    return out


def _rule(raw: dict, i: int, where: str) -> Rule:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: rule {i} must be a mapping")
    kinds = [k for k in RULE_KINDS if k in raw]
    if len(kinds) != 1:
        raise UserError(f"{where}: rule {i} ({raw.get('name', '?')}) needs exactly one of {', '.join(RULE_KINDS)}")
    kind, value = kinds[0], raw[kinds[0]]
    if kind == "regex":
        try:
            value = re.compile(value)
        except (re.error, TypeError) as e:
            raise UserError(f"{where}: rule {i}: bad regex {value!r} ({e})") from None
    if kind == "verifier" and value not in ("math", "code", "constraints"):
        raise UserError(f"{where}: rule {i}: verifier must be math, code or constraints, not {value!r}")
    if kind == "format" and value != "think":
        raise UserError(f"{where}: rule {i}: format must be 'think'")
    reward = raw.get("reward")
    if isinstance(reward, bool) or not isinstance(reward, (int, float)):
        raise UserError(f"{where}: rule {i} ({raw.get('name', kind)}) needs a numeric 'reward'")
    return Rule(str(raw.get("name", kind)), kind, value, float(reward))


def _fires(rule: Rule, rows: list[dict], completions: list[str]) -> list[float]:
    answers = [parse_assistant(c)["content"] or "" for c in completions]
    if rule.kind == "regex":
        return [float(bool(rule.value.search(a))) for a in answers]
    if rule.kind == "max_words":
        return [float(len(a.split()) > int(rule.value)) for a in answers]
    if rule.kind == "min_words":
        return [float(len(a.split()) < int(rule.value)) for a in answers]
    if rule.kind == "format":
        return [1.0 - v for v in format_reward(rows, completions)]
    verifier: RewardFn = BUILTIN[rule.value]
    return [float(v or 0.0) for v in verifier(rows, completions)]


def rubric_reward(spec: str, device: str | None = None) -> RewardFn:
    """`rbrm:SPEC` for `build_rewards`: SPEC is a rubric file or built-in name, optionally `@JUDGE` (a model)."""
    rubric_spec, _, judge = spec.partition("@")
    return Rubric.load(rubric_spec, judge or None, device).rewards
