"""Whole learning runs with the backbone on PyTorch, ONNX Runtime fp32 and ONNX Runtime int8.

    python tools/compare_backends.py                 # digits and mnist5k, ar1*, seeds 0 1 2
    python tools/compare_backends.py --datasets digits --strategies latent-replay --seeds 0

Issue 4's accuracy target: int8 loses at most 1 point of final accuracy against torch
(the whole ``edgecl learn`` run, same seed). Each row is one (dataset, strategy, seed):
final accuracy per backend, the differences, and the median backbone time per call.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from edgecl.runtime.run import RunSpec, run

BACKENDS = ("torch", "ort", "ort-int8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist5k"])
    parser.add_argument("--strategies", nargs="+", default=["ar1*"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", dest="json_path", help="also write every report here")
    args = parser.parse_args(argv)

    reports = []
    print("| dataset | strategy | seed | torch | ort | ort-int8 | ort − torch | "
          "int8 − torch | backbone ms p50 torch / ort / int8 |")
    print("|---|---|---|---|---|---|---|---|---|")
    deltas: dict[str, list[float]] = {"ort": [], "ort-int8": []}
    for dataset in args.datasets:
        for strategy in args.strategies:
            for seed in args.seeds:
                by_backend = {}
                for backend in BACKENDS:
                    print(f"  {dataset} {strategy} seed {seed} {backend}", file=sys.stderr)
                    report = run(RunSpec(dataset=dataset, strategy=strategy, seed=seed,
                                         backend=backend, threads=args.threads,
                                         schedule="fixed"))
                    by_backend[backend] = report
                    reports.append(report)
                acc = {b: r["final_accuracy"] for b, r in by_backend.items()}
                for b in deltas:
                    deltas[b].append(acc[b] - acc["torch"])
                ms = " / ".join(f"{by_backend[b]['latency_ms']['backbone']['p50']:.2f}"
                                for b in BACKENDS)
                print(f"| {dataset} | {strategy} | {seed} | {acc['torch']:.4f} | "
                      f"{acc['ort']:.4f} | {acc['ort-int8']:.4f} | "
                      f"{100 * (acc['ort'] - acc['torch']):+.2f} | "
                      f"{100 * (acc['ort-int8'] - acc['torch']):+.2f} | {ms} |", flush=True)
    worst = 100 * min(deltas["ort-int8"])
    print(f"\nmean change, points: ort {100 * np.mean(deltas['ort']):+.2f}, "
          f"ort-int8 {100 * np.mean(deltas['ort-int8']):+.2f}; worst int8 {worst:+.2f}")
    print(f"target (int8 loses at most 1 point in every run): {'PASS' if worst >= -1 else 'FAIL'}")
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(reports, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
