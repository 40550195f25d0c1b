"""Throughput (max-load) of the human-expert splits of the shared dnn-partitioning graphs.

Prints, per graph, rlplace's `throughput` objective for the expert split beside the
human-expert number of ``shared/data/dnn-partitioning/README.md`` and the relative error;
exits with status 1 if any error exceeds 1e-4. Training graphs without their own split use
the inference split (backward nodes follow their forward node's colorClass), as the README says.

    python benchmarks/bench_expert_throughput.py [--data DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlplace.costs import CostTable
from rlplace.formats import load_dnn_partitioning, load_expert_placement
from rlplace.formats.dnn_partitioning import shared_data_dir
from rlplace.simulate import simulate

#: graph, expert split, README human-expert max-load.
CASES = [
    ("bert24_inference", "bert24_inference", 20.084),
    ("bert24_training", "bert24_training", 49.4049),
    ("resnet50_inference", "resnet50_inference", 43.9183),
    ("resnet50_training", "resnet50_inference", 112.108),
]
TOLERANCE = 1e-4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=shared_data_dir(), help="the dnn-partitioning data folder")
    args = parser.parse_args(argv)
    if not (args.data / "graphs").is_dir():
        print(f"no shared data at {args.data}", file=sys.stderr)
        return 2
    print(f"{'graph':<22} {'split':<20} {'rlplace':>10} {'README':>10} {'rel. error':>11} {'oom':>4}")
    worst = 0.0
    for graph_name, split_name, reference in CASES:
        problem = load_dnn_partitioning(args.data / "graphs" / f"{graph_name}__layer.json")
        placement = load_expert_placement(args.data / "human-experts" / f"{split_name}_expert.json", problem)
        costs = CostTable.build(problem.graph, problem.cluster)
        result = simulate(problem.graph, problem.cluster, costs, placement, objective="throughput")
        error = abs(result.step_time - reference) / reference
        worst = max(worst, error)
        print(f"{graph_name:<22} {split_name:<20} {result.step_time:>10.4f} {reference:>10.4f} {error:>11.2e} {'yes' if result.oom else 'no':>4}")
    verdict = "ok" if worst <= TOLERANCE else "FAIL"
    print(f"worst relative error {worst:.2e} (tolerance {TOLERANCE:g}): {verdict}")
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
