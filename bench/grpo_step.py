"""One GRPO step — sample G=8 completions of up to 64 tokens for 4 prompts, score them, update — ours vs TRL.

    python bench/grpo_step.py                       # CPU, 2 threads; prints ms/step of each side and the ratio
    python bench/grpo_step.py --threads 1 --steps 5 --width 256 --layers 4

Both sides start from the same weights (a Qwen3-layout model saved once as an HF folder with its tokenizer:
gptqwen loads it with `gptqwen.loading`, TRL with `AutoModelForCausalLM`), get the same four text prompts
and the same reward function (the share of digits in the completion), sample at temperature 1 with
`max_new_tokens` / `max_completion_length` 64, use the DAPO token-level loss without KL, AdamW at lr 1e-5,
one optimizer step per generation batch, fp32 on the CPU.

* gptqwen: the steps of `gptqwen.align.grpo.grpo_workload` — the workload `gptqwen grpo` trains — run through
  `gptqwen.train.loop.optimizer_step`, the function the training loop calls: the engine samples (batched,
  KV cache, the C decode step), the rewards score, the policy's log-probs are recomputed, one update.
* TRL: `GRPOTrainer.train()` with the matching `GRPOConfig`; each step is timed from `on_step_begin` to
  `on_step_end` (generation happens inside the step).
The first --warmup steps of each side are not timed; the median of the next --steps is reported, with the mean
completion length of each side (EOS may end a completion early on either side).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import torch

from gptqwen.align.grpo import encode_prompt_rows, grpo_workload
from gptqwen.align.rewards import RewardSet
from gptqwen.config import Config
from gptqwen.finetune.synthetic import demo_tokenizer
from gptqwen.loading import load_model_and_tokenizer
from gptqwen.model import Transformer
from gptqwen.train.loop import optimizer_step, setup_process
from gptqwen.train.optim import build_optimizer
from gptqwen.train.recipe import load_recipe

PROMPTS = ["What is 7 - 5 + 3 + 1?", "Is the king true?", "Count to ten:", "Once upon a time"]


def digit_share(completions: list[str]) -> list[float]:
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


def ours(folder: Path, args) -> tuple[list[float], float]:
    recipe = load_recipe("grpo-qwen3", [f"model.base={folder}", "grpo.prompts=unused", "grpo.num_generations=8",
                                        "grpo.prompts_per_step=4", "grpo.max_new_tokens=64", "grpo.loss_type=dapo",
                                        "grpo.beta=0", "train.lr=1e-5", f"train.max_steps={args.warmup + args.steps}",
                                        f"train.threads={args.threads}", "train.device=cpu"], trainer="grpo")  # fmt: skip
    info = setup_process(recipe.train)
    model, tok = load_model_and_tokenizer(str(folder))
    model = model.float()
    rows = encode_prompt_rows(tok, [(i, {"prompt": p}) for i, p in enumerate(PROMPTS, 1)], "bench")
    rewards = RewardSet(["digits"], [lambda rows, completions: digit_share(completions)], [1.0])
    with tempfile.TemporaryDirectory() as out:
        work = grpo_workload(recipe, model, tok, rows, rewards, Path(out), info.device)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = build_optimizer(model, 1e-5, 0.0, (0.9, 0.999))
        model.train()
        times, lengths = [], []
        for step in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            micro = work.micro_batches(step, info)
            optimizer_step(work, micro, model, model, optimizer, trainable, recipe.train, info, contextlib.nullcontext)
            if step >= args.warmup:
                times.append(time.perf_counter() - t0)
                lengths.append(float(micro[0]["stats"]["completion_len"]))
    return times, statistics.mean(lengths)


def trl_side(folder: Path, args) -> tuple[list[float], float]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    times, lengths, marks = [], [], {}

    class Clock(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            marks["t0"] = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            if state.global_step > args.warmup:
                times.append(time.perf_counter() - marks["t0"])

    def reward(prompts, completions, completion_ids=None, **kw):
        if completion_ids is not None:
            lengths.append(statistics.mean(len(c) for c in completion_ids))
        return digit_share(completions)

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    steps = args.warmup + args.steps
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(output_dir=out, per_device_train_batch_size=32, gradient_accumulation_steps=1, num_generations=8,
                            max_completion_length=64, temperature=1.0, beta=0.0, loss_type="dapo", learning_rate=1e-5,
                            lr_scheduler_type="constant", max_steps=steps, logging_steps=1, save_strategy="no",
                            report_to=[], use_cpu=True, bf16=False, seed=0, dataloader_num_workers=0,
                            disable_tqdm=True)  # fmt: skip
        data = Dataset.from_dict({"prompt": PROMPTS * steps})
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=data, processing_class=tokenizer,
                              callbacks=[Clock()])  # fmt: skip
        trainer.train()
    return times, statistics.mean(lengths[args.warmup:]) if len(lengths) > args.warmup else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=256)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tok = demo_tokenizer(512)
    cfg = Config.from_name("qwen3-tiny", n_layer=args.layers, n_embd=args.width, n_head=args.width // 64, n_kv_head=2,
                           head_dim=64, intermediate_size=3 * args.width, vocab_size=tok.vocab_size)  # fmt: skip
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        Transformer(cfg).save_pretrained(folder)
        tok.save(folder)
        print(f"model: {cfg.num_params() / 1e6:.2f}M params ({args.layers} layers, width {args.width}), "
              f"{args.threads} threads; 4 prompts x G=8, <= 64 new tokens, one update per step")
        a, a_len = ours(folder, args)
        b, b_len = trl_side(folder, args)
    ta, tb = statistics.median(a), statistics.median(b)
    print(f"gptqwen: {1000 * ta:8.1f} ms/step (median of {len(a)}; mean completion {a_len:.1f} tokens)")
    print(f"TRL    : {1000 * tb:8.1f} ms/step (median of {len(b)}; mean completion {b_len:.1f} tokens)")
    print(f"speed-up: {tb / ta:.2f}x")


if __name__ == "__main__":
    main()
