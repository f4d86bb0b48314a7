"""Training: one recipe system and one training core for every trainer.

Modules: recipe (YAML recipes, their typed sections per trainer, `section.key=value` overrides, all
checked before any work), loop (the core: `Workload` + `train` — schedule, accumulation, logging,
atomic checkpoints, exact resume), trainer (pretraining on token shards; `run_recipe`), loader
(deterministic batches from token shards), optim (AdamW param groups, warmup + cosine / WSD / linear
schedules), checkpoint (atomic save, keep-last-N, load_model), distributed (torchrun: DDP / FSDP2,
activation checkpointing), metrics (JSONL, TensorBoard, loss PNG, MFU), progress (the console bar).
The CLIs are `gptqwen pretrain`, `gptqwen sft` and `gptqwen finetune`.
"""
