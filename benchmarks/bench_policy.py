"""Zero-shot quality and decision time of the trained policy on held-out (model, cluster) pairs.

For every pair of the checkpoint's held-out models and held-out clusters (or those given on
the command line) it prints the simulated step time (latency objective, full graph) of:

- ``greedy``: the policy's most likely placement (no search at all);
- ``best-of-K``: the best of greedy and K sampled placements;
- ``policy``: best-of-K then a short local search (what ``rlplace place --method policy`` runs);
- baselines through ``rlplace.pipeline.decide`` (as ``rlplace place --method NAME`` runs them):
  m-topo, heft, dp and local-search by default;

each with its decision time in seconds, then a summary: the geometric mean of each method's
step time relative to m-topo (below 1 is faster) and how often the policy is at least as fast
as each baseline. Graphs above 256 ops are coarsened first, as the CLI does. The first
policy call also loads the checkpoint; that cold time is printed separately.

    python benchmarks/bench_policy.py [--checkpoint checkpoints/default] [--samples 16]
        [--models zoo:gpt2 ...] [--clusters 4xL4 ...] [--methods m-topo,heft,dp,local-search] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from rlplace.agents.data import load_graph, resolve_cluster_spec
from rlplace.agents.infer import default_checkpoint_dir, load_policy, place_with_policy
from rlplace.costs import CostTable
from rlplace.load import LoadedModel
from rlplace.pipeline import decide, working_graph
from rlplace.simulate import simulate

MAX_GROUPS = 256  # the CLI's coarsening threshold (rlplace.pipeline.decide's default)


def policy_row(graph: Any, cluster: Any, checkpoint: Any, samples: int, search: int) -> tuple[float, float, str]:
    """(full-graph step time, decision seconds, source) of one policy variant, as the CLI would run it."""
    started = time.perf_counter()
    work, coarsening = working_graph(graph, MAX_GROUPS)
    decision = place_with_policy(work, cluster, checkpoint=checkpoint, samples=samples, search_evaluations=search)
    placement = coarsening.expand(decision.placement) if coarsening is not None else decision.placement
    decide_s = time.perf_counter() - started
    costs = CostTable.build(graph, cluster)
    result = simulate(graph, cluster, costs, np.asarray(placement), objective="latency")
    step_time = math.inf if result.oom else float(result.step_time)
    return step_time, decide_s, decision.source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(default_checkpoint_dir()))
    parser.add_argument("--models", nargs="+", help="MODEL specs (default: the checkpoint's held-out models)")
    parser.add_argument("--clusters", nargs="+", help="cluster specs (default: the checkpoint's held-out clusters)")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--search", type=int, default=200, help="local-search simulations after best-of-K")
    parser.add_argument("--methods", default="m-topo,heft,dp,local-search")
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args()

    started = time.perf_counter()
    checkpoint = load_policy(args.checkpoint)
    load_s = time.perf_counter() - started
    models = args.models or checkpoint.heldout.get("models", [])
    clusters = args.clusters or checkpoint.heldout.get("clusters", [])
    baselines = [m for m in args.methods.split(",") if m]
    training = checkpoint.training
    print(f"checkpoint {args.checkpoint}: trained {training.get('timesteps')} steps in {training.get('wall_s')} s; loaded in {load_s:.2f} s")
    print(f"held-out models: {', '.join(models)}\nheld-out clusters: {', '.join(clusters)}\n")

    variants = [("greedy", 0, 0), (f"best-of-{args.samples}", args.samples, 0), ("policy", args.samples, args.search)]
    names = [v[0] for v in variants] + baselines
    header = f"{'model':34s} {'cluster':14s} {'ops':>5s} " + " ".join(f"{n:>13s}" for n in names)
    print("step time in ms (decision s)")
    print(header)
    rows: list[dict[str, Any]] = []
    cold_s = None
    for spec in models:
        graph, own_cluster = load_graph(spec)
        for cluster_spec in clusters:
            cluster = own_cluster or resolve_cluster_spec(cluster_spec)
            row: dict[str, Any] = {"model": spec, "cluster": cluster.name, "ops": graph.num_ops, "times": {}, "decide_s": {}}
            for name, samples, search in variants:
                step_time, decide_s, _ = policy_row(graph, cluster, checkpoint, samples, search)
                if cold_s is None:
                    cold_s = decide_s
                row["times"][name], row["decide_s"][name] = step_time, decide_s
            for method in baselines:
                try:
                    decision = decide(LoadedModel(spec, graph), cluster, method, objective="latency", max_groups=MAX_GROUPS)
                    step_time = math.inf if decision.result.oom else float(decision.result.step_time)
                    row["times"][method], row["decide_s"][method] = step_time, decision.decide_s
                except Exception as error:  # a baseline that fails on a pair is reported, not fatal
                    row["times"][method], row["decide_s"][method] = math.inf, math.nan
                    row.setdefault("errors", {})[method] = str(error)
            rows.append(row)
            cells = " ".join(f"{row['times'][n] * 1e3:7.1f} ({row['decide_s'][n]:4.2f})" if math.isfinite(row["times"][n]) else f"{'failed':>13s}" for n in names)
            print(f"{spec[:34]:34s} {cluster.name[:14]:14s} {graph.num_ops:5d} {cells}", flush=True)

    print("\nsummary over", len(rows), "pairs")
    for name in names:
        ratios = [r["times"][name] / r["times"]["m-topo"] for r in rows if "m-topo" in r["times"] and math.isfinite(r["times"][name]) and math.isfinite(r["times"]["m-topo"])]
        times = [r["decide_s"][name] for r in rows if math.isfinite(r["decide_s"].get(name, math.nan))]
        geo = math.exp(float(np.mean(np.log(ratios)))) if ratios else math.nan
        print(f"  {name:14s} step time / m-topo (geo. mean) {geo:6.3f}   median decision {np.median(times) if times else math.nan:6.2f} s   max {max(times) if times else math.nan:6.2f} s")
    for variant in ("greedy", "policy"):
        for method in baselines:
            wins = sum(1 for r in rows if r["times"][variant] <= r["times"][method] * (1 + 1e-9))
            print(f"  {variant} at least as fast as {method}: {wins}/{len(rows)}")
    print(f"  first policy decision (cold, checkpoint already loaded): {cold_s:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"checkpoint": args.checkpoint, "load_s": load_s, "rows": rows}, indent=1, default=float))


if __name__ == "__main__":
    main()
