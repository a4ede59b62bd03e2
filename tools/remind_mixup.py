"""Does REMIND's manifold mixup help here? Final accuracy with and without it.

    python tools/remind_mixup.py --datasets digits mnist5k --seeds 0 1

Class-incremental, 5 experiences, default settings otherwise (pq codec, quantized
evaluation); one torch thread. The numbers in edgecl/strategies/remind.py come from this.
"""

from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np
import torch

from edgecl import Learner, build_scenario, load_dataset
from edgecl.strategies.remind import Remind


def final_accuracy(dataset: str, seed: int, mixup_alpha: float) -> float:
    data = load_dataset(dataset, seed=seed)
    scenario = build_scenario("class-incremental", data, n_experiences=5, seed=seed)
    learner = Learner(strategy=Remind(mixup_alpha=mixup_alpha), input_shape=data.input_shape,
                      n_classes=data.n_classes, seed=seed)
    for experience in scenario.experiences:
        learner.learn_many(experience.x, experience.y)
    return float(np.mean([learner.evaluate(e.x_test, e.y_test) for e in scenario.experiences]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist5k"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--alphas", nargs="+", type=float, default=[0.0, 0.1])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # codec warnings on small first experiences
    print("| dataset | mixup alpha | final accuracy (mean) | per seed |")
    print("|---|---|---|---|")
    for dataset in args.datasets:
        for alpha in args.alphas:
            accs = [final_accuracy(dataset, seed, alpha) for seed in args.seeds]
            print(f"| {dataset} | {alpha:g} | {np.mean(accs):.3f} | "
                  f"{', '.join(f'{a:.3f}' for a in accs)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
