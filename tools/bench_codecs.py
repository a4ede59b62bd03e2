"""Codec throughput: encode and decode 10,000 latents of 512 values on 2 threads.

    python tools/bench_codecs.py                     # every registered codec
    python tools/bench_codecs.py --codecs pq uint8 --json codecs.json

Each codec is fitted on 2,000 structured latents (ReLU of a random projection of low-rank
Gaussian data with a few class clusters: sparse, correlated, like a CNN's pooled features),
then encodes and decodes 10,000 others: median of 7 timed repeats after one warm-up.
Project target: encode + decode of the 10,000 under 50 ms for every codec. The machine may
be shared: run it more than once and read the medians together.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import torch

from edgecl.memory.codecs import CodecWarning, create_codec, list_codecs

TARGET_MS = 50.0  # encode + decode of N_ENCODE latents, per codec


def structured_latents(n: int, dim: int, *, rank: int = 32, classes: int = 10,
                       seed: int = 0) -> torch.Tensor:
    """(n, dim) float32: ReLU(W z + class mean + noise), z low-rank with decaying scales."""
    g = torch.Generator().manual_seed(seed)  # the same projection for every call
    mixing = torch.randn(rank, dim, generator=g) / rank ** 0.5
    means = 0.5 * torch.randn(classes, dim, generator=g)
    g.manual_seed(seed + n)  # different samples for fit and test sets
    z = torch.randn(n, rank, generator=g) * torch.linspace(3.0, 0.3, rank)
    labels = torch.randint(classes, (n,), generator=g)
    noise = 0.1 * torch.randn(n, dim, generator=g)
    return torch.relu(z @ mixing + means[labels] + noise)


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def bench_codec(name: str, fit: torch.Tensor, test: torch.Tensor, repeats: int) -> dict:
    dim = test.shape[1]
    codec = create_codec(name)
    codec.configure(dim, max_bytes=None)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CodecWarning)  # a degraded fit would skew the table
        codec.fit(fit)
    fit_s = time.perf_counter() - start
    codes = codec.encode(test)
    decoded = codec.decode(codes)
    encode_ms = _median_ms(lambda: codec.encode(test), repeats)
    decode_ms = _median_ms(lambda: codec.decode(codes), repeats)
    n = len(test)
    bytes_per_sample = codec.bytes_per_sample(dim)
    return {
        "codec": name,
        "n": n,
        "dim": dim,
        "fit_s": fit_s,
        "encode_per_s": n / (encode_ms / 1e3),
        "decode_per_s": n / (decode_ms / 1e3),
        "encode_ms": encode_ms,
        "decode_ms": decode_ms,
        "encode_decode_ms": encode_ms + decode_ms,
        "bytes_per_sample": bytes_per_sample,
        "overhead_bytes": codec.overhead_bytes(),
        "ratio_vs_fp32": 4 * dim / bytes_per_sample,
        "relative_mse": float(((decoded - test) ** 2).mean() / test.var()),
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| codec | encode vec/s | decode vec/s | enc+dec ms (10k) | < 50 ms | B/sample "
        "| vs fp32 | overhead B | rel. MSE | fit s |",
        "|---|---:|---:|---:|:-:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        on_target = "yes" if r["encode_decode_ms"] < TARGET_MS else "no"
        lines.append(
            f"| {r['codec']} | {r['encode_per_s']:,.0f} | {r['decode_per_s']:,.0f} "
            f"| {r['encode_decode_ms']:.1f} | {on_target} "
            f"| {r['bytes_per_sample']} | {r['ratio_vs_fp32']:.0f}x | {r['overhead_bytes']:,} "
            f"| {r['relative_mse']:.2e} | {r['fit_s']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codecs", nargs="+", default=list_codecs(), choices=list_codecs())
    parser.add_argument("--fit", type=int, default=2000, help="latents to fit on")
    parser.add_argument("--n", type=int, default=10_000, help="latents to encode and decode")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    fit = structured_latents(args.fit, args.dim)
    test = structured_latents(args.n, args.dim)
    rows = [bench_codec(name, fit, test, args.repeats) for name in args.codecs]
    print(f"{args.n:,} latents of {args.dim} values, fitted on {args.fit:,}, "
          f"{args.threads} threads, median of {args.repeats}:\n")
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
