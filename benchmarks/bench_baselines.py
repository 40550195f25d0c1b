"""Every placement method on the shared dnn-partitioning graphs and on zoo models x presets.

Prints one table per part with, per (graph, cluster, method): the step time (objective
value, in the graph's time unit: the files' own unit for dnn-partitioning graphs, ms for zoo
models), the speed-up over one device (every op on the device where the whole graph runs
fastest, memory ignored, as the README's "one device" column), the ratio to the simulator's
lower bound, the largest per-device peak memory, OOM, and the decision time. A method that
raises `RlplaceError` shows its reason instead.

- ``shared``: the eight graphs of ``shared/data/dnn-partitioning`` with the ``throughput``
  objective, every method that works on graphs (accelerate needs a model) plus the human-expert
  split where the data has one; then local-search beside the README's local-search reference
  (it must reach it or better).
- ``zoo``: zoo models x cluster presets with the ``latency`` objective, through the same
  decision path as ``rlplace evaluate`` (`rlplace.pipeline.decide`: coarsened to 256 groups,
  simulated on the full graph), accelerate included.

    python benchmarks/bench_baselines.py [--part shared|zoo|all] [--models a,b] [--clusters x,y]
                                         [--methods m1,m2] [--data DIR] [--seed S]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rlplace.costs import CostTable
from rlplace.errors import RlplaceError
from rlplace.formats.dnn_partitioning import shared_data_dir
from rlplace.methods import METHOD_NAMES as METHODS

#: Zoo models and presets of the ``zoo`` part (models that capture in under ~30 s here).
ZOO_MODELS = ("gpt2", "bert-base", "resnet-50", "vit-base", "mlp-medium", "mixtral-tiny", "llama-1b")
PRESETS = ("4xV100-nvlink", "2x4xV100", "2xA100+2xT4", "4xT4")
#: Shared graphs: file stem, expert split (None: none in the data), README local-search max-load.
SHARED_GRAPHS = (
    ("bert24_inference__layer", "bert24_inference", 17.7776),
    ("bert24_training__layer", "bert24_training", 39.9432),
    ("resnet50_inference__layer", "resnet50_inference", 35.8893),
    ("resnet50_training__layer", "resnet50_inference", 81.6046),
    ("bert_l-3_inference__operator", None, 27.5741),
    ("bert_l-3_training__operator", None, 68.0629),
    ("bert_l-6_inference__operator", None, 39.9903),
    ("resnet50_inference__operator", None, 228.526),
)


@dataclass
class Row:
    """One (graph, cluster, method) line of the table."""

    graph: str
    cluster: str
    method: str
    step_time: float | None = None
    speedup: float | None = None
    ratio_to_bound: float | None = None
    peak_gb: float | None = None
    oom: bool | None = None
    decide_s: float | None = None
    error: str | None = None


def one_device_time(graph, cluster, objective: str) -> float:
    """Best step time with every op on one device, memory ignored (inf if no device runs all)."""
    from rlplace.simulate import Simulator

    costs = CostTable.build(graph, cluster)
    simulator = Simulator(graph, cluster, costs, objective=objective)
    times = [
        simulator.step_time(np.full(graph.num_ops, d, dtype=np.int64))
        for d in range(cluster.num_devices)
        if np.all(np.isfinite(costs.op_time[:, d]))
    ]
    return min(times) if times else math.inf


def evaluate(model, cluster, method: str, objective: str, single_time: float, scale: float, seed: int) -> Row:
    """Decide with ``method`` through `rlplace.pipeline.decide` and fill a row."""
    from rlplace.pipeline import decide

    row = Row(graph=model.graph.name, cluster=cluster.name, method=method)
    try:
        decision = decide(model, cluster, method, objective=objective, seed=seed)
    except RlplaceError as error:
        row.error = str(error)
        return row
    result = decision.result
    row.step_time = result.step_time * scale
    row.speedup = single_time / result.step_time if result.step_time > 0 and math.isfinite(single_time) else None
    row.ratio_to_bound = result.step_time / result.lower_bound if result.lower_bound > 0 else None
    row.peak_gb = float(np.max(result.peak_memory)) / 1e9
    row.oom = bool(result.oom)
    row.decide_s = decision.decide_s
    return row


def print_table(rows: list[Row], unit: str) -> None:
    header = f"{'graph':<30} {'cluster':<16} {'method':<14} {'step (' + unit + ')':>12} {'speedup':>8} {'/bound':>7} {'peak GB':>8} {'oom':>4} {'decide s':>9}"
    print(header)
    print("-" * len(header))
    for row in rows:
        prefix = f"{row.graph[:30]:<30} {row.cluster[:16]:<16} {row.method[:14]:<14}"
        if row.error is not None:
            print(f"{prefix} error: {row.error}")
            continue
        speedup = f"{row.speedup:8.2f}" if row.speedup is not None else f"{'-':>8}"
        bound = f"{row.ratio_to_bound:7.2f}" if row.ratio_to_bound is not None else f"{'-':>7}"
        print(f"{prefix} {row.step_time:12.4f} {speedup} {bound} {row.peak_gb:8.2f} {'yes' if row.oom else 'no':>4} {row.decide_s:9.3f}")
    sys.stdout.flush()


def print_summary(rows: list[Row]) -> None:
    """Per method: geometric-mean speed-up over one device (cases it solved without OOM),
    cases where it is best or within 0.1 % of the best, and median decision time."""
    cases: dict[tuple[str, str], float] = {}
    for row in rows:
        if row.error is None and not row.oom and row.step_time is not None:
            key = (row.graph, row.cluster)
            cases[key] = min(cases.get(key, math.inf), row.step_time)
    print(f"\n{'method':<14} {'solved':>7} {'geomean speed-up':>17} {'best or tied':>13} {'median decide s':>16}")
    for method in dict.fromkeys(row.method for row in rows):
        mine = [r for r in rows if r.method == method and r.error is None and not r.oom and r.speedup is not None]
        if not mine:
            print(f"{method:<14} {0:>7}")
            continue
        geomean = math.exp(sum(math.log(r.speedup) for r in mine) / len(mine))
        best = sum(1 for r in mine if r.step_time <= cases[(r.graph, r.cluster)] * 1.001)
        print(f"{method:<14} {len(mine):>7} {geomean:17.3f} {best:>13} {float(np.median([r.decide_s for r in mine])):16.3f}")
    print(f"({len(cases)} (graph, cluster) cases)")
    sys.stdout.flush()


def shared_part(data: Path, methods: list[str], seed: int) -> bool:
    """Table on the shared graphs, then local-search against the README; True if every reference is met."""
    from rlplace.load import load_model

    rows: list[Row] = []
    local_search: dict[str, float | None] = {}
    for stem, expert, _ in SHARED_GRAPHS:
        path = data / "graphs" / f"{stem}.json"
        model = load_model(str(path))
        cluster = model.cluster
        single_time = one_device_time(model.graph, cluster, "throughput")
        names = [m for m in methods if m != "accelerate"]
        expert_path = data / "human-experts" / f"{expert}_expert.json" if expert else None
        if expert_path is not None and expert_path.is_file():
            names.append(f"expert:{expert_path}")
        for method in names:
            print(f"  {stem} / {method}", file=sys.stderr, flush=True)
            row = evaluate(model, cluster, method, "throughput", single_time, 1.0, seed)
            row.graph = stem
            if method.startswith("expert:"):
                row.method = "expert"
            rows.append(row)
            if method == "local-search":
                local_search[stem] = row.step_time
    print("\nShared dnn-partitioning graphs, throughput objective (max-load, the files' time unit)\n")
    print_table(rows, "unit")
    print_summary(rows)
    if "local-search" not in methods:
        return True
    print("\nlocal-search against the README's local-search reference (max-load; lower is better)\n")
    print(f"{'graph':<30} {'rlplace':>10} {'README':>10} {'verdict':>8}")
    all_met = True
    for stem, _, reference in SHARED_GRAPHS:
        value = local_search.get(stem)
        met = value is not None and value <= reference * (1 + 1e-9)
        all_met &= met
        shown = f"{value:10.4f}" if value is not None else f"{'error':>10}"
        print(f"{stem:<30} {shown} {reference:10.4f} {'ok' if met else 'WORSE':>8}")
    return all_met


def zoo_part(models: list[str], clusters: list[str], methods: list[str], seed: int) -> None:
    from rlplace.cluster_spec import load_cluster
    from rlplace.load import load_model

    rows: list[Row] = []
    for name in models:
        print(f"  capturing zoo:{name}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            model = load_model(f"zoo:{name}")
        except RlplaceError as error:
            rows.append(Row(graph=name, cluster="-", method="-", error=f"capture failed: {error}"))
            continue
        print(f"  zoo:{name}: {model.graph.num_ops} ops in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        for preset in clusters:
            cluster = load_cluster(preset)
            single_time = one_device_time(model.graph, cluster, "latency")
            for method in methods:
                print(f"  {name} / {preset} / {method}", file=sys.stderr, flush=True)
                row = evaluate(model, cluster, method, "latency", single_time, 1e3, seed)
                row.graph = name
                rows.append(row)
    print("\nZoo models x presets, latency objective (one training step, ms)\n")
    print_table(rows, "ms")
    print_summary(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("shared", "zoo", "all"), default="all")
    parser.add_argument("--data", type=Path, default=shared_data_dir(), help="the dnn-partitioning data folder")
    parser.add_argument("--models", default=",".join(ZOO_MODELS), help="zoo models, comma-separated")
    parser.add_argument("--clusters", default=",".join(PRESETS), help="cluster presets, comma-separated")
    parser.add_argument("--methods", default=",".join(METHODS), help="methods, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; valid: {', '.join(METHODS)}")
    ok = True
    if args.part in ("shared", "all"):
        if (args.data / "graphs").is_dir():
            ok = shared_part(args.data, methods, args.seed)
        else:
            print(f"no shared data at {args.data}; skipping the shared part", file=sys.stderr)
    if args.part in ("zoo", "all"):
        zoo_part([m for m in args.models.split(",") if m], [c for c in args.clusters.split(",") if c], methods, args.seed)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
