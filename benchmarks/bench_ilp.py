"""The ``ilp`` method: exact max-load (throughput) optima, and how far the other methods are from them.

Two tables, every number on the graph the methods decide on (``throughput``, the max-load model):

1. the profiled dnn-partitioning graphs of ``../shared`` with their own clusters (the paper's
   model exactly): ``dp`` (contiguous optimum), ``local-search`` (2000 simulations) and the
   ``ilp`` method's search (`rlplace.baselines.ilp.solve_and_improve`, ``--time-limit``
   seconds in all): its max load, HiGHS's proven lower bound, whether it closed the gap, and
   its time;
2. the ``throughput`` cases of ``bench_policy.py``'s validation and held-out splits (seed 0):
   the best classic method (as ``bench_policy.py`` defines it: the fast baselines and
   ``local-search``), then ``ilp`` and the bound over the best classic: the bound is how far
   below the classics any method could possibly go (1.000 where ``ilp`` proved the classic
   optimal; ``nan`` where HiGHS had no bound yet). With ``--time-limit 1.5`` this is ``ilp``
   at the ``policy`` method's decision budget.

    python benchmarks/bench_ilp.py [--time-limit 30] [--skip-shared] [--skip-cases]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def shared_table(time_limit: float) -> None:
    from rlplace.baselines import ilp
    from rlplace.costs import CostTable
    from rlplace.formats.dnn_partitioning import shared_data_dir
    from rlplace.load import load_model
    from rlplace.methods import run_method
    from rlplace.simulate import Simulator

    graphs = sorted((shared_data_dir() / "graphs").glob("*.json"))
    if not graphs:
        print("shared dnn-partitioning data not found: table 1 skipped")
        return
    print(f"1. dnn-partitioning graphs, their own clusters, max load in the files' unit; ilp's time limit {time_limit:g} s")
    print(f"{'graph':36s} {'ops':>5s} {'dp':>9s} {'local-search':>12s} {'ilp':>9s} {'bound':>9s} {'optimal':>7s} {'ilp s':>6s}")
    for path in graphs:
        loaded = load_model(str(path))
        graph, cluster = loaded.graph, loaded.cluster
        assert cluster is not None  # a dnn-partitioning file carries its cluster
        costs = CostTable.build(graph, cluster)
        simulator = Simulator(graph, cluster, costs, objective="throughput")
        scores = []
        for name in ("dp", "local-search"):
            step_time, overflow = simulator.score(run_method(name, graph, cluster, costs, objective="throughput").placement)
            scores.append(step_time if overflow == 0 else math.inf)
        solution = ilp.solve_and_improve(graph, cluster, costs, time_limit_s=time_limit)
        print(
            f"{path.stem:36s} {graph.num_ops:5d} {scores[0]:9.4f} {scores[1]:12.4f} {solution.value:9.4f} "
            f"{solution.bound if solution.bound > 0 else math.nan:9.4f} {'yes' if solution.optimal else 'no':>7s} {solution.solve_s:6.1f}",
            flush=True,
        )


def cases_table(time_limit: float) -> None:
    from bench_policy import classic_step_times, held_out_cases, validation_cases

    from rlplace.baselines import ilp
    from rlplace.simulate import Simulator

    print(f"\n2. bench_policy's throughput cases (seed 0), ilp's time limit {time_limit:g} s; ratios over the best classic")
    print(f"{'split':10s} {'case':46s} {'best classic':>12s} {'ilp/best':>8s} {'bound/best':>10s} {'optimal':>7s}")
    for split, cases in (("validation", validation_cases(False)), ("held-out", held_out_cases(False))):
        for _, case in cases:
            if case.objective != "throughput":
                continue
            simulator = Simulator(case.graph, case.cluster, case.costs, objective="throughput")

            def step(placement: np.ndarray, simulator: Simulator = simulator) -> float:
                step_time, overflow = simulator.score(np.asarray(placement))
                return step_time if overflow == 0 else math.inf

            best = min(classic_step_times(case, 0, step)[0].values())
            solution = ilp.solve_and_improve(case.graph, case.cluster, case.costs, time_limit_s=time_limit)
            print(
                f"{split:10s} {case.label:46s} {best:12.5f} {solution.value / best:8.3f} {solution.bound / best if solution.bound > 0 else math.nan:10.3f} {'yes' if solution.optimal else 'no':>7s}",
                flush=True,
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", type=float, default=30.0, help="seconds the ilp method may take per graph (default 30)")
    parser.add_argument("--skip-shared", action="store_true", help="leave out table 1")
    parser.add_argument("--skip-cases", action="store_true", help="leave out table 2")
    args = parser.parse_args(argv)
    np.seterr(all="ignore")
    if not args.skip_shared:
        shared_table(args.time_limit)
    if not args.skip_cases:
        cases_table(args.time_limit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
