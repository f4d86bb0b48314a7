"""The sampler's filters and draw: kept sets against a full-sort reference, the distribution of draws, rows
independent of their batch, greedy rows.  Run: OMP_NUM_THREADS=1 python -m pytest -q tests/test_sampling.py"""

from __future__ import annotations

import itertools

import pytest
import torch

from gptqwen.infer.sampling import Sampler, SamplingParams

CPU = torch.device("cpu")


def reference_keep(x: torch.Tensor, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    """Tokens kept by top-k, then top-p, then min-p, on tempered logits `x` [V], by brute force in float64.

    top-k keeps every token whose logit reaches the k-th largest; top-p keeps a token when the mass of the
    top-k-kept tokens with strictly larger logits is below top_p; min-p keeps p >= min_p * p_max."""
    x = x.double()
    keep = torch.ones_like(x, dtype=torch.bool)
    if 0 < top_k < x.numel():
        keep &= x >= x.sort(descending=True).values[top_k - 1]
    if top_p < 1:
        p = x.masked_fill(~keep, -torch.inf).softmax(-1)
        order = x.argsort(descending=True)
        before = torch.cat([p.new_zeros(1), p[order].cumsum(0)])
        larger = torch.searchsorted(-x[order], -x, side="left")  # how many logits are strictly larger
        keep &= before[larger] < top_p
    if min_p > 0:
        p = x.masked_fill(~keep, -torch.inf).softmax(-1)
        keep &= p >= min_p * p.max()
    return keep


def kept(s: Sampler, x: torch.Tensor) -> torch.Tensor:
    top = x.amax(-1, keepdim=True)
    return x >= s.cutoff(x, top, (x - top).exp())


def rows(n: int, V: int, seed: int) -> torch.Tensor:
    """Random logits of several shapes: peaked, flat, and with many ties."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        kind = i % 4
        r = torch.randn(V, generator=g)
        if kind == 0:
            r = r * 6  # peaked
        elif kind == 1:
            r = r * 0.05  # nearly flat
        elif kind == 2:
            r = (r * 3 * 2).round() / 2  # ties everywhere
        else:
            r[torch.randperm(V, generator=g)[:8]] += 10  # a few dominant tokens
        out.append(r)
    return torch.stack(out)


@pytest.mark.parametrize("V", [300, 3000])
def test_kept_set_equals_full_sort_reference(V):
    x = rows(8, V, seed=V)
    combos = list(itertools.product([0, 1, 50, 299], [1.0, 0.5, 0.95], [0.0, 0.1]))
    for top_k, top_p, min_p in combos:
        s = Sampler([SamplingParams(temperature=1.0, top_k=top_k, top_p=top_p, min_p=min_p)] * len(x), V, CPU)
        got = kept(s, x)
        for i in range(len(x)):
            want = reference_keep(x[i], top_k, top_p, min_p)
            assert torch.equal(got[i], want), (V, top_k, top_p, min_p, i, int(got[i].sum()), int(want.sum()))


def test_kept_set_with_mixed_rows_in_one_batch():
    """Rows with different settings share the candidate set; each must still get its own exact threshold."""
    V = 2000
    x = rows(12, V, seed=5)
    settings = [(0, 1.0, 0.0), (3, 1.0, 0.0), (0, 0.95, 0.0), (0, 1.0, 0.1), (700, 0.99, 0.0), (0, 0.999, 0.0)] * 2
    s = Sampler([SamplingParams(temperature=1.0, top_k=k, top_p=p, min_p=m) for k, p, m in settings], V, CPU)
    got = kept(s, x)
    for i, (k, p, m) in enumerate(settings):
        assert torch.equal(got[i], reference_keep(x[i], k, p, m)), (i, k, p, m)


@pytest.mark.parametrize("kw", [dict(), dict(top_k=6), dict(top_p=0.8), dict(min_p=0.1), dict(top_k=10, top_p=0.9)])
def test_draws_follow_the_filtered_distribution(kw):
    V, N = 40, 20000
    x = torch.randn(V, generator=torch.Generator().manual_seed(1)) * 2
    T = 0.8
    s = Sampler([SamplingParams(temperature=T, seed=i, **kw) for i in range(N)], V, CPU)
    tokens = s(x.expand(N, V)).tokens
    keep = reference_keep(x / T, kw.get("top_k", 0), kw.get("top_p", 1.0), kw.get("min_p", 0.0))
    want = (x.double() / T).masked_fill(~keep, -torch.inf).softmax(-1)
    got = torch.bincount(tokens, minlength=V).double() / N
    assert bool((got[~keep] == 0).all()), "a filtered-out token was drawn"
    # total variation: its expectation here is ~0.01; 0.03 is far outside the sampling spread
    assert 0.5 * (got - want).abs().sum() < 0.03


def test_a_rows_tokens_do_not_depend_on_its_batch():
    V = 5000
    g = torch.Generator().manual_seed(2)
    mine = SamplingParams(temperature=0.9, top_p=0.9, min_p=0.01, seed=11)
    others = [SamplingParams(temperature=1.0), SamplingParams(temperature=0), SamplingParams(top_k=3000, seed=1),
              SamplingParams(temperature=2.0, top_p=0.999, seed=2)]
    alone, crowded = Sampler([mine], V, CPU), Sampler(others[:2] + [mine] + others[2:], V, CPU)
    for _ in range(10):
        x = torch.randn(5, V, generator=g) * 2
        x[1:] *= 0.01  # flat neighbours make the candidate set widen to the whole vocabulary
        a = alone(x[2:3]).tokens[0]
        b = crowded(x).tokens[2]
        assert a == b


def test_greedy_rows_take_the_argmax_beside_sampled_rows():
    V = 1000
    x = torch.randn(6, V, generator=torch.Generator().manual_seed(3))
    ps = [SamplingParams(temperature=0), SamplingParams(temperature=1.0, seed=1), SamplingParams(temperature=0,
          top_k=5, top_p=0.5)] * 2
    got = Sampler(ps, V, CPU)(x).tokens
    for i in (0, 2, 3, 5):
        assert got[i] == x[i].argmax()
    assert torch.equal(Sampler([SamplingParams(temperature=0)] * 6, V, CPU)(x).tokens, x.argmax(-1))
