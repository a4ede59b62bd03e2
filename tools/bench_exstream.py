"""Time per ExStream insert into a full class (b prototypes, D=512) vs brute force.

    python tools/bench_exstream.py

Brute force is the paper's O(b^2 D) way: all pairwise distances, merge the closest pair.
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
import torch

from edgecl.memory.exstream import ExStreamBuffer

torch.set_num_threads(1)
D = 512


def brute_force_insert(vectors, counts, x, mode):
    """One insert into a full class the paper's way: all (b+1)^2 distances, merge the closest."""
    allv = torch.cat([vectors, x[None]])
    allc = torch.cat([counts, torch.ones(1, dtype=counts.dtype)])
    dist = torch.cdist(allv, allv, compute_mode=mode)
    dist.fill_diagonal_(float("inf"))
    i, j = sorted(divmod(int(dist.argmin()), len(allv)))
    ni, nj = float(allc[i]), float(allc[j])
    allv[i] = (allv[i] * ni + allv[j] * nj) / (ni + nj)
    allc[i] += allc[j]
    keep = torch.arange(len(allv)) != j
    return allv[keep], allc[keep]


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"D={D}, torch threads=1, {torch.__version__}")
    for b in (50, 200, 1000):
        n_fill, n_time = b, (200 if b < 1000 else 100)
        data = torch.as_tensor(rng.normal(size=(n_fill + n_time, D)), dtype=torch.float32)
        label = torch.tensor([0])
        buffer = ExStreamBuffer(max_samples=b)
        buffer.add(data[:n_fill], torch.zeros(n_fill, dtype=torch.long))  # class now full
        times = []
        for x in data[n_fill:]:
            t = time.perf_counter()
            buffer.add(x[None], label)
            times.append(time.perf_counter() - t)
        ours = statistics.median(times)
        # Same inserts, one add() call for the whole batch: validation and encode amortized.
        buffer2 = ExStreamBuffer(max_samples=b)
        buffer2.add(data[:n_fill], torch.zeros(n_fill, dtype=torch.long))
        t = time.perf_counter()
        buffer2.add(data[n_fill:], torch.zeros(n_time, dtype=torch.long))
        batched = (time.perf_counter() - t) / n_time
        row = [f"b={b:5d}", f"exstream add(1): {ours * 1e3:8.3f} ms",
               f"in a batch: {batched * 1e3:8.3f} ms"]
        for mode, name in [("donot_use_mm_for_euclid_dist", "brute exact"),
                           ("use_mm_for_euclid_dist", "brute mm")]:
            vectors, counts = data[:b].clone(), torch.ones(b)
            reps = 30 if b < 1000 else 7
            bt = []
            for x in data[n_fill:n_fill + reps]:
                t = time.perf_counter()
                vectors, counts = brute_force_insert(vectors, counts, x, mode)
                bt.append(time.perf_counter() - t)
            row.append(f"{name}: {statistics.median(bt) * 1e3:9.3f} ms")
        print("  ".join(row), flush=True)


if __name__ == "__main__":
    sys.exit(main())
