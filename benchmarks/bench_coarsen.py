"""Capture a large training graph and coarsen it: seconds for each step and peak memory.

Default: LLaMA-7B (zoo ``llama-7b``), batch 1, sequence 2048, training with Adam, coarsened
to at most 256 groups (target: capture + coarsening <= 30 s, peak RSS <= 3 GB). Wall and
CPU seconds are both printed: on a shared machine the CPU time is the honest one. Also reports
coarsening time per method and the shape of the result (groups, coarse edges, colocation
classes of the coarse graph, largest group's share of the FLOPs).

    python benchmarks/bench_coarsen.py [--model zoo:llama-7b] [--max-groups 256] [--methods auto,chain,topo,metis]
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings

import numpy as np

from rlplace.coarsen import coarsen
from rlplace.graph import NO_CLASS
from rlplace.load import load_model


def peak_rss_gb() -> float:
    """Peak resident set size of this process so far, GB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="zoo:llama-7b")
    parser.add_argument("--max-groups", type=int, default=256)
    parser.add_argument("--methods", default="auto,chain,topo,metis")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    started, cpu_started = time.perf_counter(), time.process_time()
    graph = load_model(args.model).graph
    capture_s, capture_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    print(
        f"model {args.model}: {graph.num_ops} ops, {graph.num_edges} edges, {graph.flops.sum() / 1e12:.1f} TFLOP per step, backward={graph.meta.get('backward')}"
    )
    print(f"capture        {capture_s:7.2f} s   (CPU {capture_cpu:.2f} s)   peak RSS {peak_rss_gb():.2f} GB")

    first_total, first_cpu = None, 0.0
    for method in args.methods.split(","):
        started, cpu_started = time.perf_counter(), time.process_time()
        result = coarsen(graph, args.max_groups, method=method)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        coarse = result.graph
        classes = coarse.coloc[coarse.coloc != NO_CLASS]
        sizes = np.bincount(classes) if classes.size else np.zeros(1, dtype=np.int64)
        share = float(coarse.flops.max() / max(coarse.flops.sum(), 1.0))
        print(
            f"coarsen {method:6s} {seconds:7.2f} s   (CPU {cpu:.2f} s) -> {result.method}: {coarse.num_ops} groups, {coarse.num_edges} edges, "
            f"{sizes.size if classes.size else 0} coarse colocation classes (largest {int(sizes.max())} groups), largest group {100 * share:.1f}% of FLOPs"
        )
        if first_total is None:
            first_total, first_cpu = capture_s + seconds, capture_cpu + cpu
    print(f"capture + coarsen ({args.methods.split(',')[0]}) {first_total:.2f} s (CPU {first_cpu:.2f} s)   peak RSS {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
