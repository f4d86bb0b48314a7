"""Cross-entropy fused with the LM head: the loss and its gradients without the [tokens, vocab] logits tensor.

    loss = linear_cross_entropy(hidden [N, C], head_weight [V, C], targets [N])   # mean over targets != -100

Equal to `linear_cross_entropy_reference` (`F.cross_entropy(hidden @ head_weight.T, targets, ignore_index=-100)`)
to rounding. `fuses_linear_cross_entropy` says when `linear_cross_entropy` takes a fused path (only when a
backward follows: otherwise it computes the reference):

* fp32 (any device): the tokens go in chunks; each chunk's logits are computed into one reused workspace, turned
  into their gradient (softmax minus one-hot) in place and consumed right away by the two gradient matmuls, so
  the forward also produces d(hidden) and d(head_weight) and the backward only scales them. With a GPT-2
  vocabulary this replaces four [N, 50257] fp32 tensors per step (logits, log-softmax, their gradients — fresh
  allocations, page-faulted in every step) by a few MB, laid out vocabulary-major (W @ h^T), the shape the CPU
  GEMM runs fastest. The op `gptqwen::linear_cross_entropy` (torch ops).
* bf16 on the CPU (autocast to bf16, or bf16 tensors; the C kernels built): the head runs in bf16 as autocast
  would, one block of vocabulary rows at a time, each block's logits small enough to stay in cache from its
  product to the C pass that consumes it (`csrc/loss.c`). The forward sweeps the blocks once for each token's
  log-sum-exp and target logit; the backward recomputes every block (the bf16 product is the cheap part on a CPU
  with AMX), turns it into its gradient, scaled by the incoming one, and feeds the two gradient products. On the
  GPT-2 bench shape (2048 tokens x 50304) this takes ~30% less CPU time than inductor's fused kernels over the
  whole logits tensor (measured alone, 1 thread; `bench/train_step.py` times the whole step). The ops
  `gptqwen::linear_cross_entropy_bf16` and `..._bf16_backward`.

torch.compile keeps these ops in its graph (opaque nodes: the compiler would not block them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gptqwen.ops import _clib
from gptqwen.ops._custom import CustomOp

# tokens per chunk: enough columns for full-speed (multi-threaded) GEMMs and reductions — a few dozen run
# at half speed, and on 2 CPU threads ~700 beat ~300 by 20% — while the chunk's logits stay a fraction of
# the full tensor (128 MB fp32 at GPT-2's vocabulary, vs 412 MB per copy for 2048 tokens)
_CHUNK_ELEMENTS = 1 << 25
_MIN_CHUNK_TOKENS = 256
# bf16 logits per vocabulary block (4 MB): the block stays in cache from its product to the C pass, while its
# products keep ~1000 rows (a few hundred run ~30% slower on AMX); tokens go in chunks of at most
# _BF16_TOKENS so that a block keeps its rows
_BF16_BLOCK_ELEMENTS = 1 << 21
_BF16_TOKENS = 4096


def linear_cross_entropy_reference(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits `x @ weight.T` against `targets` (-100 = ignored)."""
    return F.cross_entropy((x @ weight.t()).float(), targets, ignore_index=-100)


def _fused_path(x: torch.Tensor, weight: torch.Tensor) -> str | None:
    """'fp32', 'bf16' or None: the fused path `linear_cross_entropy` takes for these inputs."""
    if not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        return None  # no backward follows: the gradients computed in the forward would be wasted
    floats = (torch.float32, torch.bfloat16)
    autocast = torch.is_autocast_enabled(x.device.type)
    bf16 = (torch.get_autocast_dtype(x.device.type) == torch.bfloat16 if autocast
            else x.dtype == weight.dtype == torch.bfloat16)
    if bf16 and x.dtype in floats and weight.dtype in floats and x.device.type == weight.device.type == "cpu":
        return "bf16" if _clib.available() else None
    if not autocast and x.dtype == weight.dtype == torch.float32:
        return "fp32"
    return None


def fuses_linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `linear_cross_entropy` takes a fused path: a backward will follow (grad mode, an input that needs
    a gradient), and either fp32 without autocast, or bf16 (autocast to bf16, or bf16 tensors) on the CPU."""
    return _fused_path(x, weight) is not None


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits `x @ weight.T` against `targets` (-100 = ignored), computed in chunks."""
    path = _fused_path(x, weight)
    if path is None:
        return linear_cross_entropy_reference(x, weight, targets)
    if path == "bf16":
        return _bf16_op(x, weight, targets)[0]
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


def _token_chunks(n_tok: int) -> list[tuple[int, int]]:
    return [(start, min(n_tok, start + _BF16_TOKENS)) for start in range(0, n_tok, _BF16_TOKENS)]


def _vocab_blocks(n: int, vocab: int) -> list[tuple[int, int]]:
    rows = min(vocab, max(64, _BF16_BLOCK_ELEMENTS // max(n, 1)))
    return [(v0, min(vocab, v0 + rows)) for v0 in range(0, vocab, rows)]


def _block_logits(wb: torch.Tensor, xb: torch.Tensor, v0: int, v1: int, block: torch.Tensor) -> torch.Tensor:
    """Logits of vocabulary rows [v0, v1) for the chunk's tokens, [v1 - v0, n] bf16, in the reused workspace."""
    n = xb.shape[0]
    return torch.mm(wb[v0:v1], xb.t(), out=block[: (v1 - v0) * n].view(v1 - v0, n))


def _bf16_forward(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, log-sum-exp [N], target logit [N], the bf16 weight — empty when `weight` is bf16 already): the
    first sweep over the vocabulary blocks, whose statistics the backward's sweep reuses."""
    lib, threads = _clib.library(), _clib.threads()
    n_tok = x.shape[0]
    xb, wb = x.to(torch.bfloat16).contiguous(), weight.to(torch.bfloat16).contiguous()
    lse = torch.empty(n_tok, dtype=torch.float32, device=x.device)
    picked = torch.zeros(n_tok, dtype=torch.float32, device=x.device)
    targets = targets.long().contiguous()
    for start, stop in _token_chunks(n_tok):
        xc, n = xb[start:stop], stop - start
        m = torch.full((n,), -torch.inf, dtype=torch.float32, device=x.device)
        s = torch.zeros(n, dtype=torch.float32, device=x.device)
        blocks = _vocab_blocks(n, wb.shape[0])
        block = torch.empty((blocks[0][1] - blocks[0][0]) * n, dtype=torch.bfloat16, device=x.device)
        for v0, v1 in blocks:
            logits = _block_logits(wb, xc, v0, v1, block)
            _clib.check(lib.gq_ce_stats(logits.data_ptr(), v1 - v0, n, v0, targets[start:stop].data_ptr(), m.data_ptr(),
                                        s.data_ptr(), picked[start:stop].data_ptr(), threads), "gq_ce_stats")
        torch.add(m, s.log(), out=lse[start:stop])
    valid = targets != -100
    loss = ((lse - picked) * valid).sum() / valid.sum()  # 0 scored tokens give NaN, as F.cross_entropy
    return loss, lse, picked, wb if weight.dtype != torch.bfloat16 else wb.new_empty((0,))


def _bf16_backward(x: torch.Tensor, weight: torch.Tensor, wb: torch.Tensor, targets: torch.Tensor,
                   lse: torch.Tensor, picked: torch.Tensor, grad: torch.Tensor, need_x: bool, need_w: bool
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(d hidden, d weight) scaled by `grad` (empty when not needed): the second sweep recomputes each block's
    logits, turns them into their gradient (C) and feeds the two gradient products."""
    lib, threads = _clib.library(), _clib.threads()
    wb = wb if wb.numel() else weight
    xb, targets = x.to(torch.bfloat16).contiguous(), targets.long().contiguous()
    valid = targets != -100
    scale = (valid / valid.sum() * grad).float()  # the incoming gradient folds into the per-token scale
    # d(hidden) is accumulated transposed, [C, N] in fp32, as W_b^T @ G_b with each block's W_b^T copied out (in
    # cache, ~0.2 ms): both operands then have the layout the GEMM runs fastest (G_b^T @ W_b ran ~25% slower per
    # block, and transposing the whole bf16 weight at once costs more than all the blocks' copies)
    grad_xt = torch.zeros((x.shape[1], x.shape[0]) if need_x else (0, 0), dtype=torch.float32, device=x.device)
    grad_w = torch.empty(weight.shape if need_w else (0,), dtype=weight.dtype, device=weight.device)
    wide = need_w and weight.dtype != torch.bfloat16
    for start, stop in _token_chunks(x.shape[0]):
        xc, n = xb[start:stop], stop - start
        blocks = _vocab_blocks(n, wb.shape[0])
        rows = blocks[0][1] - blocks[0][0]
        block = torch.empty(rows * n, dtype=torch.bfloat16, device=x.device)
        staging_w = torch.empty(rows, wb.shape[1], dtype=torch.bfloat16, device=x.device) if wide else None
        staging_x = torch.empty(wb.shape[1], n, dtype=torch.bfloat16, device=x.device) if need_x else None
        for v0, v1 in blocks:
            logits = _block_logits(wb, xc, v0, v1, block)
            lib.gq_ce_grad(logits.data_ptr(), v1 - v0, n, v0, targets[start:stop].data_ptr(), lse[start:stop].data_ptr(),
                           scale[start:stop].data_ptr(), picked[start:stop].data_ptr(), threads)
            if need_w:
                rows_w = grad_w[v0:v1]
                if start > 0:  # a later token chunk adds to the rows
                    rows_w += logits @ xc
                elif wide:
                    rows_w.copy_(torch.mm(logits, xc, out=staging_w[: v1 - v0]))
                else:
                    torch.mm(logits, xc, out=rows_w)
            if need_x:
                grad_xt[:, start:stop] += torch.mm(wb[v0:v1].t().contiguous(), logits, out=staging_x)
    if need_w and x.shape[0] == 0:
        grad_w.zero_()
    return (grad_xt.t().contiguous().to(x.dtype) if need_x else x.new_empty((0,))), grad_w


_fused_op = CustomOp("gptqwen::linear_cross_entropy", _fused, device_types=None)  # torch ops: any device
_bf16_op = CustomOp("gptqwen::linear_cross_entropy_bf16", _bf16_forward)
_bf16_backward_op = CustomOp("gptqwen::linear_cross_entropy_bf16_backward", _bf16_backward)


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


@_bf16_op.register_fake
def _(x, weight, targets):
    f32 = dict(dtype=torch.float32)
    wb = weight.new_empty(weight.shape if weight.dtype != torch.bfloat16 else (0,), dtype=torch.bfloat16)
    return x.new_empty((), **f32), x.new_empty(x.shape[0], **f32), x.new_empty(x.shape[0], **f32), wb


@_bf16_backward_op.register_fake
def _(x, weight, wb, targets, lse, picked, grad, need_x, need_w):
    return x.new_empty(x.shape if need_x else (0,)), weight.new_empty(weight.shape if need_w else (0,))


def _bf16_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs, *output[1:])
    ctx.mark_non_differentiable(*output[1:])


def _bf16_grads(ctx, grad: torch.Tensor, *_unused: torch.Tensor):
    x, weight, targets, lse, picked, wb = ctx.saved_tensors
    need_x, need_w = ctx.needs_input_grad[:2]
    grad_x, grad_w = _bf16_backward_op(x, weight, wb, targets, lse, picked, grad, need_x, need_w)
    return grad_x if need_x else None, grad_w if need_w else None, None


_bf16_op.register_autograd(_bf16_grads, setup_context=_bf16_setup)
