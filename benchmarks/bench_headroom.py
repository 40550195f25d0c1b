"""How far below the best classic method any of our searches gets on the held-out split, given
far more time than a decision has: a diagnostic for issue 10's targets, not a tuning run.

For every held-out case and seed of ``bench_policy.py`` (the same cases, classic methods and
best classic), runs the product's ``policy`` pipeline and its random-order ablation
(`rlplace.policy_method.search`) with ``--budget-s`` seconds each (default 15, ten times a
decision's), and prints per case each one's step time over the best classic and the better of
the two (*best known*), then their geometric means over all regimes and over B-D. If even the
best known stays above a target, no setting of the search reaches it at the 2 s decision
limit; the gap then has to come from a different method, not from tuning.

    python benchmarks/bench_headroom.py [--budget-s 15] [--seeds 3]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def geomean(values: list[float]) -> float:
    return float(np.exp(np.mean(np.log(values))))


def main(argv: list[str] | None = None) -> int:
    import torch
    from bench_policy import classic_step_times, held_out_cases

    from rlplace.policy_method import search
    from rlplace.simulate import Simulator

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=15.0, help="seconds per search (default 15)")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    rows: list[tuple[str, float, float]] = []  # (regime, policy / best classic, ablation / best classic)
    print(f"every search gets {args.budget_s:g} s; ratios are step time over the best classic method of the case")
    print(f"{'regime':6s} {'case':42s} {'seed':>4s} {'policy':>7s} {'ablation':>8s} {'best known':>10s}")
    for regime, case in held_out_cases(False):
        simulator = Simulator(case.graph, case.cluster, case.costs, objective=case.objective, microbatches=case.microbatches)

        def step(placement: np.ndarray, simulator: Simulator = simulator) -> float:
            time_s, overflow = simulator.score(np.asarray(placement))
            return time_s if overflow == 0 else math.inf

        for seed in range(args.seeds):
            options = {"objective": case.objective, "seed": seed, "microbatches": case.microbatches}
            best = min(classic_step_times(case, seed, step)[0].values())
            found = [step(search(case.graph, case.cluster, case.costs, budget_s=args.budget_s, random_order=ablation, **options)[0]) / best for ablation in (False, True)]
            rows.append((regime, found[0], found[1]))
            print(f"{regime:6s} {case.label[:42]:42s} {seed:4d} {found[0]:7.3f} {found[1]:8.3f} {min(found):10.3f}", flush=True)
    for label, keep in (("all", lambda r: True), ("B-D", lambda r: r != "A")):
        chosen = [row for row in rows if keep(row[0])]
        print(
            f"{label:4s} geomean: policy {geomean([r[1] for r in chosen]):.4f}, ablation {geomean([r[2] for r in chosen]):.4f}, "
            f"best known {geomean([min(r[1], r[2]) for r in chosen]):.4f} ({len(chosen)} runs)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
