"""The one module that talks to `csrc/`: builds the C kernels on first use, loads them, and holds every ctypes
declaration, the struct mirrors of the decode step and the weight-format codes.

    from gptqwen.ops import _clib
    lib = _clib.library()          # None when no C compiler works here: ops/ then runs the PyTorch references
    _clib.check(lib.gq_rms_norm_backward(...), "rms_norm_backward")   # entry points that allocate return a code

The C files are built into one library once per machine with the system compiler (`$CC`, else `cc`/`gcc`) into
`$GPTQWEN_CACHE/kernels` (default `~/.cache/gptqwen/kernels`), named by a hash of the sources, the flags and
the compiler, and written atomically so concurrent first uses do not see half a file. AVX2/FMA/F16C code is
used where the CPU has them (x86-64 since ~2013); elsewhere the portable C loops, which the compiler
vectorises as it can. No Python headers or torch headers are needed, so a build takes about a second.
`GPTQWEN_NO_KERNELS=1` turns the library off. A library whose structs differ in size from the mirrors below
(a stale build, another ABI) is refused with a warning, as is one that fails to build.
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

SOURCE_DIR = Path(__file__).resolve().parent.parent / "csrc"
# The C text is read with this module, not at first use: a process whose Python was loaded before the sources
# changed on disk must still build the C its ctypes signatures below were written for.
_SOURCES = {p.name: p.read_bytes() for p in sorted(SOURCE_DIR.iterdir()) if p.suffix in (".c", ".h")}
_P, _I64, _INT, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float

FORMAT_CODES = {"f32": 0, "q8_0": 1, "q4_1": 2}  # gq_matmul's fmt (csrc/common.h)
_OK, _ENOMEM = 0, 1  # csrc/common.h return codes

# (argument types, returns a code) of each entry point; those returning a code are the ones that allocate
_SIGNATURES: dict[str, tuple[list, bool]] = {
    "gq_matmul": ([_INT, _P, _I64, _I64, _P, _P, _P, _I64, _P, _INT, _INT], True),
    "gq_dequantize": ([_INT, _P, _P, _P, _I64, _I64, _P, _INT], False),
    "gq_rms_norm": ([_P, _P, _P, _P, _I64, _I64, _F, _INT], False),
    "gq_rms_norm_backward": ([_P, _P, _P, _P, _P, _P, _I64, _I64, _INT], True),
    "gq_swiglu": ([_P, _P, _I64, _I64, _INT], False),
    "gq_swiglu_backward": ([_P, _P, _P, _I64, _I64, _INT], False),
    "gq_gelu": ([_P, _P, _P, _I64, _INT], False),
    "gq_norm_rope": ([_P, _I64, _P, _P, _I64, _P, _P, _P, _I64, _I64, _I64, _I64, _F, _INT], False),
    "gq_norm_rope_backward": ([_P, _I64, _P, _P, _I64, _P, _P, _P, _P, _P, _I64, _I64, _I64, _I64, _INT], True),
    "gq_attention_forward": ([_P, _I64, _P, _I64, _P, _I64, _P, _P, _I64, _I64, _I64, _I64, _I64, _INT], True),
    "gq_attention_backward": ([_P, _I64, _P, _I64, _P, _I64, _P, _P, _P, _P, _P, _P, _I64, _I64, _I64, _I64, _I64,
                               _INT], True),
    "gq_ce_stats": ([_P, _I64, _I64, _I64, _P, _P, _P, _P, _INT], True),
    "gq_ce_grad": ([_P, _I64, _I64, _I64, _P, _P, _P, _P, _INT], False),
    # (model*, B, tokens, positions, starts, fill, cos, sin, k_cache, v_cache, max_len, logits, threads, simd)
    "gq_decode_step": ([_P, _I64, _P, _P, _P, _I64, _P, _P, _P, _P, _I64, _P, _INT, _INT], True),
}


class Linear(ctypes.Structure):
    """gq_linear (csrc/decode.c): one weight matrix of the decode step, float32 or block-quantised."""

    _fields_ = [("fmt", _I64), ("N", _I64), ("K", _I64), ("w", _P), ("d", _P), ("m", _P), ("bias", _P)]


class Layer(ctypes.Structure):
    """gq_layer (csrc/decode.c)."""

    _fields_ = [("qkv", Linear), ("proj", Linear), ("up", Linear), ("down", Linear),
                ("ln1", _P), ("ln2", _P), ("ln1_b", _P), ("ln2_b", _P), ("q_norm", _P), ("k_norm", _P)]


class Model(ctypes.Structure):
    """gq_model (csrc/decode.c)."""

    _fields_ = [("n_layer", _I64), ("dim", _I64), ("n_head", _I64), ("n_kv_head", _I64), ("head_dim", _I64),
                ("inter", _I64), ("vocab", _I64), ("gelu", _I64), ("eps", _F), ("qk_eps", _F), ("embed", _P),
                ("wpe", _P), ("ln_f", _P), ("ln_f_b", _P), ("head", Linear), ("layers", ctypes.POINTER(Layer))]


_STRUCTS = {"gq_sizeof_linear": Linear, "gq_sizeof_layer": Layer, "gq_sizeof_model": Model}


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


_FALLBACK = ("PyTorch ops stand in for them, and quantised layers dequantise their weights on every call "
             "(slower than float32)")


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (with one warning) when they cannot be built or loaded here
    (`GPTQWEN_NO_KERNELS=1` turns them off)."""
    return None if os.environ.get("GPTQWEN_NO_KERNELS") else load()


@torch.compiler.assume_constant_result
def available() -> bool:
    """Whether the C kernels are loaded; a constant to torch.compile (decided once, at trace time)."""
    return library() is not None


def load() -> ctypes.CDLL | None:
    """Build (if needed) and load the kernels; None with a warning on failure. `library()` caches this."""
    cc = _compiler()
    if cc is None:
        warnings.warn(f"no C compiler found (set CC or install gcc): {_FALLBACK}", stacklevel=2)
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
        warnings.warn(f"could not build the C kernels with {cc} ({e}): {_FALLBACK}", stacklevel=2)
        return None
    return _declare(lib, path)


def _declare(lib: ctypes.CDLL, path: Path) -> ctypes.CDLL | None:
    """Set every entry point's signature and check the struct sizes; None (with a warning) on a mismatch."""
    for name, struct in _STRUCTS.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = [], ctypes.c_size_t
        if fn() != ctypes.sizeof(struct):
            warnings.warn(f"the C kernels in {path} disagree with gptqwen/ops/_clib.py on the size of {name[10:]} "
                          f"({fn()} vs {ctypes.sizeof(struct)} bytes): delete that file to rebuild; {_FALLBACK}",
                          stacklevel=3)
            return None
    for name, (argtypes, returns_code) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, (_INT if returns_code else None)
    return lib


def check(code: int, what: str) -> None:
    """Raise a clear RuntimeError when a C entry point reports a failure."""
    if code == _ENOMEM:
        raise RuntimeError(f"the C kernel {what} could not allocate its work memory (out of memory)")
    if code != _OK:
        raise RuntimeError(f"the C kernel {what} failed (code {code})")


@torch.compiler.assume_constant_result  # read once when torch.compile traces a dispatch decision
def threads() -> int:
    """Threads the C passes use: torch's intra-op setting, so `torch.set_num_threads` governs both."""
    return torch.get_num_threads()


def ptr(t: torch.Tensor | None) -> int | None:
    """The address C reads a tensor at (None for an absent tensor)."""
    return None if t is None else t.data_ptr()


def usable(*tensors: torch.Tensor | None, contiguous: bool = True) -> bool:
    """Whether a C pass may read these tensors: the library is built here and each tensor (None skipped) is
    float32 on the CPU — and contiguous, unless `contiguous=False` (the op then checks the layout it needs)."""
    if not available():
        return False
    return all(t is None or (t.dtype == torch.float32 and t.device.type == "cpu"
                             and (t.is_contiguous() or not contiguous)) for t in tensors)
