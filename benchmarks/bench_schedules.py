"""Pipeline schedules compared: simulated step time and peak activation memory of GPipe, 1F1B
and interleaved 1F1B on zoo models (training graphs) and preset clusters.

Placements are pipeline stages built here, not searched: the forward ops, in topological
order, are cut into ``S * v`` contiguous blocks of about equal forward time (on device 0),
block b on device ``b % S``; every other op follows its colocation class (a captured graph
ties the gradient and optimizer ops of a layer to its forward op), and an op without one
follows its latest input, the one of highest topological index (graph inputs: device 0; the
latest input keeps a residual stream's gradient sums on the stage of their layer, where the
first input would put some of them one stage later). ``v = 1``: one stage per device (GPipe, 1F1B);
``v = 2``: two chunks per device, Megatron-LM's interleaved layout.

Prints one row per (model, cluster, schedule, chunks per device): step time, the largest
per-device peak of activations and working memory, and the same summed over devices.

    python benchmarks/bench_schedules.py [--models zoo:gpt2 zoo:bert-base] [--clusters 4xT4 4xA100-nvlink] [--microbatches 8]
"""

from __future__ import annotations

import argparse

import numpy as np

from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.graph import OpGraph
from rlplace.load import load_model, resolve_cluster
from rlplace.simulate import Simulator

#: (schedule, chunks per device) rows of the table.
ROWS = (("gpipe", 1), ("1f1b", 1), ("gpipe", 2), ("interleaved-1f1b", 2))


def stage_placement(graph: OpGraph, costs: CostTable, num_devices: int, chunks: int) -> np.ndarray:
    """(n,) device per op: ``num_devices * chunks`` balanced contiguous forward blocks, round robin."""
    n = graph.num_ops
    forward = np.flatnonzero(~graph.is_backward)
    time = costs.op_time[forward, 0]
    blocks = num_devices * chunks
    cumulative = np.cumsum(time) - time / 2  # an op's block: where its middle falls
    block = np.minimum((cumulative / max(time.sum(), 1e-30) * blocks).astype(np.int64), blocks - 1)
    placement = np.full(n, -1, dtype=np.int64)
    placement[forward] = block % num_devices
    by_class: dict[int, int] = {}
    for op in forward:
        if graph.coloc[op] >= 0:
            by_class.setdefault(int(graph.coloc[op]), int(placement[op]))
    predecessors = graph.predecessors()
    for op in range(n):
        if graph.coloc[op] >= 0 and int(graph.coloc[op]) in by_class:
            placement[op] = by_class[int(graph.coloc[op])]
        elif placement[op] < 0 or graph.kinds[op] == "input":
            inputs = predecessors[op]
            placement[op] = placement[int(inputs.max())] if inputs.size else 0
    return placement


def compare(graph: OpGraph, cluster: Cluster, microbatches: int) -> list[tuple[str, int, float, float, float, bool]]:
    """(schedule, chunks, step time, max activation bytes, summed activation bytes, oom) per row."""
    costs = CostTable.build(graph, cluster)
    rows = []
    for schedule, chunks in ROWS:
        placement = stage_placement(graph, costs, cluster.num_devices, chunks)
        result = Simulator(graph, cluster, costs, objective="pipelined", microbatches=microbatches, schedule=schedule).run(placement)
        activation = result.activation_memory
        assert activation is not None
        rows.append((schedule, chunks, result.step_time, float(activation.max()), float(activation.sum()), result.oom))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["zoo:gpt2", "zoo:bert-base"])
    parser.add_argument("--clusters", nargs="+", default=["4xT4", "4xA100-nvlink"])
    parser.add_argument("--microbatches", type=int, default=8)
    args = parser.parse_args()
    print(f"pipelined objective, M = {args.microbatches} micro-batches, stage placements (see the module doc)")
    print("| model | cluster | schedule | chunks/device | step time (ms) | peak activations, max device (MiB) | summed over devices (MiB) | OOM |")
    print("|---|---|---|---|---|---|---|---|")
    for spec in args.models:
        model = load_model(spec)
        for cluster_spec in args.clusters:
            cluster = resolve_cluster(cluster_spec, model)
            for schedule, chunks, step, peak, total, oom in compare(model.graph, cluster, args.microbatches):
                print(f"| {spec} | {cluster.name} | {schedule} | {chunks} | {1e3 * step:.1f} | {peak / 2**20:,.0f} | {total / 2**20:,.0f} | {'yes' if oom else 'no'} |")


if __name__ == "__main__":
    main()
