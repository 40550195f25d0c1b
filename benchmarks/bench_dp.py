"""``dp`` on the shared dnn-partitioning graphs against the authors' dynamic program.

Prints, per graph, dp's max-load (the simulator's ``throughput`` of the returned placement),
the README's "dp (contiguous optimum)" value, the relative difference, dp's decision time
beside the reference tool's seconds, and the size of the search (blocks, ideals, pairs of
ideals evaluated). The compiled kernel is warmed up on a tiny graph first, so the times
exclude numba's one-off compilation (cached on disk after the first run). Exits with status 1
if any difference exceeds 0.1 %.

    python benchmarks/bench_dp.py [--data DIR] [--repeat R]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rlplace.baselines import dp
from rlplace.costs import CostTable
from rlplace.formats import load_dnn_partitioning
from rlplace.formats.dnn_partitioning import dnn_partitioning_cluster, shared_data_dir
from rlplace.graph import OpGraph

#: graph file stem, README dp value, README seconds of the authors' tool.
CASES = [
    ("bert24_inference__layer", 17.7899, 0.1),
    ("bert24_training__layer", 41.7458, 0.1),
    ("resnet50_inference__layer", 33.7747, 0.1),
    ("resnet50_training__layer", 78.6318, 0.2),
    ("bert_l-3_inference__operator", 27.9186, 1.0),
    ("bert_l-3_training__operator", 65.3031, 3.7),
    ("bert_l-6_inference__operator", 29.5795, 2.4),
    ("resnet50_inference__operator", 124.349, 0.1),
]
TOLERANCE = 1e-3


def warm_up() -> None:
    graph = OpGraph.build(
        [{"name": "a", "times": {"accelerator": 1.0, "cpu": 2.0}}, {"name": "b", "times": {"accelerator": 1.0, "cpu": 2.0}}],
        [{"src": "a", "dst": "b", "bytes": 0.0, "time": 0.5}],
        time_classes=("accelerator", "cpu"),
    )
    cluster = dnn_partitioning_cluster(2, 1, 1e9)
    dp.solve(graph, cluster, CostTable.build(graph, cluster), objective="throughput")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=shared_data_dir(), help="the dnn-partitioning data folder")
    parser.add_argument("--repeat", type=int, default=3, help="decisions per graph; the fastest is reported")
    args = parser.parse_args(argv)
    if not (args.data / "graphs").is_dir():
        print(f"no shared data at {args.data}", file=sys.stderr)
        return 2
    warm_up()
    header = f"{'graph':<30} {'dp':>10} {'README':>10} {'rel diff':>9} {'dp s':>7} {'ref s':>6} {'blocks':>6} {'ideals':>7} {'pairs':>9}"
    print(header)
    worst = 0.0
    for stem, reference, reference_seconds in CASES:
        problem = load_dnn_partitioning(args.data / "graphs" / f"{stem}.json")
        costs = CostTable.build(problem.graph, problem.cluster)
        seconds = []
        for _ in range(max(1, args.repeat)):
            started = time.perf_counter()
            solution = dp.solve(problem.graph, problem.cluster, costs, objective="throughput")
            seconds.append(time.perf_counter() - started)
        difference = abs(solution.step_time - reference) / reference
        worst = max(worst, difference)
        ideals = f"{solution.num_ideals}{'*' if solution.linearized else ''}"
        print(
            f"{stem:<30} {solution.step_time:>10.4f} {reference:>10.4f} {difference:>9.1e} {min(seconds):>7.2f} {reference_seconds:>6.1f} "
            f"{solution.num_blocks:>6} {ideals:>7} {solution.ideal_pairs:>9}"
        )
    print(f"worst relative difference {worst:.1e} (tolerance {TOLERANCE:g}): {'ok' if worst <= TOLERANCE else 'FAIL'}")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
