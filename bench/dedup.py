"""MinHash-LSH near-dedup: gptqwen (both signature engines) vs rensa and datasketch, same corpus, same run.

Every side gets the same generated corpus (200-word documents with planted near-duplicate pairs), the same
text normalisation, word 5-gram shingles, and 14 bands x 8 rows = 112 permutations; each reports
documents/s for signatures + LSH insert and query (candidate pairs), recall (planted pairs at Jaccard
>= 0.85 found) and false-positive rate (planted pairs below 0.5 found). The sides run interleaved,
`--repeat` rounds, so a busy moment on a shared machine hits all of them; the best round counts.

    python bench/dedup.py [--pairs 600] [--singletons 1200] [--repeat 5]

Sides: gptqwen with its numpy engine, and with the rensa engine (our shingle hashes -> rensa's
R-MinHash signatures -> our band keys and pairs; the default when rensa is installed); rensa on its
own (RMinHash + RMinHashLSH insert and query, fed the same shingle strings); datasketch with our
permutations ("legacy" scheme) and with its default. The ratio column is gptqwen's default engine's
documents/s divided by that row's. Rust code runs on one thread (RAYON_NUM_THREADS=1), like numpy.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # before rensa is imported: one thread on every side

import numpy as np  # noqa: E402

from gptqwen.data.dedup import MinHasher, candidate_pairs, normalize_text  # noqa: E402
from gptqwen.data.synthetic import planted_pairs  # noqa: E402


def ours(texts: list[str], hasher: MinHasher) -> set[tuple[int, int]]:
    keys, valid = hasher.band_keys(texts)
    return {tuple(p) for p in candidate_pairs(keys, valid).tolist()}


def shingles(text: str, n: int) -> list[str]:
    words = normalize_text(text).split()
    return [" ".join(words[j : j + n]) for j in range(max(1, len(words) - n + 1))]


def rensa_pairs(texts: list[str], hasher: MinHasher) -> set[tuple[int, int]]:
    """rensa's own pipeline: R-MinHash objects from the shingle strings, LSH insert, then a query per document."""
    import rensa

    sketches = rensa.RMinHash.from_token_sets([shingles(t, hasher.ngram) for t in texts], hasher.num_perm, hasher.seed)
    lsh = rensa.RMinHashLSH(hasher.threshold, hasher.num_perm, hasher.bands)
    lsh.insert_many(sketches)
    return {(j, i) for i, found in enumerate(lsh.query_all(sketches)) for j in found if j < i}


def datasketch_pairs(texts: list[str], hasher: MinHasher, scheme: str) -> set[tuple[int, int]]:
    """scheme "legacy": datasketch's `(a*h + b) mod (2^61-1)` with our (a, b), the same
    permutation family as ours; "affine32": its default since 2.0 (own 32-bit permutations)."""
    from datasketch import MinHash, MinHashLSH

    perms = {"permutations": hasher.permutations()} if scheme == "legacy" else {}
    lsh = MinHashLSH(num_perm=hasher.num_perm, params=(hasher.bands, hasher.rows))
    found = set()
    for i, text in enumerate(texts):
        m = MinHash(num_perm=hasher.num_perm, scheme=scheme, seed=hasher.seed, **perms)
        m.update_batch([g.encode() for g in shingles(text, hasher.ngram)])
        found.update((j, i) for j in lsh.query(m))
        lsh.insert(i, m)
    return found


def score(found: set[tuple[int, int]], pairs: list[tuple[int, int]], sims: np.ndarray) -> tuple[float, float]:
    hit = np.array([p in found for p in pairs])
    return float(hit[sims >= 0.85].mean()), float(hit[sims < 0.5].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=600)
    ap.add_argument("--singletons", type=int, default=1200)
    ap.add_argument("--repeat", type=int, default=5, help="interleaved rounds; each side's best round counts")
    args = ap.parse_args()
    texts, pairs, sims = planted_pairs(n_pairs=args.pairs, n_singletons=args.singletons, seed=0)
    sims = np.asarray(sims)
    numpy_engine, rensa_engine, default = MinHasher(engine="numpy"), MinHasher(engine="rensa"), MinHasher()
    impls = {
        "gptqwen numpy": lambda: ours(texts, numpy_engine),
        "gptqwen rensa-engine": lambda: ours(texts, rensa_engine),
        "rensa (own LSH)": lambda: rensa_pairs(texts, default),
        "datasketch-legacy": lambda: datasketch_pairs(texts, default, "legacy"),
        "datasketch-affine32": lambda: datasketch_pairs(texts, default, "affine32"),
    }
    for fn in impls.values():  # warm-up: power tables, imports, allocator
        fn()
    times: dict[str, list[float]] = {name: [] for name in impls}
    found: dict[str, set] = {}
    for _ in range(args.repeat):
        for name, fn in impls.items():
            t0 = time.perf_counter()
            found[name] = fn()
            times[name].append(time.perf_counter() - t0)
    speed = {name: len(texts) / min(t) for name, t in times.items()}
    mine = f"gptqwen {default.engine}" + ("-engine" if default.engine == "rensa" else "")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{len(texts)} docs of ~200 words, {len(pairs)} planted pairs, {default.bands}x{default.rows} bands x rows, "
          f"best of {args.repeat} interleaved rounds, load average {load:.1f} on {os.cpu_count()} CPUs")
    print(f"{'impl':<22} {'docs/s':>9} {'spread':>7} {'recall>=0.85':>13} {'fpr<0.5':>8} {'ratio':>7}")
    for name in impls:
        recall, fpr = score(found[name], pairs, sims)
        spread = max(times[name]) / min(times[name])
        print(f"{name:<22} {speed[name]:>9.0f} {spread:>6.2f}x {recall:>13.3f} {fpr:>8.3f} {speed[mine] / speed[name]:>6.2f}x")


if __name__ == "__main__":
    main()
