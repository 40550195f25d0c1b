"""``dp`` on the shared dnn-partitioning graphs against the authors' dynamic program.

Prints, per graph, dp's max-load (the simulator's ``throughput`` of the returned placement),
the README's "dp (contiguous optimum)" value, the relative difference, whether dp proves its
split optimal, dp's decision time beside the reference tool's seconds, and the size of the
search (blocks, ideals, pairs of ideals evaluated). Then the same for synthetic graphs past
the old linearization limit (4 472 ideals): a GNMT-like chain whose layers each leave a
weighty output behind (2^(L+1) - 1 ideals) and parallel chains (the wide, worst case). The
``cpu s`` (process time) is steadier than wall time on a shared machine. The
compiled kernel is warmed up on a tiny graph first, so the times exclude numba's one-off
compilation (cached on disk after the first run). Exits with status 1 if any difference
exceeds 0.1 % or a reference split is not proven optimal.

    python benchmarks/bench_dp.py [--data DIR] [--repeat R] [--wide]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

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
#: (name, layers) of leafy chains and (name, chains, length) of parallel chains; --wide adds the 59 320-ideal case.
LEAFY = [("leafy-12", 12), ("leafy-14", 14)]
PARALLEL = [("parallel-3x20", 3, 20), ("parallel-2x120", 2, 120)]
WIDE = [("parallel-3x38", 3, 38)]


def leafy_chain(layers: int, seed: int = 0) -> OpGraph:
    """A chain of layers with a skip every other layer; each layer also feeds a zero-time op
    holding bytes (as GNMT's LSTM layers leave their state), which cannot be merged away."""
    rng = np.random.default_rng(seed)
    ops: list[dict] = []
    edges: list[dict] = []
    for i in range(layers):
        t = float(rng.uniform(5.0, 15.0))
        ops.append({"name": f"l{i}", "times": {"accelerator": t, "cpu": 10 * t}, "param_bytes": float(rng.uniform(1.0, 5.0))})
        ops.append({"name": f"s{i}", "times": {"accelerator": 0.0, "cpu": 0.0}, "param_bytes": 0.5})
        edges.append({"src": f"l{i}", "dst": f"s{i}", "bytes": 0.0, "time": 0.01})
        if i:
            edges.append({"src": f"l{i - 1}", "dst": f"l{i}", "bytes": 0.0, "time": 0.01})
        if i >= 2 and i % 2 == 0:
            edges.append({"src": f"l{i - 2}", "dst": f"l{i}", "bytes": 0.0, "time": 0.01})
    return OpGraph.build(ops, edges, name=f"leafy{layers}", time_classes=("accelerator", "cpu"))


def parallel_chains(width: int, length: int, seed: int = 0) -> OpGraph:
    """``width`` chains of ``length`` ops after one source: (length + 1)^width + 1 ideals."""
    rng = np.random.default_rng(seed)
    ops: list[dict] = [{"name": "src", "times": {"accelerator": 1.0, "cpu": 10.0}}]
    edges: list[dict] = []
    for c in range(width):
        for i in range(length):
            t = float(rng.uniform(5.0, 15.0))
            ops.append({"name": f"c{c}_{i}", "times": {"accelerator": t, "cpu": 10 * t}, "param_bytes": 1.0})
            edges.append({"src": f"c{c}_{i - 1}" if i else "src", "dst": f"c{c}_{i}", "bytes": 0.0, "time": float(rng.uniform(0.1, 1.0))})
    return OpGraph.build(ops, edges, name=f"chains{width}x{length}", time_classes=("accelerator", "cpu"))


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
    parser.add_argument("--wide", action="store_true", help="also the 59 320-ideal parallel chains (minutes)")
    args = parser.parse_args(argv)
    if not (args.data / "graphs").is_dir():
        print(f"no shared data at {args.data}", file=sys.stderr)
        return 2
    warm_up()
    header = (
        f"{'graph':<30} {'dp':>10} {'README':>10} {'rel diff':>9} {'optimal':>7} {'dp s':>7} {'ref s':>6} "
        f"{'blocks':>6} {'ideals':>7} {'pairs':>10}"
    )
    print(header)
    worst = 0.0
    all_optimal = True
    for stem, reference, reference_seconds in CASES:
        problem = load_dnn_partitioning(args.data / "graphs" / f"{stem}.json")
        solution, seconds = _timed(problem.graph, problem.cluster, args.repeat)
        difference = abs(solution.step_time - reference) / reference
        worst = max(worst, difference)
        all_optimal &= solution.optimal
        print(
            f"{stem:<30} {solution.step_time:>10.4f} {reference:>10.4f} {difference:>9.1e} {str(solution.optimal).lower():>7} {seconds:>7.2f} "
            f"{reference_seconds:>6.1f} {_search(solution)}"
        )
    print()
    print(f"{'synthetic graph':<30} {'dp':>10} {'optimal':>7} {'dp s':>7} {'cpu s':>7} {'blocks':>6} {'ideals':>7} {'pairs':>10}")
    cluster = dnn_partitioning_cluster(6, 1, 1e9)
    synthetic = [(name, leafy_chain(layers)) for name, layers in LEAFY]
    synthetic += [(name, parallel_chains(width, length)) for name, width, length in PARALLEL + (WIDE if args.wide else [])]
    for name, graph in synthetic:
        started = time.process_time()
        solution, seconds = _timed(graph, cluster, 1)
        cpu = time.process_time() - started
        print(f"{name:<30} {solution.step_time:>10.4f} {str(solution.optimal).lower():>7} {seconds:>7.2f} {cpu:>7.2f} {_search(solution)}", flush=True)
    ok = worst <= TOLERANCE and all_optimal
    print(f"worst relative difference {worst:.1e} (tolerance {TOLERANCE:g}), references proven optimal: {all_optimal}: {'ok' if ok else 'FAIL'}")
    return 0 if ok else 1


def _timed(graph: OpGraph, cluster, repeat: int) -> tuple[dp.DpSolution, float]:
    costs = CostTable.build(graph, cluster)
    seconds = []
    for _ in range(max(1, repeat)):
        started = time.perf_counter()
        solution = dp.solve(graph, cluster, costs, objective="throughput")
        seconds.append(time.perf_counter() - started)
    return solution, min(seconds)


def _search(solution: dp.DpSolution) -> str:
    ideals = f"{solution.num_ideals}{'*' if solution.linearized else ''}"
    return f"{solution.num_blocks:>6} {ideals:>7} {solution.ideal_pairs:>10}"


if __name__ == "__main__":
    sys.exit(main())
