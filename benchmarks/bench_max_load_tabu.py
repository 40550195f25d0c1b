"""The max-load tabu search (`rlplace.baselines.max_load_tabu`) on the shared dnn-partitioning graphs.

Each graph on its own cluster under ``throughput`` (the paper's max-load model): the max load
of ``local-search`` (seed 0, its default 2000 simulations), then of the tabu search run from
that answer for each of ``--seconds`` (seed 0), with the steps it made. Compare with the
proven optima of ``bench_ilp.py`` (README, "Exact max-load optima"). This is the search that
the ``policy`` method runs at the end of a ``throughput`` decision.

    python benchmarks/bench_max_load_tabu.py [--seconds 2,10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", default="2,10", help="comma-separated run lengths of the tabu search, seconds")
    args = parser.parse_args()
    seconds = [float(s) for s in args.seconds.split(",")]

    from rlplace.baselines.max_load_tabu import tabu_search
    from rlplace.costs import CostTable
    from rlplace.formats.dnn_partitioning import shared_data_dir
    from rlplace.load import load_model
    from rlplace.methods import run_method
    from rlplace.rules import prepare
    from rlplace.simulate import Simulator

    print(f"{'graph':40s} {'ops':>5s} {'units':>5s} {'local-search':>12s} " + " ".join(f"{f'tabu {s:g} s':>12s} {'steps':>7s}" for s in seconds))
    for path in sorted((shared_data_dir() / "graphs").glob("*.json")):
        loaded = load_model(str(path))
        graph, cluster = loaded.graph, loaded.cluster
        costs = CostTable.build(graph, cluster)
        simulator = Simulator(graph, cluster, costs, objective="throughput")
        units, budget = prepare(graph, cluster, costs, "throughput")
        searched = np.asarray(run_method("local-search", graph, cluster, costs, objective="throughput", seed=0).placement)
        start = units.contract(searched)
        cells = []
        for run_s in seconds:
            _, value, steps = tabu_search(simulator, units, budget, start, deadline=time.perf_counter() + run_s, seed=0)
            cells.append(f"{value:12.4f} {steps:7d}")
        print(f"{path.stem:40s} {graph.num_ops:5d} {units.num_units:5d} {simulator.step_time(searched):12.4f} " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
