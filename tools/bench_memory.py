"""Replay memory benchmark: codecs x strategies x byte budgets on real datasets.

    python tools/bench_memory.py                  # the README tables (about 20 minutes)
    python tools/bench_memory.py --datasets digits --seeds 0 --budgets-kb 64

Three tables:
1. Equal byte budget: for each budget, codec and strategy, the latents held and the final
   accuracy (class-incremental, 5 experiences; mean over seeds).
2. Equal number of stored latents (200, no byte limit): what each codec's loss costs in
   accuracy, the QLR-CL comparison (uint8 against fp32 at the same samples).
3. Codec throughput on each dataset's real latents: encode and decode, vectors per second,
   median of repeats.
The backbone of each (dataset, seed) is pretrained once and loaded by every run of that pair
(``RunSpec.backbone_weights``), so runs differ only in their memory.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgecl import Learner, LearnerConfig, build_scenario, load_dataset
from edgecl.memory import create_codec, list_codecs
from edgecl.runtime.run import RunSpec, run

STRATEGIES = ["latent-replay", "ar1*", "remind"]


def _pretrained_backbone(dataset: str, seed: int, experiences: int, directory: Path) -> str:
    """Pretrain on the first experience exactly as a run would, and save the network."""
    data = load_dataset(dataset, seed=seed)
    scenario = build_scenario("class-incremental", data, n_experiences=experiences, seed=seed)
    learner = Learner(strategy="naive", input_shape=data.input_shape,
                      n_classes=data.n_classes, seed=seed)
    first = scenario.experiences[0]
    learner.pretrain(first.x, first.y)
    path = directory / f"{dataset.replace(':', '_')}-{seed}.pt"
    learner.save_backbone(path)
    return str(path)


def _throughput(dataset: str, seed: int, weights: str, repeats: int) -> list[dict]:
    """Encode/decode speed of every codec on this dataset's training latents."""
    data = load_dataset(dataset, seed=seed)
    learner = Learner(strategy="naive", input_shape=data.input_shape,
                      n_classes=data.n_classes, config=LearnerConfig(), seed=seed)
    learner.load_backbone(weights)
    with torch.no_grad():
        latents = learner._latents(torch.as_tensor(data.x_train))
    flat = latents.reshape(len(latents), -1).contiguous()
    rows = []
    for name in list_codecs():
        codec = create_codec(name)
        codec.configure(flat.shape[1], max_bytes=None)
        codec.fit(flat[: len(flat) // 5])
        codes = codec.encode(flat)
        encode_s, decode_s = [], []
        for _ in range(repeats + 1):  # the first is a warm-up
            start = time.perf_counter()
            codes = codec.encode(flat)
            encode_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            decoded = codec.decode(codes)
            decode_s.append(time.perf_counter() - start)
        error = float(((decoded - flat) ** 2).mean() / flat.var().clamp(min=1e-12))
        rows.append({"dataset": dataset, "codec": name, "dim": flat.shape[1],
                     "n": len(flat), "bytes_per_sample": codec.bytes_per_sample(flat.shape[1]),
                     "encode_per_s": len(flat) / float(np.median(encode_s[1:])),
                     "decode_per_s": len(flat) / float(np.median(decode_s[1:])),
                     "relative_mse": error})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist5k", "mnist1d:10000"])
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES)
    parser.add_argument("--codecs", nargs="+", default=None, help="default: every codec")
    parser.add_argument("--budgets-kb", nargs="+", type=float, default=[64, 256, 1024])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--experiences", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="throughput repeats")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--json", dest="json_path", help="write every result here")
    args = parser.parse_args(argv)
    codecs = args.codecs or list_codecs()

    torch.set_num_threads(args.threads)
    budget_rows, sample_rows, speed_rows = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            weights = {seed: _pretrained_backbone(dataset, seed, args.experiences, Path(tmp))
                       for seed in args.seeds}
            speed_rows += _throughput(dataset, args.seeds[0], weights[args.seeds[0]],
                                      args.repeats)

            def one(strategy: str, codec: str, seed: int, *, memory_mb: float,
                    samples: int | None, dataset: str = dataset,
                    weights: dict[int, str] = weights) -> dict:
                spec = RunSpec(dataset=dataset, strategy=strategy, codec=codec, seed=seed,
                               n_experiences=args.experiences, replay_mb=memory_mb,
                               replay_samples=samples, backbone_weights=weights[seed],
                               threads=args.threads)
                report = run(spec)
                print(f"  {dataset} {strategy} {codec} {memory_mb * 1024:g} KB "
                      f"samples={samples} seed {seed}: held {report['memory']['n_stored']}, "
                      f"final {report['final_accuracy']:.3f}", file=sys.stderr, flush=True)
                return report

            for budget_kb in args.budgets_kb:
                for strategy in args.strategies:
                    for codec in codecs:
                        reports = [one(strategy, codec, s, memory_mb=budget_kb / 1024,
                                       samples=None) for s in args.seeds]
                        budget_rows.append(_summary(dataset, strategy, codec, reports,
                                                    budget_kb=budget_kb))
            for strategy in args.strategies:
                for codec in codecs:
                    reports = [one(strategy, codec, s, memory_mb=1024, samples=200)
                               for s in args.seeds]
                    sample_rows.append(_summary(dataset, strategy, codec, reports))

    _print_tables(budget_rows, sample_rows, speed_rows, args.seeds, args.threads)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(
            {"budget": budget_rows, "samples": sample_rows, "throughput": speed_rows}, indent=1))
    return 0


def _summary(dataset: str, strategy: str, codec: str, reports: list[dict],
             budget_kb: float | None = None) -> dict:
    finals = [r["final_accuracy"] for r in reports]
    return {"dataset": dataset, "strategy": strategy, "codec": codec, "budget_kb": budget_kb,
            "n_stored": int(np.median([r["memory"]["n_stored"] for r in reports])),
            "bytes_per_sample": reports[0]["memory"]["bytes_per_sample"],
            "buffer_bytes": max(r["memory"]["buffer_bytes"] for r in reports),
            "final_accuracy": float(np.mean(finals)), "final_std": float(np.std(finals))}


def _print_tables(budget_rows: list[dict], sample_rows: list[dict], speed_rows: list[dict],
                  seeds: list[int], threads: int) -> None:
    print(f"\n### Equal byte budget (final accuracy, mean of seeds {seeds}; latents held)\n")
    print("| dataset | budget | strategy | codec | B/sample | held | buffer bytes | final acc. |")
    print("|---|---|---|---|---|---|---|---|")
    for r in budget_rows:
        print(f"| {r['dataset']} | {r['budget_kb']:g} KB | {r['strategy']} | {r['codec']} | "
              f"{r['bytes_per_sample']} | {r['n_stored']} | {r['buffer_bytes']:,} | "
              f"{r['final_accuracy']:.3f} ± {r['final_std']:.3f} |")
    print(f"\n### Equal stored latents (200, no byte limit; mean of seeds {seeds})\n")
    print("| dataset | strategy | codec | B/sample | final acc. |")
    print("|---|---|---|---|---|")
    for r in sample_rows:
        print(f"| {r['dataset']} | {r['strategy']} | {r['codec']} | {r['bytes_per_sample']} | "
              f"{r['final_accuracy']:.3f} ± {r['final_std']:.3f} |")
    print(f"\n### Codec throughput on real latents (median of repeats, {threads} threads)\n")
    print("| dataset | codec | dim | latents | B/sample | encode vec/s | decode vec/s | "
          "rel. MSE |")
    print("|---|---|---|---|---|---|---|---|")
    for r in speed_rows:
        print(f"| {r['dataset']} | {r['codec']} | {r['dim']} | {r['n']} | "
              f"{r['bytes_per_sample']} | {r['encode_per_s']:,.0f} | {r['decode_per_s']:,.0f} | "
              f"{r['relative_mse']:.2e} |")


if __name__ == "__main__":
    sys.exit(main())
