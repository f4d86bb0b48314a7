"""The compute of a piece of work in FLOPs, counted from the model forwards it actually runs.

    with FlopCounter() as flops:
        run_stage(...)
    flops.total, flops.by_kind   # {"train": ..., "forward": ...}

`align.post.run_stages` wraps every stage of `gptqwen post` and `gptqwen distill` in one, so both commands record the
same figures: `flops` (and `flops_train`, the part with gradients) and `cpu_s` (CPU seconds of the process) in each
stage's entry of `stages.json`, and `flops` summed over the stages in the command's summary.
The usual estimates (Kaplan et al.), with N = all parameters of the model that runs (the embedding counted once: with
a tied head it is the output projection's matmul) and tokens = every position the forward computes, padding included:

- a forward with gradients (training: SFT, GRPO's policy loss, the student's side of a KL loss): 6·N per token
  (forward 2·N + backward 4·N);
- a forward without gradients (sampling — prompt prefill and every decode step of every row of the batch, finished
  rows included —, the teacher's or a reference model's logits, a judge's scores, grading): 2·N per token.

Attention's sequence-length term and the optimizer are left out (small at these lengths; the same on both sides).
Decode steps that run in the engine's C kernel (`infer.native`) are counted too. A resumed stage counts only the work
done after resuming.
"""

from __future__ import annotations

import torch
from torch.nn.modules.module import register_module_forward_pre_hook

from gptqwen.infer.native import NativeDecoder
from gptqwen.model import Transformer


class FlopCounter:
    """Counts 6·N·tokens (with gradients) or 2·N·tokens (without) over every `Transformer` forward while active."""

    def __init__(self) -> None:
        self.by_kind = {"train": 0, "forward": 0}
        self._params: dict[int, int] = {}

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())

    def _add(self, model: torch.nn.Module, tokens: int, grad: bool) -> None:
        n = self._params.get(id(model))
        if n is None:
            n = self._params[id(model)] = sum(p.numel() for p in model.parameters())
        self.by_kind["train" if grad else "forward"] += (6 if grad else 2) * n * tokens

    def _hook(self, module: torch.nn.Module, args: tuple) -> None:
        if isinstance(module, Transformer) and args and isinstance(args[0], torch.Tensor):
            grad = torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters())
            self._add(module, args[0].numel(), grad)

    def __enter__(self) -> FlopCounter:
        self._handle = register_module_forward_pre_hook(self._hook)
        # the engine's C decode step bypasses the module's forward, so its calls are counted where they are made
        self._step = step = NativeDecoder.step

        def counted(decoder: NativeDecoder, tokens: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            self._add(decoder.model, tokens.shape[0], False)
            return step(decoder, tokens, *args, **kwargs)

        NativeDecoder.step = counted
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()
        NativeDecoder.step = self._step
