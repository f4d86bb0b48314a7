"""Recipe section of the vision-language trainer: `vl` (the VLM, its synthetic image data, what a stage trains).
`train.recipe` lists it in `TRAINERS`; the trainer is `finetune.vl` (`gptqwen vl train`).

Ranges are checked when the section is built (`__post_init__`), so a bad value — in the recipe, a stage or an
override — fails before any work like every other recipe key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gptqwen.train.recipe_reasoning import _check
from gptqwen.vision.data import DEFAULT_TASKS, TASKS

VL_TRAIN = ("encoder", "projector", "decoder", "all")


@dataclass
class VLConfig:
    """vl: the vision-language model, its synthetic image data, and what trains (stage 1: projector, 2: all)."""

    preset: str = "qwen-vl-tiny"  # VLM preset of a new model (gptqwen.vision.config.VLM_PRESETS)
    base: str | None = None  # instead: a VLM folder (a finished vl run) to continue from
    decoder: str | None = None  # a text model (e.g. a vl.text_only run) to take the decoder and tokenizer from
    tokenizer: str | None = None  # tokenizer.json or preset; None -> a small Qwen-style BPE of the tasks' text
    train: str = "all"  # encoder (through a readout) | projector | decoder (projector + decoder, ViT frozen) | all
    tasks: list = field(default_factory=lambda: list(DEFAULT_TASKS))  # + line, page: reading several words
    train_items: int = 2000  # training images per task
    task_weights: dict = field(default_factory=dict)  # {task: w}: w x train_items of that task (more of a hard task)
    eval_items: int = 200  # held-out images per task, graded after training (0 = none)
    data_seed: int = 0
    text_only: bool = False  # baseline: the same model trained and graded on the questions without the images
    max_new_tokens: int = 6  # the answer's length when graded (line and page get at least what they need)
    # encoder stage: also train every image token on what lies under it (chart: the bar's letter and value;
    # shapes: the colour, and in position items its side) through heads shared by all tokens (finetune.vl.TokenTargets)
    token_targets: bool = False

    def __post_init__(self) -> None:
        _check("vl", self, {
            "train": (lambda v: v in VL_TRAIN, "one of " + ", ".join(VL_TRAIN)),
            "train_items": (lambda v: v >= 1, ">= 1"), "eval_items": (lambda v: v >= 0, ">= 0"),
            "max_new_tokens": (lambda v: v >= 1, ">= 1"),
            "tasks": (lambda v: bool(v) and set(v) <= set(TASKS), "a non-empty list of " + ", ".join(TASKS)),
            "task_weights": (lambda v: all(t in self.tasks and w > 0 for t, w in v.items()),
                             "{task: weight > 0} for tasks in vl.tasks"),
        })  # fmt: skip
