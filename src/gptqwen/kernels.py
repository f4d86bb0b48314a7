"""CPU kernels in C (`csrc/`: float and block-quantised matmuls, a whole decode step, causal attention, and the
RMSNorm / SwiGLU / GELU / QK-norm+RoPE passes, forward and backward), built on first use.

    from gptqwen.kernels import library, rms_norm
    lib = library()          # None when no C compiler works here: callers fall back to PyTorch ops
    y = rms_norm(x, w, 1e-6) # the wrappers below return None in that case (or when a layout does not suit)

The C files are built into one library once per machine with the system compiler (`$CC`, else `cc`/`gcc`) into
`$GPTQWEN_CACHE/kernels` (default `~/.cache/gptqwen/kernels`), named by a hash of the sources, the flags and
the compiler, and written atomically so concurrent first uses do not see half a file. AVX2/FMA/F16C code is
used where the CPU has them (x86-64 since ~2013); elsewhere the portable C loops, which the compiler
vectorises as it can. No Python headers or torch headers are needed, so a build takes about a second.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path

import torch

SOURCE_DIR = Path(__file__).with_name("csrc")
# The C text is read with this module, not at first use: a process whose Python was loaded before the sources
# changed on disk must still build the C its ctypes signatures below were written for.
_SOURCES = {p.name: p.read_bytes() for p in sorted(SOURCE_DIR.iterdir()) if p.suffix in (".c", ".h")}
_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _simd_flags() -> list[str]:
    if platform.machine().lower() in ("x86_64", "amd64") and {"avx2", "fma", "f16c"} <= _cpu_flags():
        return ["-mavx2", "-mfma", "-mf16c"]
    return []


def cache_dir() -> Path:
    return Path(os.environ.get("GPTQWEN_CACHE", Path.home() / ".cache" / "gptqwen")) / "kernels"


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _build(cc: str, flags: list[str], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        for name, text in _SOURCES.items():
            (Path(tmp) / name).write_bytes(text)
        lib = Path(tmp) / out.name
        units = [str(Path(tmp) / name) for name in _SOURCES if name.endswith(".c")]
        base = [cc, "-O3", "-shared", "-fPIC", "-ffp-contract=off", *flags, *units, "-o", str(lib)]
        # OpenMP when the compiler has it (gcc: yes; Apple clang: not without libomp), else one thread
        for extra in (["-fopenmp"], ["-Wno-unknown-pragmas"]):
            proc = subprocess.run(base[:1] + extra + base[1:], capture_output=True, text=True)
            if proc.returncode == 0:
                break
        else:
            raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "compiler failed")
        os.replace(lib, out)  # atomic: a concurrent first use sees the old name absent or the whole file


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (with one warning) when they cannot be built or loaded here
    (`GPTQWEN_NO_KERNELS=1` turns them off)."""
    return None if os.environ.get("GPTQWEN_NO_KERNELS") else load()


def load() -> ctypes.CDLL | None:
    """Build (if needed) and load the kernels; None with a warning on failure. `library()` caches this."""
    cc = _compiler()
    if cc is None:
        warnings.warn("no C compiler found (set CC or install gcc): PyTorch ops stand in for the C kernels, and "
                      "quantised layers dequantise their weights on every call (slower than float32)", stacklevel=2)
        return None
    flags = _simd_flags()
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    except OSError:
        version = ""
    text = b"".join(name.encode() + b"\0" + body for name, body in _SOURCES.items())
    key = hashlib.sha256(text + " ".join([cc, *flags, version]).encode()).hexdigest()[:16]
    path = cache_dir() / f"kernels-{key}.so"
    try:
        if not path.exists():
            _build(cc, flags, path)
        lib = ctypes.CDLL(str(path))
    except (OSError, RuntimeError) as e:
        warnings.warn(f"could not build the C kernels with {cc} ({e}): PyTorch ops stand in for them, and "
                      "quantised layers dequantise their weights on every call (slower than float32)", stacklevel=2)
        return None
    lib.gq_matmul.argtypes = [_INT, _P, _I64, _I64, _P, _P, _P, _I64, _P, _INT, _INT]
    lib.gq_rms_norm.argtypes = [_P, _P, _P, _P, _I64, _I64, ctypes.c_float, _INT]
    lib.gq_rms_norm_backward.argtypes = [_P, _P, _P, _P, _P, _P, _I64, _I64, _INT]
    lib.gq_swiglu.argtypes = [_P, _P, _I64, _I64, _INT]
    lib.gq_swiglu_backward.argtypes = [_P, _P, _P, _I64, _I64, _INT]
    lib.gq_gelu.argtypes = [_P, _P, _P, _I64, _INT]
    lib.gq_attention_forward.argtypes = [_P, _I64, _P, _I64, _P, _I64, _P, _P, _I64, _I64, _I64, _I64, _I64, _INT]
    lib.gq_attention_backward.argtypes = [_P, _I64, _P, _I64, _P, _I64, _P, _P, _P, _P, _P, _P, _I64, _I64, _I64,
                                          _I64, _I64, _INT]
    lib.gq_norm_rope.argtypes = [_P, _I64, _P, _P, _I64, _P, _P, _P, _I64, _I64, _I64, _I64, ctypes.c_float, _INT]
    lib.gq_norm_rope_backward.argtypes = [_P, _I64, _P, _P, _I64, _P, _P, _P, _P, _P, _I64, _I64, _I64, _I64, _INT]
    lib.gq_dequantize.argtypes = [_INT, _P, _P, _P, _I64, _I64, _P, _INT]
    # gq_decode_step(model*, B, tokens, positions, starts, fill, cos, sin, k_cache, v_cache, max_len, logits, threads,
    # simd): gptqwen/infer/native.py builds the model struct
    lib.gq_decode_step.argtypes = [_P, _I64, _P, _P, _P, _I64, _P, _P, _P, _P, _I64, _P, _INT, _INT]
    for f in (lib.gq_matmul, lib.gq_rms_norm, lib.gq_dequantize, lib.gq_decode_step, lib.gq_rms_norm_backward,
              lib.gq_swiglu, lib.gq_swiglu_backward, lib.gq_gelu, lib.gq_norm_rope,
              lib.gq_norm_rope_backward, lib.gq_attention_forward, lib.gq_attention_backward):
        f.restype = None
    return lib


def _threads() -> int:
    return torch.get_num_threads()


def usable(*tensors, contiguous: bool = True) -> bool:
    """Whether the kernels can read these tensors in place: they are built here, torch.compile is not tracing (it
    cannot see into a ctypes call, and fuses torch's ops itself), and each tensor (None skipped) is float32 on
    the CPU — and contiguous, unless `contiguous=False` (the caller then checks the layout it needs)."""
    if torch.compiler.is_compiling() or library() is None:
        return False
    return all(t is None or (t.dtype == torch.float32 and t.device.type == "cpu"
                             and (t.is_contiguous() or not contiguous)) for t in tensors)


def rms_norm(x, weight, eps: float, with_rstd: bool = False):
    """RMSNorm of a contiguous float32 CPU tensor over its last dim with a 1-D float32 weight: y, or (y, rstd)
    with rstd shaped [..., 1]; None when the kernels are not available (the caller then uses torch's)."""
    lib = library()
    if lib is None:
        return None
    y = torch.empty_like(x)
    rstd = torch.empty(*x.shape[:-1], 1) if with_rstd else None
    lib.gq_rms_norm(x.data_ptr(), weight.data_ptr(), y.data_ptr(), rstd.data_ptr() if with_rstd else None,
                    x.numel() // x.shape[-1], x.shape[-1], eps, _threads())
    return (y, rstd) if with_rstd else y


def rms_norm_backward(x, weight, rstd, grad, need_weight_grad: bool):
    """(dx, dw or None) of `rms_norm(x, weight)` from the forward's rstd (all contiguous float32 CPU, weight 1-D);
    None when the kernels are not available."""
    lib = library()
    if lib is None:
        return None
    D = x.shape[-1]
    dx = torch.empty_like(x)
    dw = torch.empty(D) if need_weight_grad else None
    lib.gq_rms_norm_backward(x.data_ptr(), weight.data_ptr(), rstd.data_ptr(), grad.data_ptr(), dx.data_ptr(),
                             dw.data_ptr() if dw is not None else None, x.numel() // D, D, _threads())
    return dx, dw


def swiglu(h):
    """silu(gate) * up of a contiguous float32 CPU h [..., 2I] = [gate | up]; None without the kernels."""
    lib = library()
    if lib is None:
        return None
    I = h.shape[-1] // 2
    out = torch.empty(*h.shape[:-1], I)
    lib.gq_swiglu(h.data_ptr(), out.data_ptr(), h.numel() // (2 * I), I, _threads())
    return out


def swiglu_backward(h, grad):
    """The gradient w.r.t. h of `swiglu(h)` given `grad` (both contiguous float32 CPU)."""
    grad_h = torch.empty_like(h)
    I = h.shape[-1] // 2
    library().gq_swiglu_backward(h.data_ptr(), grad.data_ptr(), grad_h.data_ptr(), h.numel() // (2 * I), I,
                                 _threads())
    return grad_h


def gelu(x):
    """GELU (tanh approximation) of a contiguous float32 CPU tensor; None without the kernels."""
    lib = library()
    if lib is None:
        return None
    y = torch.empty_like(x)
    lib.gq_gelu(x.data_ptr(), None, y.data_ptr(), x.numel(), _threads())
    return y


def gelu_backward(x, grad):
    """The gradient w.r.t. x of `gelu(x)` given `grad` (both contiguous float32 CPU)."""
    dx = torch.empty_like(x)
    library().gq_gelu(x.data_ptr(), grad.data_ptr(), dx.data_ptr(), x.numel(), _threads())
    return dx


def _rope_layout(x, cos):
    """(row stride of x, batch stride of the tables) when the C RoPE kernels can read x [B, T, H, D] and the
    tables [B|1, T, 1, D] in place, else None."""
    B, T, H, D = x.shape
    if x.stride(3) != 1 or x.stride(2) != D or x.stride(0) != T * x.stride(1) or D % 2:
        return None
    if not cos.is_contiguous() or cos.shape[-3:] != (T, 1, D):
        return None
    return x.stride(1), (T * D if cos.shape[0] == B and B > 1 else 0)


def norm_rope(x, cos, sin, weight, eps: float):
    """(y, rstd) = RoPE(RMSNorm_per_head(x) * weight) for float32 CPU x [B, T, H, D] (a strided view is fine),
    tables [B|1, T, 1, D] and weight [H, D] or None (no norm); None when the kernels cannot take it."""
    lib = library()
    layout = _rope_layout(x, cos) if lib is not None else None
    B, T, H, D = x.shape
    if layout is None or (weight is not None and weight.shape != (H, D)):
        return None
    y = torch.empty(B, T, H, D)
    rstd = torch.empty(B, T, H) if weight is not None else None
    lib.gq_norm_rope(x.data_ptr(), layout[0], cos.data_ptr(), sin.data_ptr(), layout[1],
                     weight.data_ptr() if weight is not None else None, y.data_ptr(),
                     rstd.data_ptr() if rstd is not None else None, B, T, H, D, eps, _threads())
    return y, rstd


def norm_rope_backward(x, cos, sin, weight, rstd, grad, need_weight_grad: bool):
    """(dx [B, T, H, D] contiguous, dweight [H, D] or None) of `norm_rope`; grad contiguous [B, T, H, D]."""
    B, T, H, D = x.shape
    xs, cbs = _rope_layout(x, cos)
    gx = torch.empty(B, T, H, D)
    gw = torch.empty(H, D) if weight is not None and need_weight_grad else None
    library().gq_norm_rope_backward(x.data_ptr(), xs, cos.data_ptr(), sin.data_ptr(), cbs,
                                    weight.data_ptr() if weight is not None else None,
                                    rstd.data_ptr() if rstd is not None else None, grad.data_ptr(), gx.data_ptr(),
                                    gw.data_ptr() if gw is not None else None, B, T, H, D, _threads())
    return gx, gw


ATTENTION_MAX_LEN = 1024  # the C attention keeps a head's T x T scores (4 MB at 1024); longer goes to SDPA


def heads_row_stride(t, B: int, T: int) -> int | None:
    """Row stride of t [B, T, H, d] when its heads are contiguous within uniformly strided rows, else None."""
    H, d = t.shape[2], t.shape[3]
    ok = t.shape[:2] == (B, T) and t.stride(3) == 1 and t.stride(2) == d and t.stride(0) == T * t.stride(1)
    return t.stride(1) if ok and t.dtype == torch.float32 and t.device.type == "cpu" else None


def causal_attention(q, k, v):
    """(o [B, T, hq, d] contiguous, lse [B, hq, T]) of causal softmax attention, scale 1/sqrt(d), for float32
    CPU q [B, T, hq, d] and k, v [B, T, hk, d] (views inside the fused QKV output are fine); None when the
    kernels are not available or the layout or length does not suit them."""
    lib = library()
    B, T, hq, d = q.shape
    hk = k.shape[2]
    strides = [heads_row_stride(t, B, T) for t in (q, k, v)]
    if lib is None or None in strides or T > ATTENTION_MAX_LEN or hq % hk or v.shape[2] != hk or k.shape[3] != d:
        return None
    o = torch.empty(B, T, hq, d)
    lse = torch.empty(B, hq, T)
    lib.gq_attention_forward(q.data_ptr(), strides[0], k.data_ptr(), strides[1], v.data_ptr(), strides[2],
                             o.data_ptr(), lse.data_ptr(), B, T, hq, hk, d, _threads())
    return o, lse


def causal_attention_backward(q, k, v, o, lse, grad):
    """(dq, dk, dv), contiguous and shaped like q, k, v, of `causal_attention` given grad [B, T, hq, d]."""
    B, T, hq, d = q.shape
    hk = k.shape[2]
    dq, dk, dv = torch.empty(B, T, hq, d), torch.empty(B, T, hk, d), torch.empty(B, T, hk, d)
    library().gq_attention_backward(q.data_ptr(), q.stride(1), k.data_ptr(), k.stride(1), v.data_ptr(), v.stride(1),
                                    o.data_ptr(), lse.data_ptr(), grad.data_ptr(), dq.data_ptr(), dk.data_ptr(),
                                    dv.data_ptr(), B, T, hq, hk, d, _threads())
    return dq, dk, dv
