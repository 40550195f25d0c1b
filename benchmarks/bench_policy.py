"""The improvement policy against the classic methods on the held-out split, at equal wall time.

Cases come from ``rlplace.agents.improve_data``'s held-out models (synthetic fork-join family,
dnn-partitioning resnet50 family) on its held-out clusters, in four regimes:
(A) ``latency``; (B) ``pipelined`` M=4 and M=8, and ``throughput``; (C) memory-bound
(`memory_bound` capacities: no device holds the model); (D) mixed and two-host clusters.

Per case and seed:

- every fast classic method (``local-search``'s start methods) and ``local-search`` at its
  defaults (2000 simulations) through ``rlplace.methods.run_method``; the best of them is the
  case's *best classic*;
- at equal wall time and cores, every search given the same decision budget B (``--budget-s``, default
  the product's `rlplace.policy_method.DEFAULT_BUDGET_S`; the start placements count against
  it): ``policy`` (`rlplace.policy_method.search`), ``local-search`` with ``budget_s=B``
  (*LS@B*, its own code), and the ablation: the policy's search with a uniform random move
  order (``search(random_order=True)``), which is plain local search in the policy's search
  loop;
- the ranking's sample efficiency: the guided search alone (from the starts, no local-search
  phase), with the policy's order and with random order, 2000 simulations each: simulations
  to reach local-search's default final step time (the quarter-of-the-simulations target).

Every step time is the simulator's on the graph the methods decide on (graphs above 256 ops
would be coarsened as the CLI does; the held-out ones are below that). Prints one row per case
and seed, then per regime (and over B-D): geometric mean and worst of policy / best classic,
geomeans of policy / LS@B and policy / ablation, the median simulations to local-search's
quality, the geomean of the objective's lower bound over the best classic (LB/best: how far
below the best classic any method could possibly go), 90 % intervals of the overall and B-D
geomeans of policy / best classic and policy / ablation with whole cases resampled
(`case_bootstrap_interval`), the cases where a classic method placed
and the policy did not, and the policy's decision time. Also prints the cold-start cost (importing torch + torch_geometric, loading the
checkpoint). Timings come from a shared machine: noisy, and a loaded machine gives every
search fewer simulations in B.

``--validation`` runs the same table on `VALIDATION` (training families at unseen seeds and
sizes, training clusters): the slice the search settings are tuned on; ``--wide`` runs
`WIDE_VALIDATION`, ten more such cases (mostly pipelined and mixed) for a wider check of a
search setting; ``--families`` runs `FAMILY_VALIDATION`, zoo model families no training set
holds (gpt2, vit-base, t5-small, regnet), to judge a wider training set. ``--no-blocks`` runs the policy and the ablation without their first phase, the block-level search. ``--no-polish`` runs the policy and the ablation without the guided search's
final device exchange, ``--group-kick-share S`` with that share of group kicks (0: none).
``--workers W`` runs W searches side by side (`rlplace.portfolio`) for the policy, LS@B and the
ablation alike (default: the policy's, one per core up to 4); the best classic stays each
method at its own defaults (local-search: one search). ``--first-seed N`` runs seeds N, N+1,
...: runs of one code at the default seeds land in the same basins run after run, so a second
set of seeds is what shows how much a comparison of two codes owes to their random streams.

    python benchmarks/bench_policy.py [--checkpoint checkpoints/default] [--seeds 3] [--first-seed 0] [--budget-s B] [--workers W] [--quick] [--validation | --wide | --families] [--no-polish] [--no-blocks] [--group-kick-share S] [--json FILE]
    python benchmarks/bench_policy.py --report FILE [FILE ...]   # the summary of earlier --json runs, again (rows pooled)
    python benchmarks/bench_policy.py --report FILE --bounds-now   # ... with today's lower bound
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REGIMES = {
    "A": "latency",
    "B": "pipelined M=4/8, throughput",
    "C": "memory-bound",
    "D": "mixed / two-host",
}


def held_out_cases(quick: bool) -> list[tuple[str, Any]]:
    """(regime, Case) pairs of the held-out split."""
    from rlplace.agents.data import resolve_cluster_spec
    from rlplace.agents.improve_data import DNN_PARTITIONING, memory_bound
    from rlplace.envs.improve_env import make_case
    from rlplace.load import load_model

    def graph(spec: str):
        return load_model(spec).graph

    fj60 = graph("synthetic:fork-join:n=60:seed=900:training=true")
    fj120 = graph("synthetic:fork-join:n=120:seed=901:branches=6")
    fj200 = graph("synthetic:fork-join:n=200:seed=902:branches=3")
    l4, two_host, mixed, big = (resolve_cluster_spec(c) for c in ("4xL4", "2x4xV100", "1xA100+3xT4", "2x8xA100"))
    cases = [
        ("A", make_case("fork-join-60t@4xL4", fj60, l4, objective="latency", max_nodes=256)),
        ("A", make_case("fork-join-120@4xL4", fj120, l4, objective="latency", max_nodes=256)),
        ("B", make_case("fork-join-120@4xL4 M=4", fj120, l4, objective="pipelined", microbatches=4, max_nodes=256)),
        ("B", make_case("fork-join-60t@2x4xV100 M=8", fj60, two_host, objective="pipelined", microbatches=8, max_nodes=256)),
        ("B", make_case("fork-join-200@2x8xA100 thr", fj200, big, objective="throughput", max_nodes=256)),
        ("C", make_case("fork-join-60t@4xL4[mem]", fj60, memory_bound(l4, fj60, "latency"), objective="latency", max_nodes=256)),
        ("C", make_case("fork-join-120@1xA100+3xT4[mem] thr", fj120, memory_bound(mixed, fj120, "throughput"), objective="throughput", max_nodes=256)),
        ("D", make_case("fork-join-120@1xA100+3xT4", fj120, mixed, objective="latency", max_nodes=256)),
        ("D", make_case("fork-join-200@2x4xV100 M=4", fj200, two_host, objective="pipelined", microbatches=4, max_nodes=256)),
    ]
    resnet = DNN_PARTITIONING / "resnet50_training__layer.json"
    if resnet.is_file():
        loaded = load_model(str(resnet))
        cases.append(("B", make_case("resnet50-train-layer (own cluster) thr", loaded.graph, loaded.cluster, objective="throughput", max_nodes=256)))
    return cases[::3] if quick else cases


#: The tuning slice: training families (layered, series-parallel) at seeds and sizes never
#: trained on, on training clusters (presets, and generated clusters of unseen seeds). Search settings are chosen here, never on the held-out split.
VALIDATION = (
    ("A", "synthetic:layered:n=120:seed=310:training=true", "4xT4", "latency", 1, False),
    ("B", "synthetic:series-parallel:n=100:seed=311", "2xA100+2xT4", "pipelined", 4, False),
    ("B", "synthetic:layered:n=80:seed=312:width=4", "8xA100-nvlink", "throughput", 1, False),
    ("D", "synthetic:series-parallel:n=150:seed=313:training=true", "2xV100+4xT4", "latency", 1, False),
    ("C", "synthetic:layered:n=150:seed=314:training=true", "4xV100-nvlink", "latency", 1, True),
    ("C", "synthetic:series-parallel:n=120:seed=315", "1xH100+3xA10G", "throughput", 1, True),
    ("B", "synthetic:layered:n=200:seed=316", "2xV100+4xT4", "pipelined", 8, False),
    ("D", "synthetic:series-parallel:n=90:seed=317:training=true", "1xH100+3xA10G", "pipelined", 4, False),
    # generated clusters of seeds never trained on (training draws gen:0 ... gen:N-1)
    ("D", "synthetic:layered:n=120:seed=318:training=true", "gen:1004", "latency", 1, False),
    ("B", "synthetic:series-parallel:n=100:seed=319", "gen:1010", "pipelined", 8, False),
    ("D", "synthetic:layered:n=90:seed=320", "gen:1012", "throughput", 1, False),
)


#: A wider check of search settings, built after the slice above had been used many times:
#: the same training families at other seeds and sizes, on training clusters and generated
#: clusters of unseen seeds (never the held-out family or clusters); mostly pipelined and mixed.
WIDE_VALIDATION = (
    ("B", "synthetic:layered:n=150:seed=401", "4xV100-nvlink", "pipelined", 4, False),
    ("B", "synthetic:series-parallel:n=180:seed=402", "8xA100-nvlink", "pipelined", 8, False),
    ("D", "synthetic:layered:n=200:seed=403:training=true", "2xA100+2xT4", "latency", 1, False),
    ("D", "synthetic:series-parallel:n=160:seed=404", "gen:1030", "pipelined", 4, False),
    ("D", "synthetic:layered:n=120:seed=405", "gen:1031", "pipelined", 8, False),
    ("C", "synthetic:series-parallel:n=140:seed=406:training=true", "2xV100-pcie", "latency", 1, True),
    ("B", "synthetic:layered:n=100:seed=407:width=6", "2xV100+4xT4", "throughput", 1, False),
    ("D", "synthetic:series-parallel:n=200:seed=408:training=true", "1xH100+3xA10G", "latency", 1, False),
    ("B", "synthetic:series-parallel:n=120:seed=409", "4xT4", "pipelined", 8, False),
    ("D", "synthetic:layered:n=180:seed=410:training=true", "gen:1032", "pipelined", 4, False),
)


#: Model families never trained on (the zoo models `rlplace.agents.data.HELDOUT_MODELS` names,
#: outside every improvement-policy training set, resnet excepted: that one is held out for
#: good) on training clusters and generated clusters of unseen seeds: judges whether a wider
#: training set helps on families it has not seen, without touching the held-out split.
FAMILY_VALIDATION = (
    ("A", "zoo:gpt2", "4xT4", "latency", 1, False),
    ("B", "zoo:gpt2", "2xV100+4xT4", "pipelined", 8, False),
    ("B", "zoo:vit-base", "4xV100-nvlink", "pipelined", 4, False),
    ("B", "zoo:t5-small", "8xA100-nvlink", "throughput", 1, False),
    ("B", "zoo:regnet-y-040", "4xT4", "pipelined", 4, False),
    ("C", "zoo:regnet-y-040", "2xV100-pcie", "latency", 1, True),
    ("C", "zoo:vit-base", "1xH100+3xA10G", "throughput", 1, True),
    ("D", "zoo:t5-small", "2xA100+2xT4", "pipelined", 4, False),
    ("D", "zoo:regnet-y-040", "gen:1040", "pipelined", 8, False),
    ("D", "zoo:gpt2", "1xH100+3xA10G", "latency", 1, False),
)


#: Throughput-only cases of the training families at seeds never used elsewhere, on training
#: clusters and a generated cluster of an unseen seed, mostly memory-bound: the other sets hold
#: six `throughput` cases, most of which every method solves alike; built in the twelfth
#: session to screen the `throughput` phase.
THROUGHPUT_VALIDATION = (
    ("C", "synthetic:layered:n=160:seed=608:training=true", "1xH100+3xA10G", "throughput", 1, True),
    ("C", "synthetic:layered:n=140:seed=601:training=true", "2xA100+2xT4", "throughput", 1, True),
    ("C", "synthetic:series-parallel:n=150:seed=602", "4xT4", "throughput", 1, True),
    ("C", "synthetic:layered:n=100:seed=603:width=5", "2xV100+4xT4", "throughput", 1, True),
    ("C", "synthetic:series-parallel:n=200:seed=604:training=true", "gen:1050", "throughput", 1, True),
    ("B", "synthetic:series-parallel:n=160:seed=605", "2xV100+4xT4", "throughput", 1, False),
    ("D", "synthetic:layered:n=120:seed=606", "1xH100+3xA10G", "throughput", 1, False),
    ("C", "synthetic:layered:n=200:seed=607", "2xA100+2xT4", "throughput", 1, True),
)


def validation_cases(quick: bool, specs: tuple[tuple[str, str, str, str, int, bool], ...] = VALIDATION) -> list[tuple[str, Any]]:
    """(regime, Case) pairs of ``specs`` (`VALIDATION`, `WIDE_VALIDATION` or
    `FAMILY_VALIDATION`; memory-bound ones with `memory_bound` capacities; zoo models captured
    once into the training graph cache)."""
    from rlplace.agents.data import load_graph
    from rlplace.agents.improve_data import memory_bound, resolve_training_cluster
    from rlplace.envs.improve_env import make_case

    cases = []
    for regime, model, cluster_spec, objective, m, tight in specs:
        graph, _ = load_graph(model)
        cluster = resolve_training_cluster(cluster_spec)
        if tight:
            cluster = memory_bound(cluster, graph, objective)
        label = f"{model.split(':')[1]}-{graph.num_ops}@{cluster.name} {objective}" + (f" M={m}" if objective == "pipelined" else "")
        cases.append((regime, make_case(label, graph, cluster, objective=objective, microbatches=m, max_nodes=256)))
    return cases[::3] if quick else cases


def sims_to_reach(curve: list[tuple[int, float, float]], target: float) -> float:
    """Simulations after which the curve's best step time is <= target (inf if never)."""
    for simulations, _, best in curve:
        if best <= target * (1 + 1e-9):
            return float(simulations)
    return math.inf


def classic_step_times(case: Any, seed: int, scored: Callable[[np.ndarray], float]) -> tuple[dict[str, float], float]:
    """Step time (``scored``: inf when over memory) of every fast classic method
    (``local-search``'s start methods) and of ``local-search`` at its defaults on ``case`` with
    ``seed``, through `rlplace.methods.run_method` (a fast method that raises is absent), and
    local-search's decision seconds. The smallest is the case's *best classic*."""
    from rlplace.baselines.local_search import START_METHODS
    from rlplace.methods import run_method

    inputs = {"objective": case.objective, "seed": seed, "microbatches": case.microbatches}
    times: dict[str, float] = {}
    for name in START_METHODS:
        try:
            times[name] = scored(run_method(name, case.graph, case.cluster, case.costs, **inputs).placement)
        except Exception:  # a method without a placement is simply absent
            continue
    ls = run_method("local-search", case.graph, case.cluster, case.costs, **inputs)
    times["local-search"] = scored(ls.placement)
    return times, ls.decide_s


def run_case(
    case: Any, seed: int, checkpoint: str | None, budget_s: float, polish: bool = True, group_kick_share: float | None = None, workers: int = 1, blocks: bool = True
) -> dict[str, Any]:
    """One case and seed: the classic methods at their defaults, then ``policy``, ``local-search``
    and the ablation, each given the same decision budget ``budget_s`` (seconds, starts included)
    and the same ``workers`` (searches side by side, `rlplace.portfolio`);
    ``polish`` switches the guided search's final device exchange and ``group_kick_share`` sets
    its share of group kicks (None: the default) and ``blocks`` their block-level first phase,
    for the policy and the ablation alike."""
    import torch

    from rlplace.agents.guided_search import guided_search, scorer_ranker
    from rlplace.baselines.local_search import DEFAULT_EVALUATIONS, START_METHODS, start_placements
    from rlplace.envs.improve_state import build_move_problem
    from rlplace.methods import run_method
    from rlplace.policy_method import load_policy, search
    from rlplace.simulate import lower_bound

    problem = build_move_problem(case.graph, case.cluster, case.costs, objective=case.objective, microbatches=case.microbatches)

    def scored(placement: np.ndarray) -> float:
        step_time, overflow = problem.simulator.score(np.asarray(placement))
        return step_time if overflow == 0 else math.inf

    inputs = {"objective": case.objective, "seed": seed, "microbatches": case.microbatches}
    times, ls_decide_s = classic_step_times(case, seed, scored)

    def timed_search(**options: Any) -> tuple[float, float, Any]:
        began = time.perf_counter()
        placement, stats = search(
            case.graph, case.cluster, case.costs, **inputs, budget_s=budget_s, polish=polish, group_kick_share=group_kick_share, workers=workers, blocks=blocks, **options
        )
        return scored(placement), time.perf_counter() - began, stats

    policy_time, policy_s, policy_stats = timed_search(checkpoint=checkpoint)
    ablation_time, ablation_s, ablation_stats = timed_search(random_order=True)
    ls_budget = run_method("local-search", case.graph, case.cluster, case.costs, **inputs, budget_s=budget_s, workers=workers)
    # Sample efficiency of the ranking alone: the guided search from the starts (no local-search
    # phase), with the policy's order and with random order, 2000 simulations each.
    starts = [problem.units.contract(p) for p in start_placements(case.graph, case.cluster, case.costs, methods=START_METHODS, **inputs).values()]
    torch.set_num_threads(1)
    kicks = {} if group_kick_share is None else {"group_kick_share": group_kick_share}
    _, _, policy_curve = guided_search(problem, starts, scorer_ranker(load_policy(checkpoint)), evaluations=DEFAULT_EVALUATIONS, polish=polish, seed=seed, **kicks)
    _, _, ablation_curve = guided_search(problem, starts, None, evaluations=DEFAULT_EVALUATIONS, polish=polish, seed=seed, **kicks)
    best_name = min(times, key=lambda k: times[k])
    return {
        "best_classic": best_name,
        "best_time": times[best_name],
        "lower_bound": lower_bound(case.graph, case.cluster, case.costs, objective=case.objective, microbatches=case.microbatches),
        "local_search": times["local-search"],
        "local_search_s": ls_decide_s,
        "policy": policy_time,
        "policy_decide_s": policy_s,
        "ablation": ablation_time,
        "ablation_decide_s": ablation_s,
        "local_search_budget": scored(ls_budget.placement),
        "local_search_budget_s": ls_budget.decide_s,
        "budget_s": budget_s,
        "ls_sims": DEFAULT_EVALUATIONS,
        "policy_sims_to_ls": sims_to_reach(policy_curve.curve, times["local-search"]),
        "ablation_sims_to_ls": sims_to_reach(ablation_curve.curve, times["local-search"]),
        "policy_sims": policy_stats.simulations,
        "ablation_sims": ablation_stats.simulations,
    }


#: The regimes each summary row covers ("B-D": every regime but latency).
SUMMARY_REGIMES = {**{regime: (regime,) for regime in REGIMES}, "all": tuple(REGIMES), "B-D": ("B", "C", "D")}


def rows_of(rows: list[dict[str, Any]], summary: str) -> list[dict[str, Any]]:
    """The rows a summary row (a regime letter, ``all`` or ``B-D``) covers."""
    return [row for row in rows if row["regime"] in SUMMARY_REGIMES[summary]]


def geomean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v) and v > 0]
    return float(np.exp(np.mean(np.log(finite)))) if finite else math.nan


def case_bootstrap_interval(rows: list[dict[str, Any]], ratio: Callable[[dict[str, Any]], float], level: float = 0.9, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """``level`` interval of the geomean of ``ratio(row)`` over ``rows``, by resampling whole
    cases (a case's seeds stay together: they share the graph and cluster, so they are not
    independent draws), ``draws`` times with a fixed seed. It says how much the geomean would
    move with other cases of the same kind, not the timing noise of one run."""
    by_case: dict[str, list[float]] = {}
    for row in rows:
        value = ratio(row)
        if math.isfinite(value) and value > 0:
            by_case.setdefault(row["case"], []).append(math.log(value))
    groups = list(by_case.values())
    if not groups:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(draws):
        picked = [groups[i] for i in rng.integers(len(groups), size=len(groups))]
        means.append(np.mean([v for group in picked for v in group]))
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(np.exp(low)), float(np.exp(high))


def print_summary(rows: list[dict[str, Any]]) -> None:
    """The per-regime table, intervals, missing placements and decision times of ``rows``
    (what the bench prints after its per-case lines, and what ``--report`` prints again)."""
    print(
        f"{'regime':28} {'policy/best geomean':>19} {'worst':>6} {'policy/LS@B':>11} {'policy/ablation':>15} {'med sims->LS (pol, abl, LS=2000)':>33} "
        f"{'LB/best':>7}"
    )
    for regime in [*REGIMES, "all", "B-D"]:
        chosen = rows_of(rows, regime)
        if not chosen:
            continue
        ratios = [r["policy"] / r["best_time"] for r in chosen]
        name = regime if regime in ("all", "B-D") else f"({regime}) {REGIMES[regime]}"
        print(
            f"{name:28} {geomean(ratios):19.3f} {max(ratios):6.3f} {geomean([r['policy'] / r['local_search_budget'] for r in chosen]):11.3f} "
            f"{geomean([r['policy'] / r['ablation'] for r in chosen]):15.3f} "
            f"{np.median([r['policy_sims_to_ls'] for r in chosen]):>16.0f}, {np.median([r['ablation_sims_to_ls'] for r in chosen]):.0f} "
            f"{geomean([r['lower_bound'] / r['best_time'] for r in chosen]):>16.3f}"
        )
    for regime in ("all", "B-D"):
        chosen = rows_of(rows, regime)
        if chosen:
            best_low, best_high = case_bootstrap_interval(chosen, lambda r: r["policy"] / r["best_time"])
            abl_low, abl_high = case_bootstrap_interval(chosen, lambda r: r["policy"] / r["ablation"])
            print(f"90 % interval, cases resampled ({regime}): policy/best [{best_low:.3f}, {best_high:.3f}], policy/ablation [{abl_low:.3f}, {abl_high:.3f}]")
    print("LB/best: the objective's placement-independent lower bound over the best classic step time (rlplace.simulate.lower_bound);")
    print("no method can get policy/best below it, and it is loose where communication or memory binds")
    missing = sum(1 for r in rows if not math.isfinite(r["policy"]) and math.isfinite(r["best_time"]))
    print(f"cases where a classic method placed and policy did not: {missing}")
    decide = [r["policy_decide_s"] for r in rows]
    print(f"decision time of policy (warm process): median {np.median(decide):.2f} s, max {max(decide):.2f} s; local-search at 2000 simulations: median {np.median([r['local_search_s'] for r in rows]):.2f} s")
    sims = [r["policy_sims"] for r in rows if "policy_sims" in r]
    if sims:  # the host's speed: runs on one VM differ by up to 3x here, worth about 0.5 % of B-D
        print(f"simulations per policy decision: median {np.median(sims):.0f} (compare runs only at similar counts)")


def rebound(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` of an earlier run with each ``lower_bound`` recomputed by today's
    `rlplace.simulate.lower_bound` (the cases looked up by label in the held-out split and the
    three validation sets); prints, per case, the geomean of LB/best over its seeds then and now."""
    from rlplace.simulate import lower_bound

    cases = {case.label: case for _, case in held_out_cases(False)}
    if any(row["case"] not in cases for row in rows):  # the validation sets only when needed (zoo captures)
        for specs in (VALIDATION, WIDE_VALIDATION, FAMILY_VALIDATION):
            cases.update({case.label: case for _, case in validation_cases(False, specs)})
    bounds: dict[str, float] = {}
    updated, per_case = [], defaultdict(list)
    for row in rows:
        case = cases.get(row["case"])
        if case is None:
            raise SystemExit(f"case {row['case']!r} is in none of the bench's sets; cannot recompute its bound")
        if case.label not in bounds:
            bounds[case.label] = lower_bound(case.graph, case.cluster, case.costs, objective=case.objective, microbatches=case.microbatches)
        per_case[(row["regime"], row["case"])].append((row["lower_bound"] / row["best_time"], bounds[case.label] / row["best_time"]))
        updated.append({**row, "lower_bound": bounds[case.label]})
    print(f"{'regime':6} {'case':44} {'LB/best then':>12} {'now':>6}")
    for (regime, label), pairs in per_case.items():
        print(f"{regime:6} {label[:44]:44} {geomean([a for a, _ in pairs]):12.3f} {geomean([b for _, b in pairs]):6.3f}")
    print()
    return updated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="policy checkpoint folder (default checkpoints/default)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--first-seed", type=int, default=0, help="seeds FIRST .. FIRST+SEEDS-1 (default 0: the targets' seeds; others sample how much a run depends on its seeds)"
    )
    parser.add_argument("--quick", action="store_true", help="every third case only")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    parser.add_argument("--budget-s", type=float, default=None, help="seconds per decision of every search (default: the policy's DEFAULT_BUDGET_S)")
    parser.add_argument("--validation", action="store_true", help="the tuning slice of the training families instead of the held-out split")
    parser.add_argument("--no-blocks", action="store_true", help="without the block-level first phase (policy and ablation)")
    parser.add_argument("--no-polish", action="store_true", help="without the guided search's final device exchange (policy and ablation)")
    parser.add_argument("--wide", action="store_true", help="the wider validation set WIDE_VALIDATION instead of the held-out split")
    parser.add_argument("--families", action="store_true", help="the unseen-family validation set FAMILY_VALIDATION instead of the held-out split")
    parser.add_argument("--group-kick-share", type=float, default=None, help="the guided search's share of group kicks (default: its own; 0: none)")
    parser.add_argument(
        "--report", nargs="+", default=None, metavar="FILE", help="print the summary of --json files of earlier runs, their rows pooled (e.g. runs at other --first-seed), and stop"
    )
    parser.add_argument(
        "--bounds-now", action="store_true", help="with --report: each row's lower bound recomputed with today's rlplace.simulate.lower_bound (per case: then -> now)"
    )
    parser.add_argument("--workers", type=int, default=None, help="searches side by side for policy, LS@B and the ablation alike (default: the policy's, one per core up to 4)")
    args = parser.parse_args(argv)
    if args.report:
        rows = [row for path in args.report for row in json.loads(Path(path).read_text())]
        print_summary(rebound(rows) if args.bounds_now else rows)
        return 0
    from rlplace.portfolio import resolve_workers

    args.workers = resolve_workers(args.workers)
    if args.budget_s is None:
        from rlplace.policy_method import DEFAULT_BUDGET_S

        args.budget_s = DEFAULT_BUDGET_S

    began = time.perf_counter()
    import torch  # noqa: F401

    torch_s = time.perf_counter() - began
    import torch_geometric.nn  # noqa: F401

    pyg_s = time.perf_counter() - began - torch_s
    from rlplace.policy_method import load_policy

    started = time.perf_counter()
    load_policy(args.checkpoint)
    load_s = time.perf_counter() - started
    print(f"cold start: import torch {torch_s:.2f} s, torch_geometric {pyg_s:.2f} s, load checkpoint {load_s:.2f} s")

    rows = []
    header = (
        f"{'regime':6} {'case':40} {'seed':>4} {'best classic':>14} {'pol/best':>8} {'LS/best':>8} {'LS@B/best':>9} {'abl@B/best':>10} "
        f"{'pol/LS@B':>8} {'pol/abl':>7} {'sims->LS pol/abl':>17} {'pol s':>6} {'LB/best':>7}"
    )
    print(
        f"every search gets B = {args.budget_s:g} s per decision (starts included) and {args.workers} worker(s) side by side; "
        "LS = local-search at its default 2000 simulations (one search)"
    )
    print(header)
    slices = {
        "families": lambda: validation_cases(args.quick, FAMILY_VALIDATION),
        "wide": lambda: validation_cases(args.quick, WIDE_VALIDATION),
        "validation": lambda: validation_cases(args.quick),
        "held-out": lambda: held_out_cases(args.quick),
    }
    chosen_slice = "families" if args.families else "wide" if args.wide else "validation" if args.validation else "held-out"
    for regime, case in slices[chosen_slice]():
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            row = {"regime": regime, "case": case.label, "seed": seed, **run_case(case, seed, args.checkpoint, args.budget_s, not args.no_polish, args.group_kick_share, args.workers, not args.no_blocks)}
            rows.append(row)
            best = row["best_time"]
            print(
                f"{regime:6} {case.label[:40]:40} {seed:>4} {row['best_classic']:>14} {row['policy'] / best:8.3f} {row['local_search'] / best:8.3f} "
                f"{row['local_search_budget'] / best:9.3f} {row['ablation'] / best:10.3f} {row['policy'] / row['local_search_budget']:8.3f} "
                f"{row['policy'] / row['ablation']:7.3f} {row['policy_sims_to_ls']:>8.0f}/{row['ablation_sims_to_ls']:<8.0f} {row['policy_decide_s']:6.2f} {row['lower_bound'] / best:7.3f}",
                flush=True,
            )
    print()
    print_summary(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
