"""How ops/ registers its C passes: `CustomOp`, a torch custom op (`torch.ops.gptqwen.<name>`, with a fake and,
for a forward pass, an autograd registration) that eager code calls without the custom-op layers.

    _norm = CustomOp("gptqwen::rms_norm", impl)          # impl: the Python function that calls the C pass
    _norm.register_fake(fake)
    _norm.register_autograd(backward, setup_context=setup)
    y, rstd = _norm(x, w, eps)

torch.compile sees the registered op (so it keeps the pass in its graph, as an opaque node). In eager mode the
call runs `impl` directly, through one `torch.autograd.Function` with the same `setup_context` and `backward`
when a gradient may be needed: the custom-op dispatch (schema defaults, the dispatcher's Python kernels, its
generic autograd wrapper) costs ~100 us per forward + backward, a few percent of a small model's CPU step.
Both routes run the same functions, and tests/test_ops.py checks the registered op with `opcheck`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

_PLAIN = (torch.Tensor, torch.nn.Parameter)


class CustomOp:
    def __init__(self, name: str, impl: Callable[..., Any], device_types: str | None = "cpu") -> None:
        self.impl = impl
        self.op = torch.library.custom_op(name, impl, mutates_args=(), device_types=device_types)
        self._function: type[torch.autograd.Function] | None = None

    def register_fake(self, fake: Callable[..., Any]) -> Callable[..., Any]:
        self.op.register_fake(fake)
        return fake

    def register_autograd(self, backward: Callable[..., Any], setup_context: Callable[..., None]) -> None:
        self.op.register_autograd(backward, setup_context=setup_context)
        impl = self.impl

        class Function(torch.autograd.Function):
            @staticmethod
            def forward(ctx, *args):
                out = impl(*args)
                setup_context(ctx, args, out)
                return out

            @staticmethod
            def backward(ctx, *grads):
                return backward(ctx, *grads)

        self._function = Function

    def __call__(self, *args: Any) -> Any:
        # traced (dynamo; or AOT autograd tracing a backward, where tensors are fake or functional subclasses):
        # the registered op, which the tracer records without calling into C
        if torch.compiler.is_compiling() or not all(type(a) in _PLAIN for a in args if isinstance(a, torch.Tensor)):
            return self.op(*args)
        if self._function is not None and torch.is_grad_enabled():
            return self._function.apply(*args)
        return self.impl(*args)
