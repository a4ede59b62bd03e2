"""Compare strategies on real datasets over several seeds; prints a markdown table.

    python tools/compare_strategies.py                       # the README table
    python tools/compare_strategies.py --datasets digits --seeds 0 1 --strategies naive ar1*

Each cell is the mean ± standard deviation over seeds of one run of ``edgecl learn`` with
the same settings (class-incremental, 5 experiences, profile cpu, default replay memory).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from edgecl.runtime.run import RunSpec, run

DEFAULT_STRATEGIES = ["naive", "cumulative", "latent-replay", "cwr", "cwr*", "ar1*", "remind",
                      "exstream"]


def _cell(values: list[float], digits: int = 3) -> str:
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist5k"])
    parser.add_argument("--strategies", nargs="+", default=DEFAULT_STRATEGIES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--experiences", type=int, default=5)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--json", dest="json_path", help="also write every report here")
    args = parser.parse_args(argv)

    reports = []
    print("| dataset | strategy | final accuracy | forgetting | stored latents | "
          "ms/update p50 | wall s |")
    print("|---|---|---|---|---|---|---|")
    for dataset in args.datasets:
        for strategy in args.strategies:
            runs = []
            for seed in args.seeds:
                started = time.perf_counter()
                spec = RunSpec(profile=args.profile, dataset=dataset, strategy=strategy,
                               n_experiences=args.experiences, seed=seed)
                report = run(spec)
                report["tool_wall_s"] = time.perf_counter() - started
                runs.append(report)
                reports.append(report)
                print(f"  {dataset} {strategy} seed {seed}: final "
                      f"{report['final_accuracy']:.3f}", file=sys.stderr)
            print(f"| {dataset} | {strategy} | "
                  f"{_cell([r['final_accuracy'] for r in runs])} | "
                  f"{_cell([r['forgetting'] for r in runs])} | "
                  f"{runs[0]['memory']['n_stored']} | "
                  f"{np.median([r['latency_ms']['update']['p50'] for r in runs]):.2f} | "
                  f"{np.median([r['wall_s'] for r in runs]):.1f} |", flush=True)
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(reports, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
