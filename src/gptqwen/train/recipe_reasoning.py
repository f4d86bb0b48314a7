"""Recipe sections of the reasoning trainers: `distill` (strong-to-weak distillation) and `post` (Qwen3's four
post-training stages). `train.recipe` lists them in `TRAINERS`; the trainers are `align.distill` and `align.post`.

Ranges are checked when a section is built (`__post_init__`), so a bad value fails before any work like every
other recipe key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gptqwen.errors import UserError


def _check(section: str, obj: object, rules: dict) -> None:
    for name, (ok, wanted) in rules.items():
        value = getattr(obj, name)
        if value is not None and not ok(value):
            raise UserError(f"{section}.{name} = {value!r} is out of range; it must be {wanted}")


_KINDS = ("arithmetic", "logic")


@dataclass
class DistillConfig:
    """distill: teacher, prompts, and the phase — off_policy (teacher answers become SFT data) or on_policy (the student samples,
    per-token KL to the teacher's distribution on its own samples)."""

    teacher: str | None = None  # any loadable model sharing the student's tokenizer
    phase: str = "on_policy"  # off_policy | on_policy (a recipe's stages run both, in this order)
    prompts: str | None = None  # JSONL {"prompt": text or messages, "answer"?}
    synthetic: int | None = None  # instead of prompts: N built-in problems with answers
    synthetic_kinds: list = field(default_factory=lambda: list(_KINDS))
    synthetic_seed: int = 0
    think_ratio: float = 0.5  # share of prompts answered (off_policy) or sampled (on_policy) in thinking mode
    verify: bool = True  # off_policy: keep only teacher answers that match the row's "answer" (rows without one stay)
    teacher_max_new_tokens: int = 160  # off_policy: the teacher's turn length
    teacher_temperature: float = 0.0  # off_policy: 0 = greedy answers; > 0 samples (more varied data)
    dense_kl: float = 0.0  # off_policy: weight w of the teacher's full distribution: (1 − w)·CE + w·KL(teacher || student)
    dense_temperature: float = 1.0  # off_policy: T of that KL, between both distributions softened by T, times T²
    kl: str = "reverse"  # on_policy: reverse KL(student || teacher) (mode seeking) | forward KL(teacher || student)
    prompts_per_step: int = 8  # on_policy: student samples per optimizer step
    max_new_tokens: int = 96  # on_policy: length of the student's samples
    temperature: float = 1.0  # on_policy: the student's sampling temperature

    def __post_init__(self) -> None:
        _check("distill", self, {
            "phase": (lambda v: v in ("off_policy", "on_policy"), "off_policy or on_policy"),
            "kl": (lambda v: v in ("reverse", "forward"), "reverse or forward"),
            "synthetic": (lambda v: v >= 1, ">= 1"), "think_ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
            "teacher_max_new_tokens": (lambda v: v >= 1, ">= 1"), "teacher_temperature": (lambda v: v >= 0, ">= 0"),
            "dense_kl": (lambda v: 0 <= v <= 1, "in [0, 1]"), "dense_temperature": (lambda v: v > 0, "> 0"),
            "prompts_per_step": (lambda v: v >= 1, ">= 1"),
            "max_new_tokens": (lambda v: v >= 1, ">= 1"), "temperature": (lambda v: v > 0, "> 0 (sampling)"),
            "synthetic_kinds": (lambda v: bool(v) and set(v) <= set(_KINDS), "a non-empty list of " + ", ".join(_KINDS)),
        })  # fmt: skip


POST_STAGES = ("cold_start", "reasoning_rl", "fusion", "general_rl")


@dataclass
class PostConfig:
    """post: what one stage of the four does (each stage sets `kind`; its sft / grpo / train sections say how)."""

    kind: str = "cold_start"  # cold_start (SFT, verified steps in <think>) | reasoning_rl (GRPO, pass-rate filtered)
    #                           | fusion (SFT, thinking + non-thinking) | general_rl (GRPO: format, checks, rubric)
    problems: int = 2000  # built-in problems the stage draws from (its data; held-out ones are drawn apart)
    seed: int = 0  # seed of the stage's problems (each stage should use its own)
    kinds: list = field(default_factory=lambda: list(_KINDS))
    pass_samples: int = 4  # reasoning_rl: samples per problem to measure the current model's pass rate
    pass_min: float = 0.01  # reasoning_rl: keep problems with pass_min <= pass rate <= pass_max
    pass_max: float = 0.99
    eval_problems: int = 200  # held-out problems graded after the stage, thinking and non-thinking (0 = none)
    eval_max_new_tokens: int = 128
    judge_steps: int = 0  # general_rl: fine-tune a copy of the stage's starting model this many steps as the judge of
    #                       the stage's `rbrm:` rubric (labelled replies, `reference_judge_examples`); 0 = no trained judge
    judge_examples: int = 4000  # general_rl: labelled replies the judge is fine-tuned on
    judge_lr: float = 1.0e-3

    def __post_init__(self) -> None:
        _check("post", self, {
            "kind": (lambda v: v in POST_STAGES, "one of " + ", ".join(POST_STAGES)), "problems": (lambda v: v >= 1, ">= 1"),
            "pass_samples": (lambda v: v >= 1, ">= 1"), "pass_min": (lambda v: 0 <= v <= 1, "in [0, 1]"),
            "pass_max": (lambda v: 0 <= v <= 1, "in [0, 1]"), "eval_problems": (lambda v: v >= 0, ">= 0"),
            "eval_max_new_tokens": (lambda v: v >= 1, ">= 1"), "judge_steps": (lambda v: v >= 0, ">= 0"),
            "judge_examples": (lambda v: v >= 1, ">= 1"), "judge_lr": (lambda v: v > 0, "> 0"),
            "kinds": (lambda v: bool(v) and set(v) <= set(_KINDS), "a non-empty list of " + ", ".join(_KINDS)),
        })  # fmt: skip
        if self.pass_min > self.pass_max:
            raise UserError(f"post.pass_min {self.pass_min} is above post.pass_max {self.pass_max}")

