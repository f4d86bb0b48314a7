"""Training metrics: JSONL log, optional TensorBoard, the loss-curve PNG, and MFU against a matmul peak.

`metrics.jsonl` holds one JSON object per line: training records {"step", "loss", "lr", "grad_norm",
"tokens_per_s", "mfu", ...} and evaluation records {"step", "val_loss", "val_ppl", "val_bpb"}.
MoE runs add each MoE layer i's expert load over the step's global batch: "expert_entropy/i" (the entropy of
the experts' shares of the top-k choices over ln E: 1 = perfectly balanced) and "expert_max_mean/i" (the
busiest expert's load over the mean load: 1 = balanced); expert_load.png plots both.
With TensorBoard installed (`pip install 'gptqwen[tb]'`) and `train.tensorboard=true` (the default),
the same scalars also go to `<run>/tb/`: `tensorboard --logdir runs`. On resume both logs are cut back
to the checkpoint's step, so they read like one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from gptqwen.utils import atomic_write, save_figure


class MetricsLog:
    """Appends records to metrics.jsonl (and to TensorBoard event files in tb/ when installed and wanted).

    `start_step` is the step a run resumes from: records past it (written after that checkpoint, by the
    run that was cut short) are dropped from both logs, so they read like one uninterrupted run."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, start_step: int = 0):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional (extra `tb`); the JSONL log has everything
                SummaryWriter = None
            if SummaryWriter is not None:
                self.tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=start_step + 1 if start_step else None)
        self.truncate_after(start_step)

    def truncate_after(self, step: int) -> None:
        """Drop JSONL records past `step`."""
        records = self.read(self.path)
        with atomic_write(self.path) as f:
            for r in records:
                if r.get("step", 0) <= step:
                    f.write(json.dumps(r) + "\n")

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        if not Path(path).exists():
            return []
        out = []
        for line in Path(path).read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
        return out


def _pyplot() -> Any:
    """matplotlib.pyplot drawing off-screen, or None when matplotlib is not installed (extra `plot`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_losses(metrics_path: Path, png_path: Path, title: str = "") -> bool:
    """Draw train (and validation) loss against step; False when matplotlib is not installed."""
    plt = _pyplot()
    if plt is None:
        return False
    records = MetricsLog.read(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", lw=1.5, ms=4)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, png_path)
    plt.close(fig)
    return True


# Dense (no sparsity) tensor-core peaks per GPU from NVIDIA's datasheets: (name part, bf16, tf32, fp32) FLOP/s.
# More specific names come first ("H100 PCIe" before "H100").
NOMINAL_PEAKS = [
    ("H100 PCIe", 756e12, 378e12, 51.2e12), ("H100 NVL", 835e12, 417.5e12, 60e12), ("H200 NVL", 835e12, 417.5e12, 60e12),
    ("H100", 989.4e12, 494.7e12, 66.9e12), ("H200", 989.4e12, 494.7e12, 66.9e12), ("A100", 312e12, 156e12, 19.5e12),
]  # fmt: skip


def nominal_peak(device_name: str, dtype: torch.dtype) -> float | None:
    """The datasheet peak of a known GPU for training in `dtype` (fp32 counts TF32 when torch allows it)."""
    for part, bf16, tf32, fp32 in NOMINAL_PEAKS:
        if part in device_name:
            if dtype in (torch.bfloat16, torch.float16):
                return bf16
            return tf32 if torch.get_float32_matmul_precision() != "highest" else fp32
    return None


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """The MFU denominator: a known GPU's datasheet peak; elsewhere the best matmul rate ever measured here.

    A rate measured while other processes share the machine is too low (MFU would read above 100%), so the
    best measurement per CPU, thread count and dtype is kept in $GPTQWEN_CACHE/matmul_peak.json and a busy
    moment never lowers it."""
    if device.type == "cuda":
        known = nominal_peak(torch.cuda.get_device_name(device), dtype)
        if known:
            return known
    path = Path(os.environ.get("GPTQWEN_CACHE", Path.home() / ".cache" / "gptqwen")) / "matmul_peak.json"
    key = f"{_processor(device)} threads={torch.get_num_threads()} {dtype}"
    try:
        best = json.loads(path.read_text())
    except (OSError, ValueError):  # no cache yet, or an unreadable one: start afresh
        best = {}
    measured = measure_matmul_peak(device, dtype)
    if measured > best.get(key, 0):
        best[key] = measured
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path) as f:
                json.dump(best, f, indent=1)
        except OSError:  # a read-only home: the measurement still counts for this run
            pass
    return max(measured, best.get(key, 0))


def _processor(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.machine())


def mfu_text(mfu: float) -> str:
    """MFU for the log line; above 100% the peak was underestimated, and no impossible number is shown."""
    return f"MFU {100 * mfu:.1f}%" if mfu <= 1 else "MFU n/a (peak underestimated)"


def measure_matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, seconds: float = 0.5) -> float:
    """Achievable dense matmul FLOP/s on `device` now (`peak_flops` keeps the best of these per machine).

    Takes the best of many short bursts rather than one long average, so that a moment of contention
    from other processes does not lower the peak (which would push MFU above 100%).
    """
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        a @ b
    sync()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(2):
            a @ b
        sync()
        best = max(best, 2 * 2 * n**3 / (time.perf_counter() - start))
    return best


def bits_per_byte(loss_nats: float, bytes_per_token: float | None) -> float | None:
    """Tokenizer-independent loss: nats/token -> bits per UTF-8 byte of the source text."""
    if not bytes_per_token:
        return None
    return loss_nats / math.log(2) / bytes_per_token


def expert_load_metrics(counts: torch.Tensor | None) -> dict[str, float]:
    """Per MoE layer, from its top-k choices per expert [L, E]: the load's entropy over ln E and max over mean."""
    if counts is None:
        return {}
    counts = counts.detach().double().cpu()
    share = counts / counts.sum(-1, keepdim=True).clamp_min(1e-12)
    entropy = -(share * share.clamp_min(1e-300).log()).sum(-1) / math.log(counts.shape[-1])
    max_mean = counts.max(-1).values / counts.mean(-1).clamp_min(1e-12)
    out = {}
    for i, (h, m) in enumerate(zip(entropy.tolist(), max_mean.tolist())):
        out[f"expert_entropy/{i}"], out[f"expert_max_mean/{i}"] = round(h, 5), round(m, 4)
    return out


def plot_expert_load(metrics_path: Path, png_path: Path, title: str = "") -> bool:
    """Draw each MoE layer's load entropy and max/mean load against step; False without matplotlib or MoE records."""
    plt = _pyplot()
    records = [r for r in MetricsLog.read(metrics_path) if "expert_entropy/0" in r]
    if plt is None or not records:
        return False
    layers = sum(k.startswith("expert_entropy/") for k in records[-1])
    steps = [r["step"] for r in records]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for ax, key, label in ((axes[0], "expert_entropy", "load entropy / ln E  (1 = balanced)"),
                           (axes[1], "expert_max_mean", "busiest expert's load / mean  (1 = balanced)")):  # fmt: skip
        for i in range(layers):
            ax.plot(steps, [r.get(f"{key}/{i}", math.nan) for r in records], lw=1.0, label=f"MoE layer {i}")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, png_path)
    plt.close(fig)
    return True
