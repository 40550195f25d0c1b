"""Speed of the step-time simulator on random layered training-like graphs, 4 devices.

Prints, per graph size, the median milliseconds per simulation and ops simulated per second
for `Simulator.step_time` (the hot path a search or an RL env calls), `Simulator.score`
(step time and memory) and `Simulator.run` (full evidence), each over random placements.

What it compares to: the target of issue 2 is <= 0.5 ms median for a 1,000-op training
graph on 4 devices on one core; ``--python`` also times the same event loop interpreted by
CPython (``NUMBA_DISABLE_JIT=1`` in a subprocess), i.e. what a plain-Python simulator of this
model costs.

Then, for the ``pipelined`` objective with M micro-batches, `Simulator.step_time` under each
pipeline schedule.

    python benchmarks/bench_simulate.py [--sizes 1000 10000] [--repeats 200] [--microbatches 4] [--python]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from rlplace.cluster import Cluster, Device
from rlplace.costs import CostTable
from rlplace.graph import OpGraph
from rlplace.objectives import SCHEDULES
from rlplace.simulate import Simulator

NUM_DEVICES = 4


def training_like_graph(num_ops: int, seed: int = 0, width: int = 4) -> OpGraph:
    """Forward layers of ``width`` ops (each reads 1-3 ops of the two layers before), a loss,
    and a mirrored backward pass: the gradient op of forward op f reads f's output (the saved
    activation) and the gradients of f's consumers. Times are given (ms-scale, lognormal);
    edges carry 1-64 MB tensors, so transfers cost about as much as ops."""
    rng = np.random.default_rng(seed)
    forward = max(1, (num_ops - 1) // 2)
    ops = []
    edges = []
    layer_of = np.arange(forward) // width
    consumers: list[list[int]] = [[] for _ in range(forward)]
    for f in range(forward):
        ops.append({"name": f"f{f}", "times": {"accelerator": float(rng.lognormal(np.log(5e-4), 0.8))}, "output_bytes": float(rng.integers(1, 64) * 2**20)})
        candidates = np.flatnonzero((layer_of < layer_of[f]) & (layer_of >= layer_of[f] - 2))
        if candidates.size:
            for src in rng.choice(candidates, size=min(candidates.size, int(rng.integers(1, 4))), replace=False):
                edges.append({"src": f"f{src}", "dst": f"f{f}", "bytes": ops[src]["output_bytes"]})
                consumers[int(src)].append(f)
    ops.append({"name": "loss", "times": {"accelerator": 1e-5}, "output_bytes": 4.0})
    for f in range(forward):
        if not consumers[f]:
            edges.append({"src": f"f{f}", "dst": "loss", "bytes": ops[f]["output_bytes"]})
    for f in reversed(range(forward)):
        ops.append({"name": f"b{f}", "times": {"accelerator": 2 * ops[f]["times"]["accelerator"]}, "output_bytes": ops[f]["output_bytes"], "is_backward": True})
        edges.append({"src": f"f{f}", "dst": f"b{f}", "bytes": ops[f]["output_bytes"]})
        for c in consumers[f] or ["loss"]:
            src = "loss" if c == "loss" else f"b{c}"
            edges.append({"src": src, "dst": f"b{f}", "bytes": ops[f]["output_bytes"]})
    while len(ops) < num_ops:
        ops.append({"name": f"opt{len(ops)}", "times": {"accelerator": 1e-5}, "is_backward": True})
        edges.append({"src": "b0", "dst": ops[-1]["name"], "bytes": 4.0})
    return OpGraph.build(ops, edges, name=f"training-like-{num_ops}", time_classes=("accelerator",))


def four_gpus() -> Cluster:
    devices = [Device(f"gpu{i}", "custom", "accelerator", 15e12, 120e12, 32e9, 900e9, host=i // 2) for i in range(NUM_DEVICES)]
    return Cluster.build("4-gpu", devices, intra_host=(150e9, 5e-6), inter_host=(12.5e9, 20e-6))


def median_ms(call, placements: list[np.ndarray]) -> float:
    call(placements[0])
    times = []
    for p in placements:
        begin = time.perf_counter()
        call(p)
        times.append(time.perf_counter() - begin)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--microbatches", type=int, default=4, help="M of the pipelined rows (1: skip them)")
    parser.add_argument("--python", action="store_true", help="also time the interpreted event loop (1,000 ops only; slow)")
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    print(f"step-time simulator, random layered training-like graphs, {NUM_DEVICES} devices, random placements, median of {args.repeats}")
    print(f"{'ops':>7} {'edges':>7} {'init ms':>8} {'step_time ms':>13} {'ops/s':>12} {'score ms':>9} {'run ms':>8}")
    for size in args.sizes:
        graph = training_like_graph(size)
        cluster = four_gpus()
        costs = CostTable.build(graph, cluster)
        begin = time.perf_counter()
        simulator = Simulator(graph, cluster, costs)
        init_ms = 1e3 * (time.perf_counter() - begin)
        placements = [rng.integers(0, NUM_DEVICES, graph.num_ops) for _ in range(args.repeats)]
        step_ms = median_ms(simulator.step_time, placements)
        score_ms = median_ms(simulator.score, placements[: max(1, args.repeats // 4)])
        run_ms = median_ms(simulator.run, placements[: max(1, args.repeats // 4)])
        print(f"{graph.num_ops:>7} {graph.num_edges:>7} {init_ms:>8.1f} {step_ms:>13.3f} {graph.num_ops / step_ms * 1e3:>12,.0f} {score_ms:>9.3f} {run_ms:>8.3f}")
    print("target (issue 2): step_time <= 0.5 ms median at 1,000 ops on one core")
    if args.microbatches > 1:
        print(f"pipelined, M = {args.microbatches}: step_time ms per schedule (1f1b and interleaved-1f1b build the placement's order per call)")
        for size in args.sizes:
            graph = training_like_graph(size)
            cluster = four_gpus()
            costs = CostTable.build(graph, cluster)
            placements = [rng.integers(0, NUM_DEVICES, graph.num_ops) for _ in range(max(1, args.repeats // 4))]
            cells = []
            for schedule in SCHEDULES:
                simulator = Simulator(graph, cluster, costs, objective="pipelined", microbatches=args.microbatches, schedule=schedule)
                cells.append(f"{schedule} {median_ms(simulator.step_time, placements):.3f}")
            print(f"{graph.num_ops:>7}  " + "  ".join(cells))
    if args.python:
        code = (
            "import time, numpy as np, statistics;"
            "from benchmarks.bench_simulate import training_like_graph, four_gpus;"
            "from rlplace.costs import CostTable; from rlplace.simulate import Simulator;"
            "g = training_like_graph(1000); c = four_gpus(); s = Simulator(g, c, CostTable.build(g, c));"
            "rng = np.random.default_rng(1); ts = [];"
            "exec('for _ in range(5):\\n p = rng.integers(0, 4, g.num_ops); t = time.perf_counter(); s.step_time(p); ts.append(time.perf_counter() - t)');"
            "print(f'interpreted (NUMBA_DISABLE_JIT=1), 1000 ops: {1e3 * statistics.median(ts):.1f} ms per step_time')"
        )
        env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
        subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


if __name__ == "__main__":
    main()
