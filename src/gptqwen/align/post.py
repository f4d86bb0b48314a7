"""Qwen3's four post-training stages as one recipe: `gptqwen post -c qwen3-post --from BASE --out DIR`.

    from gptqwen.align.post import run_post
    run_post(load_recipe("qwen3-post", ["model.base=runs/qwen3-shakespeare"], trainer="post"), "post/")

The recipe's stages run in order, stage i starting from stage i−1's exported weights, each in `DIR/<stage>/` (a
normal sft or grpo run folder: metrics, checkpoints, exact `--resume`); `DIR/stages.json` records the finished
ones, so `--resume` skips them and continues the interrupted one. Each stage's `post.kind`:

1. `cold_start` — long-CoT cold start: SFT on step-by-step solutions inside `<think>` from the programmatic solver
   (`finetune.synthetic`: every step is computed, so every solution is verified by construction);
2. `reasoning_rl` — GRPO with verifiable rewards (`grpo.rewards`, default math) on problems neither trivial nor
   impossible for the model as it is now: `post.pass_samples` samples per problem, kept when the pass rate is in
   [`post.pass_min`, `post.pass_max`] (`problems_by_pass_rate`);
3. `fusion` — thinking-mode fusion: SFT on thinking and non-thinking conversations mixed (`sft.think_ratio`, the
   `/think` `/no_think` flags with `sft.flag_prob`; non-thinking answers render with the empty think block of the
   Qwen3 template), so one model does both;
4. `general_rl` — GRPO for format and instruction following: each problem carries an instruction checked by a
   program (`align.rewards` constraints: word limit, closing word, capitals); rewards from `grpo.rewards` (default
   math, format, constraints; add `rbrm:RUBRIC@JUDGE` for a rubric judged by a model, `align.rbrm`). With
   `post.judge_steps` the stage first fine-tunes a copy of its starting model as the judge of its `rbrm:` rubric
   (Qwen3's model-based reward with a reference answer: `rbrm:reference-answer`, replies labelled by
   `reference_judge_examples`) into `DIR/<stage>/judge/`, and judges with it.

After each stage `post.eval_problems` held-out problems (never in any stage's data) are graded greedily with
thinking on and off; `stages.json` and the summary hold the accuracies with their standard errors.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gptqwen.align.flops import FlopCounter
from gptqwen.align.grpo import run_grpo, sample
from gptqwen.align.rbrm import Rubric, judge_conversations
from gptqwen.align.rewards import math_reward
from gptqwen.errors import UserError
from gptqwen.finetune.evaluate import compare_modes, heldout_problems
from gptqwen.finetune.sft_train import run_sft
from gptqwen.finetune.synthetic import Problem, problems, reasoning_conversations, to_conversation
from gptqwen.infer import SamplingParams
from gptqwen.loading import load_model_and_tokenizer
from gptqwen.train import checkpoint as ckpt_io
from gptqwen.train.recipe import TRAINERS, Recipe
from gptqwen.utils import atomic_write

StageFn = Callable[..., dict]
HELDOUT_SEED = 999_983
# instruction-following checks of the general RL stage: (instruction, `align.rewards` constraint)
INSTRUCTIONS = (("Answer in at most 6 words.", {"kind": "max_words", "value": 6}),
                ("End your answer with the word done.", {"kind": "end_with", "value": "done"}),
                ("Write your answer in capital letters.", {"kind": "uppercase", "value": True}))  # fmt: skip


def sub_recipe(recipe: Recipe, trainer: str, **updates: dict) -> Recipe:
    """A `trainer` recipe from the sections of `recipe` it shares (model, sft, grpo, train), `updates` merged in."""
    raw = {"name": recipe.name, "trainer": trainer}
    for section in TRAINERS[trainer]:
        if section in recipe.sections:
            raw[section] = dataclasses.asdict(recipe.sections[section])
        raw[section] = {**raw.get(section, {}), **updates.get(section, {})}
    return Recipe.from_dict(raw, trainer)


def run_stages(recipe: Recipe, out: Path, run_stage: StageFn, resume: bool = False, overwrite: bool = False,
               quiet: bool = False, stop_at: int | None = None,
               after_stage: Callable[[Recipe, Path], dict] | None = None) -> dict:  # fmt: skip
    """Run the recipe's stages (or the recipe itself, without stages) in `out/<stage>/`, each from the previous
    stage's export; finished stages are skipped on `resume`. `stop_at` stops the current stage at that step."""
    record = out / "stages.json"
    done: dict = json.loads(record.read_text()) if record.is_file() and not overwrite else {}
    if (done or ckpt_io.list_checkpoints(out / _name(recipe, 0))) and not (resume or overwrite):
        raise UserError(f"'{out}' already holds this run; pass --resume to continue it, --overwrite to start over, "
                        "or --out NEW_DIR")  # fmt: skip
    if resume and not done and not ckpt_io.list_checkpoints(out / _name(recipe, 0)):
        raise UserError(f"nothing to resume in '{out}' (no finished stage, no checkpoint)")
    base, tokenizer = recipe.model.base, recipe.model.tokenizer
    if not base:
        raise UserError("no model to start from; pass --from (a run dir, HF dir, .gguf or preset) or set model.base")
    if not resume:  # a new run: the record of an earlier one must not make a later --resume skip stages
        record.unlink(missing_ok=True)
    for i in range(max(1, len(recipe.stages))):
        stage, name = (recipe.stage(i) if recipe.stages else recipe), _name(recipe, i)
        folder = out / name
        if name in done:
            base, tokenizer = str(folder), None
            continue
        stage.model.base, stage.model.tokenizer = base, tokenizer
        again = resume and bool(ckpt_io.list_checkpoints(folder))
        cpu = time.process_time()
        with FlopCounter() as flops:  # the stage's compute, counted the same way for every command that runs stages
            summary = run_stage(stage, folder, resume=again, overwrite=overwrite and not again, quiet=quiet, stop_at=stop_at)
        if "out" not in summary:  # stopped early (--stop-at): finish with --resume
            return {"stages": done, "stopped_in": name, "step": summary["step"], "steps": summary["steps"]}
        # before grading: after_stage's held-out evaluation is not the stage's work
        summary.update(flops=flops.total, flops_train=flops.by_kind["train"], cpu_s=round(time.process_time() - cpu, 2))
        if after_stage is not None:
            summary.update(after_stage(stage, folder))
        done[name] = {k: v for k, v in summary.items() if isinstance(v, (int, float, str, dict, list, type(None)))}
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(record) as f:
            json.dump(done, f, indent=2, default=str)
        base, tokenizer = str(folder), None
    return {"stages": done, "out": str(out / _name(recipe, max(1, len(recipe.stages)) - 1)),
            "flops": sum(s.get("flops", 0) for s in done.values())}


def _name(recipe: Recipe, i: int) -> str:
    return f"{i + 1}-{recipe.stages[i]['name']}" if recipe.stages else "run"


def stage_problems(post) -> list[Problem]:
    return problems(post.problems, post.seed, tuple(post.kinds))


def fusion_conversations(post, sft) -> list[dict]:
    """Thinking and non-thinking conversations mixed (`sft.think_ratio`, flags with `sft.flag_prob`)."""
    return reasoning_conversations(post.problems, post.seed, sft.think_ratio, sft.flag_prob, tuple(post.kinds))


@torch.no_grad()
def problems_by_pass_rate(model, tok, items: list[Problem], samples: int, params: SamplingParams,
                          chunk: int = 256) -> list[float]:  # fmt: skip
    """Each problem's pass rate: the share of `samples` sampled completions (thinking mode) the math reward accepts."""
    prompts = [tok.apply_chat_template([{"role": "user", "content": p.question}], add_generation_prompt=True,
                                       enable_thinking=True, tokenize=True) for p in items for _ in range(samples)]  # fmt: skip
    rows = [{"answer": p.answer} for p in items for _ in range(samples)]
    texts: list[str] = []
    for s in range(0, len(prompts), chunk):
        texts += sample(model, tok, prompts[s:s + chunk], params)[1]
    rewards = math_reward(rows, texts)
    return [sum(r or 0.0 for r in rewards[i * samples:(i + 1) * samples]) / samples for i in range(len(items))]


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return str(path)


def _sft_stage(stage: Recipe, folder: Path, convs: list[dict], **kw) -> dict:
    data = _write_jsonl(folder / "data.jsonl", convs)
    return run_sft(sub_recipe(stage, "sft", sft={"data": data, "synthetic": None}), folder, **kw)


def _filtered_prompts(stage: Recipe, folder: Path, resume: bool) -> tuple[list[dict], dict]:
    """reasoning_rl: the stage's problems the current model solves sometimes, as GRPO prompt rows."""
    p, g = stage.post, stage.grpo
    items = stage_problems(p)
    cache = folder / "pass_rates.json"
    if cache.is_file() and resume:  # a resumed stage keeps the prompts it chose (sampling again could choose others)
        saved = json.loads(cache.read_text())
        return saved["rows"], saved["stats"]
    model, tok = load_model_and_tokenizer(stage.model.base)
    torch.manual_seed(stage.train.seed)
    params = SamplingParams(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p, top_k=g.top_k)
    rates = problems_by_pass_rate(model.eval(), tok, items, p.pass_samples, params)
    rows = [{"prompt": [{"role": "user", "content": q.question}], "answer": q.answer}
            for q, r in zip(items, rates) if p.pass_min <= r <= p.pass_max]  # fmt: skip
    stats = {"problems": len(items), "kept": len(rows), "solved_always": sum(r > p.pass_max for r in rates),
             "solved_never": sum(r < p.pass_min for r in rates), "mean_pass_rate": sum(rates) / len(rates)}
    if len(rows) < g.prompts_per_step:
        raise UserError(f"only {len(rows)} of {len(items)} problems have a pass rate in [{p.pass_min}, {p.pass_max}] "
                        f"(mean pass rate {stats['mean_pass_rate']:.2f}); widen the range or change post.problems")  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(cache) as f:
        json.dump({"stats": stats, "rows": rows}, f)
    return rows, stats


def instruction_prompts(post) -> list[dict]:
    """general_rl: each problem with one checkable instruction appended (answer and constraint in the row)."""
    rng = random.Random(post.seed + 1)
    rows = []
    for q in stage_problems(post):
        text, constraint = rng.choice(INSTRUCTIONS)
        rows.append({"prompt": [{"role": "user", "content": f"{q.question} {text}"}], "answer": q.answer,
                     "constraints": [constraint]})  # fmt: skip
    return rows


def reference_judge_examples(post, n: int, seed: int) -> list[dict]:
    """`n` labelled replies to the general-RL stage's prompts (`instruction_prompts`), half giving the reference answer
    and half another one, in the styles the instructions ask for (capitals, a closing word, bare): training data for a
    judge of the `reference-answer` rubric (`align.rbrm.judge_conversations`; A = gives the reference answer)."""
    rng = random.Random(seed)
    rows = instruction_prompts(dataclasses.replace(post, problems=n, seed=seed))
    examples = []
    for row in rows:
        answer, right = row["answer"], rng.random() < 0.5
        if not right:
            answer = ({"yes": "no", "no": "yes"}.get(answer) or
                      str(rng.choice([v for v in range(10) if str(v) != answer])))  # fmt: skip
        reply = rng.choice(("The answer is {}.", "THE ANSWER IS {}.", "The answer is {}. done", "{}")).format(answer)
        examples.append({"prompt": row["prompt"][-1]["content"], "reference": row["answer"], "response": reply,
                         "label": "A" if right else "B"})  # fmt: skip
    return examples


def run_stage(stage: Recipe, folder: Path, **kw) -> dict:
    """One of the four stages (by `post.kind`) from `stage.model.base` into `folder`."""
    p = stage.post
    if p.kind == "cold_start":
        return _sft_stage(stage, folder, [to_conversation(q, thinking=True, flag=False) for q in stage_problems(p)], **kw)
    if p.kind == "fusion":
        return _sft_stage(stage, folder, fusion_conversations(p, stage.sft), **kw)
    grpo: dict = {"eval_problems": None}
    if p.kind == "reasoning_rl":
        rows, stats = _filtered_prompts(stage, folder, kw.get("resume", False))
    else:
        rows, stats = instruction_prompts(p), {}
        if p.judge_steps:
            judge, stats = train_judge(stage, folder / "judge", **kw)
            grpo["rewards"] = [f"{r}@{judge}" if r.startswith("rbrm:") and "@" not in r else r for r in stage.grpo.rewards]
    grpo["prompts"], grpo["synthetic"] = _write_jsonl(folder / "prompts.jsonl", rows), None
    summary = run_grpo(sub_recipe(stage, "grpo", grpo=grpo), folder, **kw)
    return {**summary, **({"pass_rates": stats} if p.kind == "reasoning_rl" else {"judge": stats} if stats else {})}


def train_judge(stage: Recipe, out: Path, resume: bool = False, overwrite: bool = False, quiet: bool = False,
                stop_at: int | None = None) -> tuple[str, dict]:  # fmt: skip
    """general_rl with `post.judge_steps`: fine-tune a copy of the stage's starting model as the judge of the stage's
    `rbrm:` rubric (A = the reply gives the reference answer, B = not; `reference_judge_examples`) into `out`.
    A finished judge is reused on resume; `stop_at` is left to the GRPO part of the stage."""
    specs = [r for r in stage.grpo.rewards if r.startswith("rbrm:") and "@" not in r]
    if len(specs) != 1:
        raise UserError("post.judge_steps trains the judge of one rubric: put exactly one 'rbrm:RUBRIC' (without "
                        f"@JUDGE) in this stage's grpo.rewards (it has {stage.grpo.rewards})")  # fmt: skip
    rubric = Rubric.load(specs[0].removeprefix("rbrm:"), with_judge=False)
    if set(rubric.classes) != {"A", "B"}:
        raise UserError(f"rubric '{rubric.name}' has classes {sorted(rubric.classes)}; a trained judge answers A (the "
                        "reply gives the reference answer) or B, like the built-in rubric reference-answer")  # fmt: skip
    p = stage.post
    if not (resume and (out / "sft.json").is_file()):
        data = out / "data.jsonl"
        if not data.is_file():
            _write_jsonl(data, judge_conversations(rubric, reference_judge_examples(p, p.judge_examples, p.seed + 1)))
        judge = sub_recipe(stage, "sft", sft={"data": str(data), "synthetic": None, "flag_prob": 0.0},
                           train={"max_steps": p.judge_steps, "lr": p.judge_lr, "min_lr": p.judge_lr / 10,
                                  "schedule": "cosine", "warmup_ratio": 0.1, "weight_decay": 0.0})  # fmt: skip
        again = resume and bool(ckpt_io.list_checkpoints(out))
        run_sft(judge, out, resume=again, overwrite=overwrite and not again, quiet=quiet)
    return str(out), {"judge": str(out), "rubric": rubric.name, "examples": p.judge_examples, "steps": p.judge_steps}


def heldout_set(recipe: Recipe, n: int) -> list[Problem]:
    """`n` problems that no stage of the recipe trains on (the same set after every stage)."""
    seen = set()
    for i in range(max(1, len(recipe.stages))):
        post = (recipe.stage(i) if recipe.stages else recipe).post
        seen |= {q.question for q in stage_problems(post)}
    return heldout_problems(n, HELDOUT_SEED, seen, tuple(recipe.post.kinds))


def grade(model_dir: Path, items: list[Problem], max_new_tokens: int) -> dict:
    """Held-out accuracy ± stderr of an exported stage, thinking and non-thinking."""
    model, tok = load_model_and_tokenizer(str(model_dir))
    res = compare_modes(model, tok, items, max_new_tokens)
    return {mode: {"accuracy": r["accuracy"], "stderr": (r["accuracy"] * (1 - r["accuracy"]) / max(1, r["n"])) ** 0.5,
                   "n": r["n"], "answered": r["answered"], "by_kind": r["by_kind"]} for mode, r in res.items()}  # fmt: skip


def run_post(recipe: Recipe, out: str | Path, resume: bool = False, overwrite: bool = False, quiet: bool = False,
             stop_at: int | None = None) -> dict:  # fmt: skip
    """The four stages of `recipe` from `model.base` into `out`; returns the per-stage summaries."""
    items = heldout_set(recipe, recipe.post.eval_problems) if recipe.post.eval_problems else []

    def after(stage: Recipe, folder: Path) -> dict:
        return {"heldout": grade(folder, items, stage.post.eval_max_new_tokens)} if items else {}

    return run_stages(recipe, Path(out), run_stage, resume, overwrite, quiet, stop_at, after)
