"""Soak test: a million-sample online stream through latent replay, memory watched throughout.

    python tools/soak.py                          # 10^6 samples of MNIST-1D, uint8 buffer
    python tools/soak.py --codec pq --samples 200000
    python tools/soak.py --synthetic --json soak.json

A learner (``latent-replay``, replay buffer in ``--codec``) is pretrained on a first batch,
then learns an online stream one mini-batch at a time, predicting each mini-batch before it
learns it (prequential, test-then-train accuracy). The stream cycles through the MNIST-1D
training set (``mnist1d:N``, needs the ``data`` extra), reshuffled on every pass, with a little
Gaussian noise on every sample so no two passes are alike; ``--synthetic`` uses a Gaussian
mixture instead.

Resident memory (RSS) is read after a warm-up (the first ``--warmup`` share of the stream),
at every ``--every`` share, and at the end. The test passes when no reading after the warm-up
is more than ``--max-growth`` (5 %) above the warm-up reading. Also reported: the buffer's
bytes, updates and samples per second, and the prequential accuracy. Progress goes to stderr,
the figures to stdout (and to ``--json``). Exit status 1 on FAIL.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from edgecl import Learner, LearnerConfig, load_dataset
from edgecl.errors import EdgeclWarning

MB = 2**20


def _pool(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """The samples the stream cycles through: float32 (N, D) and int64 labels."""
    if args.synthetic:
        rng = np.random.default_rng(args.seed)
        centres = rng.normal(scale=1.5, size=(10, 40))
        y = rng.integers(0, 10, size=4000)
        return (centres[y] + rng.normal(size=(len(y), 40))).astype(np.float32), y
    dataset = load_dataset(f"mnist1d:{args.pool}", seed=args.seed)
    return dataset.x_train, dataset.y_train


def _stream(x: np.ndarray, y: np.ndarray, *, batch: int, noise: float,
            rng: np.random.Generator):
    """Endless mini-batches: each pass a fresh permutation, every sample with fresh noise."""
    scale = noise * x.std(axis=0, keepdims=True)
    while True:
        order = rng.permutation(len(y))
        for start in range(0, len(order) - batch + 1, batch):
            idx = order[start:start + batch]
            noisy = x[idx] + scale * rng.standard_normal((len(idx), x.shape[1]),
                                                         dtype=np.float32)
            yield noisy.astype(np.float32), y[idx]


def _rss_mb(process: psutil.Process) -> float:
    return process.memory_info().rss / MB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1_000_000,
                        help="samples streamed after the first batch (default 1,000,000)")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per update")
    parser.add_argument("--codec", default="uint8", help="replay storage (default uint8)")
    parser.add_argument("--replay-samples", type=int, default=1000,
                        help="replay buffer capacity in latents (default 1000)")
    parser.add_argument("--first-batch", type=int, default=1000,
                        help="samples of the first batch, which pretrains the backbone")
    parser.add_argument("--pool", type=int, default=10_000,
                        help="MNIST-1D samples generated (80%% train the stream cycles)")
    parser.add_argument("--synthetic", action="store_true",
                        help="a Gaussian mixture instead of MNIST-1D")
    parser.add_argument("--noise", type=float, default=0.05,
                        help="noise added to each sample, times each feature's std")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=float, default=0.05,
                        help="share of the stream before the baseline RSS reading")
    parser.add_argument("--every", type=float, default=0.05,
                        help="share of the stream between RSS readings")
    parser.add_argument("--max-growth", type=float, default=0.05,
                        help="largest RSS growth after the warm-up that passes (default 0.05)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    if args.samples < args.batch_size or args.batch_size < 1:
        parser.error("need --samples >= --batch-size >= 1")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    process = psutil.Process()
    x_pool, y_pool = _pool(args)
    rng = np.random.default_rng(args.seed)
    first = rng.permutation(len(y_pool))[:args.first_batch]
    learner = Learner(strategy="latent-replay", input_shape=x_pool.shape[1:],
                      n_classes=int(y_pool.max()) + 1, seed=args.seed,
                      config=LearnerConfig(codec=args.codec, replay_samples=args.replay_samples))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EdgeclWarning)  # a coarse codec fitted on a first batch
        learner.learn_many(x_pool[first], y_pool[first])
    started_rss = _rss_mb(process)

    n_batches = args.samples // args.batch_size
    warmup_batches = max(1, int(n_batches * args.warmup))
    every = max(1, int(n_batches * args.every))
    readings: list[dict[str, Any]] = []
    baseline: float | None = None
    seen = correct = 0
    updates_before = learner.n_updates
    started = time.perf_counter()
    batches = _stream(x_pool, y_pool, batch=args.batch_size, noise=args.noise, rng=rng)
    for i in range(1, n_batches + 1):
        x, y = next(batches)
        correct += int((learner.predict_many(x) == y).sum())
        learner.learn_many(x, y, epochs=1)
        seen += len(y)
        if i in (warmup_batches, n_batches) or i % every == 0:
            gc.collect()  # readings of live memory, not of garbage not yet collected
            elapsed = time.perf_counter() - started
            reading = {"samples": seen, "rss_mb": round(_rss_mb(process), 2),
                       "elapsed_s": round(elapsed, 1),
                       "prequential_accuracy": round(correct / seen, 4),
                       "buffer_bytes": int(learner.memory_stats()["buffer_bytes"])}
            if i == warmup_batches:
                baseline = reading["rss_mb"]
                reading["baseline"] = True
            readings.append(reading)
            growth = "" if baseline is None else \
                f"  {100 * (reading['rss_mb'] / baseline - 1):+5.2f}% vs warm-up"
            print(f"{100 * i / n_batches:5.1f}%  {seen:>10,} samples  RSS "
                  f"{reading['rss_mb']:7.1f} MB{growth}  {seen / elapsed:8.0f} samples/s  "
                  f"prequential acc {reading['prequential_accuracy']:.3f}", file=sys.stderr,
                  flush=True)
    elapsed = time.perf_counter() - started
    n_updates = learner.n_updates - updates_before

    warm = [r for r in readings if r["samples"] >= warmup_batches * args.batch_size]
    after = [r["rss_mb"] for r in warm]
    peak = max(after)
    growth = peak / baseline - 1
    end_growth = readings[-1]["rss_mb"] / baseline - 1
    samples_axis = np.array([r["samples"] for r in warm], dtype=np.float64)
    slope = (float(np.polyfit(samples_axis, after, 1)[0]) * 1e5 if len(after) > 1 else 0.0)
    passed = growth < args.max_growth
    stats = learner.memory_stats()
    figures = {
        "strategy": "latent-replay", "codec": args.codec,
        "data": "synthetic" if args.synthetic else f"mnist1d:{args.pool}",
        "samples": seen, "batch_size": args.batch_size, "threads": args.threads,
        "updates": n_updates, "optimizer_steps": learner.n_steps,
        "elapsed_s": round(elapsed, 1),
        "samples_per_s": round(seen / elapsed, 1), "updates_per_s": round(n_updates / elapsed, 2),
        "prequential_accuracy": round(correct / seen, 4),
        "buffer_bytes": int(stats["buffer_bytes"]), "buffer_n_stored": int(stats["n_stored"]),
        "bytes_per_sample": int(stats["bytes_per_sample"]),
        "rss_mb": {"after_first_batch": round(started_rss, 1), "warmup_baseline": baseline,
                   "peak_after_warmup": peak, "end": readings[-1]["rss_mb"]},
        "rss_growth_after_warmup": round(growth, 4), "rss_growth_at_end": round(end_growth, 4),
        "rss_slope_mb_per_100k_samples": round(slope, 3),
        "max_growth": args.max_growth, "passed": passed, "readings": readings,
    }
    print(f"soak: latent-replay, {args.codec} buffer, {figures['data']}, {seen:,} samples in "
          f"mini-batches of {args.batch_size}, {args.threads} thread(s)")
    print(f"  updates                   {n_updates:,} ({figures['updates_per_s']:.1f}/s), "
          f"{figures['samples_per_s']:,.0f} samples/s, {elapsed:.0f} s")
    print(f"  prequential accuracy      {figures['prequential_accuracy']:.4f}")
    print(f"  replay buffer             {figures['buffer_bytes']:,} bytes "
          f"({figures['buffer_n_stored']} latents, {figures['bytes_per_sample']} B each)")
    print(f"  RSS after warm-up         {baseline:.1f} MB (after the first batch "
          f"{started_rss:.1f} MB)")
    print(f"  RSS peak after warm-up    {peak:.1f} MB ({100 * growth:+.2f}%)")
    print(f"  RSS at the end            {readings[-1]['rss_mb']:.1f} MB ({100 * end_growth:+.2f}%),"
          f" trend {slope:+.3f} MB per 100k samples")
    print(f"  result                    {'PASS' if passed else 'FAIL'} (growth limit "
          f"{100 * args.max_growth:g}%)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
