"""Pretraining: the trainer loop and its parts.

Modules: config (recipes, overrides), loader (deterministic batches from token shards), optim (AdamW
param groups, warmup + cosine / WSD schedules), checkpoint (atomic save, keep-last-N, load_model /
load_tokenizer), distributed (torchrun: DDP / FSDP2), metrics (JSONL, TensorBoard, loss PNG, MFU),
trainer (the loop; `run_recipe`). The CLI is `gptqwen pretrain`.
"""
