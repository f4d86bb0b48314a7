"""Deterministic batches from token shards: a pure function of (seed, sample index).

The training split is cut into non-overlapping windows of `seq_len + 1` tokens (inputs and shifted
targets); every epoch visits all windows in a fresh permutation seeded by (seed, epoch). Sample k of
the run is window perm_{k // n}[k % n], so the data position is one integer — the number of samples
consumed — and a resumed or re-sharded run (any world size, any gradient accumulation) reads exactly
the same global batches. Rank r of W takes rows [r·B/W, (r+1)·B/W) of each global batch of B rows.
With `doc_starts` (recipe `train.doc_windows`) the windows start where documents start (after each EOS) instead:
no window opens in the middle of a document, so a question late in one (a pass key's) always has its start in view.
"""

from __future__ import annotations

import numpy as np
import torch

from gptqwen.data.shards import TokenDataset
from gptqwen.errors import UserError


class WindowSampler:
    def __init__(self, dataset: TokenDataset, seq_len: int, seed: int, doc_starts: bool = False):
        self.dataset, self.seq_len, self.seed = dataset, seq_len, seed
        self.starts = _document_starts(dataset, seq_len) if doc_starts else None
        self.n = (len(dataset) - 1) // seq_len if self.starts is None else len(self.starts)
        if self.n < 1:
            raise UserError(f"the '{dataset.split}' split of '{dataset.directory}' has {len(dataset)} tokens, fewer than "
                            f"one sequence of {seq_len + 1}; add text or lower train.seq_len")  # fmt: skip
        self._perm_epoch, self._perm = -1, None

    def _window_start(self, k: int) -> int:
        epoch, i = divmod(k, self.n)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g).numpy(), epoch
        w = int(self._perm[i])
        return w * self.seq_len if self.starts is None else int(self.starts[w])

    def batch(self, first: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples [first, first + rows) as (inputs, targets), each LongTensor [rows, seq_len]."""
        data = np.stack([self.dataset.read(self._window_start(k), self.seq_len + 1) for k in range(first, first + rows)])
        t = torch.from_numpy(data)
        return t[:, :-1], t[:, 1:]

    def epoch_of(self, k: int) -> float:
        return k / self.n


def _document_starts(dataset: TokenDataset, seq_len: int) -> np.ndarray:
    """Offsets where a document starts (0 and after every EOS) and a whole window of seq_len + 1 tokens fits."""
    if dataset.eos_id is None:
        raise UserError(f"train.doc_windows needs document boundaries, but '{dataset.directory}' has no EOS id; "
                        "rebuild it with gptqwen data prepare or drop train.doc_windows")
    block, ends = 1 << 24, []
    for lo in range(0, len(dataset), block):
        ends.append(lo + np.flatnonzero(dataset.read(lo, min(block, len(dataset) - lo)) == dataset.eos_id) + 1)
    starts = np.concatenate([[0], *ends])
    return starts[starts + seq_len + 1 <= len(dataset)]


def eval_windows(dataset: TokenDataset, seq_len: int, max_tokens: int) -> list[int]:
    """Start offsets of up to max_tokens/seq_len validation windows, spread evenly over the split."""
    available = (len(dataset) - 1) // seq_len
    if available < 1:
        return []
    count = max(1, min(available, max_tokens // seq_len))
    return [int(i * available / count) * seq_len for i in range(count)]


def read_windows(dataset: TokenDataset, starts: list[int], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.from_numpy(np.stack([dataset.read(s, seq_len + 1) for s in starts]))
    return t[:, :-1], t[:, 1:]
