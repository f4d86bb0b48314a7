"""Cross-entropy fused with the LM head: the loss and its gradients without the [tokens, vocab] logits tensor.

    loss = linear_cross_entropy(hidden [N, C], head_weight [V, C], targets [N])   # mean over targets != -100

Equal to `F.cross_entropy(hidden @ head_weight.T, targets, ignore_index=-100)` to fp32 rounding. The
tokens are processed in chunks: each chunk's logits are computed into one reused workspace, turned into
their gradient (softmax minus one-hot) in place, and consumed right away by the two gradient matmuls, so the
forward also produces d(hidden) and d(head_weight) and the backward only scales them by the incoming
gradient. With a GPT-2 vocabulary this replaces four [N, 50257] fp32 tensors per step (logits, log-softmax,
their gradients — fresh allocations, page-faulted in every step) by a few MB, and lays each chunk out
vocabulary-major (W @ h^T), the shape the CPU GEMM runs fastest. Use it only when a backward will follow.
"""

from __future__ import annotations

import torch

# tokens per chunk: enough columns for full-speed (multi-threaded) GEMMs and reductions — a few dozen run
# at half speed, and on 2 CPU threads ~700 beat ~300 by 20% — while the chunk's logits stay a fraction of
# the full tensor (128 MB fp32 at GPT-2's vocabulary, vs 412 MB per copy for 2048 tokens)
_CHUNK_ELEMENTS = 1 << 25
_MIN_CHUNK_TOKENS = 256


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        n_tok, vocab = x.shape[0], weight.shape[0]
        valid = targets != -100
        # mean over the scored tokens, kept as a tensor (no host sync); NaN when none is, as F.cross_entropy
        scale = valid.sum().reciprocal().to(x.dtype)
        safe_targets = targets.clamp(min=0)
        chunk = min(n_tok, max(_MIN_CHUNK_TOKENS, _CHUNK_ELEMENTS // vocab))
        chunk = -(-n_tok // -(-n_tok // chunk))  # equal chunks: no small, slow last one
        workspace = torch.empty(vocab * chunk, dtype=x.dtype, device=x.device)
        need_x, need_w = ctx.needs_input_grad[:2]  # e.g. a frozen (LoRA) head needs no weight gradient
        grad_x = torch.empty_like(x) if need_x else None
        grad_w = torch.empty_like(weight) if need_w else None
        loss = torch.zeros((), dtype=torch.float32, device=x.device)
        for start in range(0, n_tok, chunk):
            stop = min(n_tok, start + chunk)
            xc, n = x[start:stop], stop - start
            logits = workspace[: vocab * n].view(vocab, n)  # column j holds token start + j
            torch.mm(weight, xc.t(), out=logits)
            cols = torch.arange(n, device=x.device)
            tgt, keep = safe_targets[start:stop], valid[start:stop].to(x.dtype)
            picked = logits[tgt, cols]
            peak = logits.amax(0)
            logits.sub_(peak).exp_()
            total = logits.sum(0)
            loss += ((peak + total.log() - picked) * keep).sum()
            # d loss / d logits = (softmax - onehot) * scale on scored tokens, 0 elsewhere
            row_scale = keep * scale
            logits.mul_(row_scale / total)
            logits.index_put_((tgt, cols), -row_scale, accumulate=True)
            if need_x:
                torch.mm(logits.t(), weight, out=grad_x[start:stop])
            if need_w and start == 0:
                torch.mm(logits, xc, out=grad_w)
            elif need_w:
                grad_w.addmm_(logits, xc)
        ctx.grads = (grad_x, grad_w)
        return loss * scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.grads is None:
            raise RuntimeError("the fused LM-head loss supports one backward pass; "
                               "call the model again instead of retain_graph=True")
        grad_x, grad_w = ctx.grads
        ctx.grads = None  # scaled in place: these buffers are ours and never seen twice
        return (None if grad_x is None else grad_x.mul_(grad), None if grad_w is None else grad_w.mul_(grad), None)


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits `x @ weight.T` against `targets` (-100 = ignored), computed in chunks."""
    return _LinearCrossEntropy.apply(x, weight, targets)
