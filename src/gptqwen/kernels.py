"""CPU kernels in C (`kernels.c`: block-quantised matmuls and dequantisation, RMSNorm, a whole decode step),
built on first use.

    from gptqwen.kernels import library, rms_norm
    lib = library()          # None when no C compiler works here: callers fall back to PyTorch ops

The C file is built once per machine with the system compiler (`$CC`, else `cc`/`gcc`) into
`$GPTQWEN_CACHE/kernels` (default `~/.cache/gptqwen/kernels`), named by a hash of the source, the flags and
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

SOURCE = Path(__file__).with_name("kernels.c")
# The C text is read with this module, not at first use: a process whose Python was loaded before kernels.c
# changed on disk must still build the C its ctypes signatures below were written for.
_SOURCE_TEXT = SOURCE.read_bytes()
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
        src, lib = Path(tmp) / "kernels.c", Path(tmp) / out.name
        src.write_bytes(_SOURCE_TEXT)
        base = [cc, "-O3", "-shared", "-fPIC", "-ffp-contract=off", *flags, str(src), "-o", str(lib)]
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
    key = hashlib.sha256(_SOURCE_TEXT + " ".join([cc, *flags, version]).encode()).hexdigest()[:16]
    path = cache_dir() / f"kernels-{key}.so"
    try:
        if not path.exists():
            _build(cc, flags, path)
        lib = ctypes.CDLL(str(path))
    except (OSError, RuntimeError) as e:
        warnings.warn(f"could not build the C kernels with {cc} ({e}): PyTorch ops stand in for them, and "
                      "quantised layers dequantise their weights on every call (slower than float32)", stacklevel=2)
        return None
    lib.gq_q8_0_matmul.argtypes = [_P, _I64, _I64, _P, _P, _I64, _P, _INT, _INT]
    lib.gq_q4_1_matmul.argtypes = [_P, _I64, _I64, _P, _P, _P, _I64, _P, _INT, _INT]
    lib.gq_rms_norm.argtypes = [_P, _P, _P, _P, _I64, _I64, ctypes.c_float]
    lib.gq_dequantize.argtypes = [_INT, _P, _P, _P, _I64, _I64, _P, _INT]
    # gq_decode_step(model*, B, tokens, positions, starts, fill, cos, sin, k_cache, v_cache, max_len, logits, threads,
    # simd): gptqwen/infer/native.py builds the model struct
    lib.gq_decode_step.argtypes = [_P, _I64, _P, _P, _P, _I64, _P, _P, _P, _P, _I64, _P, _INT, _INT]
    for f in (lib.gq_q8_0_matmul, lib.gq_q4_1_matmul, lib.gq_rms_norm, lib.gq_dequantize, lib.gq_decode_step):
        f.restype = None
    return lib


def rms_norm(x, weight, eps: float, with_rstd: bool = False):
    """RMSNorm of a contiguous float32 CPU tensor over its last dim with a 1-D float32 weight: y, or (y, rstd)
    with rstd shaped [..., 1]; None when the kernels are not available (the caller then uses torch's)."""
    import torch

    lib = library()
    if lib is None:
        return None
    y = torch.empty_like(x)
    rstd = torch.empty(*x.shape[:-1], 1) if with_rstd else None
    lib.gq_rms_norm(x.data_ptr(), weight.data_ptr(), y.data_ptr(), rstd.data_ptr() if with_rstd else None,
                    x.numel() // x.shape[-1], x.shape[-1], eps)
    return (y, rstd) if with_rstd else y
