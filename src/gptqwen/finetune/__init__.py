"""Fine-tuning: GPT-1 task-aware transfer, chat SFT with thinking-mode fusion, LoRA, synthetic data.

    gpt1        task input transformations, the extract-token head, L = L_task + λ·L_LM
    transfer    `gptqwen finetune` / `gptqwen predict`: train, export and apply a task model
    sft         conversations -> assistant-only targets, best-fit-decreasing packing
    sft_train   `gptqwen sft`: full or LoRA training, MoE aux loss, export
    lora        LoRA adapters on chosen projections and merging them back
    synthetic   built-in reasoning conversations and an entailment task (no download; `gptqwen synth`)
    evaluate    held-out accuracy with thinking on and off
    common      loading the base model, exporting the result
Both trainers run on the training core (`gptqwen.train.loop`) with recipes (`gptqwen.train.recipe`).
"""
