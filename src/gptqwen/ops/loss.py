"""Cross-entropy fused with the LM head: the loss and its gradients without the [tokens, vocab] logits tensor.

    loss = linear_cross_entropy(hidden [N, C], head_weight [V, C], targets [N])   # mean over targets != -100

Equal to `linear_cross_entropy_reference` (`F.cross_entropy(hidden @ head_weight.T, targets, ignore_index=-100)`)
to fp32 rounding. The tokens are processed in chunks: each chunk's logits are computed into one reused
workspace, turned into their gradient (softmax minus one-hot) in place, and consumed right away by the two
gradient matmuls, so the forward also produces d(hidden) and d(head_weight) and the backward only scales them
by the incoming gradient. With a GPT-2 vocabulary this replaces four [N, 50257] fp32 tensors per step (logits,
log-softmax, their gradients — fresh allocations, page-faulted in every step) by a few MB, and lays each chunk
out vocabulary-major (W @ h^T), the shape the CPU GEMM runs fastest. It pays off only when a backward follows:
`fuses_linear_cross_entropy` says when `linear_cross_entropy` takes this path (fp32 training, any device);
otherwise it computes the reference. The fused pass is the op `gptqwen::linear_cross_entropy`, which
torch.compile keeps in its graph (it is torch ops, but ones the compiler would not chunk).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gptqwen.ops._custom import CustomOp

# tokens per chunk: enough columns for full-speed (multi-threaded) GEMMs and reductions — a few dozen run
# at half speed, and on 2 CPU threads ~700 beat ~300 by 20% — while the chunk's logits stay a fraction of
# the full tensor (128 MB fp32 at GPT-2's vocabulary, vs 412 MB per copy for 2048 tokens)
_CHUNK_ELEMENTS = 1 << 25
_MIN_CHUNK_TOKENS = 256


def linear_cross_entropy_reference(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits `x @ weight.T` against `targets` (-100 = ignored)."""
    return F.cross_entropy((x @ weight.t()).float(), targets, ignore_index=-100)


def fuses_linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `linear_cross_entropy` takes the fused path: a backward will follow (grad mode, an input that
    needs a gradient), both in fp32, and no autocast (which would run the head in another precision)."""
    return (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
            and x.dtype == weight.dtype == torch.float32 and not torch.is_autocast_enabled(x.device.type))


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits `x @ weight.T` against `targets` (-100 = ignored), computed in chunks."""
    if not fuses_linear_cross_entropy(x, weight):
        return linear_cross_entropy_reference(x, weight, targets)
    return _fused_op(x, weight, targets, x.requires_grad, weight.requires_grad)[0]


def _fused(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, need_x: bool, need_w: bool
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, d loss / d x, d loss / d weight); a gradient not needed is an empty tensor."""
    n_tok, vocab = x.shape[0], weight.shape[0]
    valid = targets != -100
    # mean over the scored tokens, kept as a tensor (no host sync); NaN when none is, as F.cross_entropy
    scale = valid.sum().reciprocal().to(x.dtype)
    safe_targets = targets.clamp(min=0)
    chunk = min(n_tok, max(_MIN_CHUNK_TOKENS, _CHUNK_ELEMENTS // vocab))
    chunk = -(-n_tok // -(-n_tok // chunk)) if n_tok else 1  # equal chunks: no small, slow last one
    workspace = torch.empty(vocab * chunk, dtype=x.dtype, device=x.device)
    grad_x = torch.empty(x.shape if need_x else (0,), dtype=x.dtype, device=x.device)
    grad_w = torch.empty(weight.shape if need_w else (0,), dtype=weight.dtype, device=weight.device)
    loss = torch.zeros((), dtype=torch.float32, device=x.device)
    for start in range(0, n_tok, chunk):
        stop = min(n_tok, start + chunk)
        xc, n = x[start:stop], stop - start
        logits = workspace[: vocab * n].view(vocab, n)  # column j holds token start + j
        torch.mm(weight, xc.t(), out=logits)
        cols = torch.arange(n, dtype=torch.long, device=x.device)
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
    if need_w and n_tok == 0:
        grad_w.zero_()
    return loss * scale, grad_x, grad_w


_fused_op = CustomOp("gptqwen::linear_cross_entropy", _fused, device_types=None)  # torch ops: any device


@_fused_op.register_fake
def _(x, weight, targets, need_x, need_w):
    return (x.new_empty((), dtype=torch.float32), x.new_empty(x.shape if need_x else (0,)),
            weight.new_empty(weight.shape if need_w else (0,)))


def _setup(ctx, inputs, output) -> None:
    ctx.need = inputs[3:5]
    ctx.save_for_backward(output[1], output[2])
    ctx.mark_non_differentiable(output[1], output[2])


def _backward(ctx, grad: torch.Tensor, _grad_gx: torch.Tensor, _grad_gw: torch.Tensor):
    grad_x, grad_w = ctx.saved_tensors
    need_x, need_w = ctx.need
    return grad_x * grad if need_x else None, grad_w * grad if need_w else None, None, None, None


_fused_op.register_autograd(_backward, setup_context=_setup)
