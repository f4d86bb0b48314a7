"""Alignment: reward models, rule-based rewards, DPO, GRPO and machine-made preference data.

    losses      DPO (sigmoid / IPO / hinge / cDPO), Bradley–Terry, GRPO advantages and loss variants, k3 KL
    prefs       preference rows ({"prompt","chosen","rejected"}, text or chat) -> token pairs, log-probs
    reward      `gptqwen reward train|score`: a scalar head on any loadable model
    dpo         `gptqwen dpo`: offline preference optimisation (reference log-probs precomputed once)
    grpo        `gptqwen grpo`: online group-relative policy optimisation with the inference engine
    rewards     verifiable rewards: math answers, code tests in a subprocess, think/answer format
    rbrm        rubric judges (GPT-4's RBRM) + programmatic rules, combined with weights
    synth       rejection sampling, execution feedback, instruction evolution (`gptqwen synth ...`)
The trainers run on the training core (`gptqwen.train.loop`) with recipes (`gptqwen.train.recipe`).
"""
