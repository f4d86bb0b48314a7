"""Evaluation: GPT-3 style zero-, one- and few-shot prompting, perplexity and an lm-eval adapter.

    gptqwen eval --model runs/qwen3-shakespeare --task copy --shots 0 --shots 4
    gptqwen eval --model a --model b --task arithmetic_2d_plus --shots 0 1 8 --plot shots.png

Modules: `taskspec` (YAML + JSONL task format; the built-in task files are the data folder `tasks/`), `synthetic` (generated
in-context-learning probes), `lm` (batched scoring on a model), `harness` (few-shot prompts and
evaluation), `scorers` (metrics and standard errors), `perplexity` (text files and held-out
Shakespeare), `lm_eval_adapter` (lm-evaluation-harness model `gptqwen`), `plot` (accuracy vs shots).
"""

from gptqwen.eval.harness import EvalResult, evaluate
from gptqwen.eval.lm import ScoringModel
from gptqwen.eval.taskspec import Task, builtin_task_names, load_task

__all__ = ["EvalResult", "ScoringModel", "Task", "builtin_task_names", "evaluate", "load_task"]
