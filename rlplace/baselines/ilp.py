"""``ilp``: the exact optimum of the ``throughput`` (max-load) objective, by integer programming.

Tarnawski et al. (NeurIPS 2020) place non-contiguously under the max-load model with an
integer program; this is that program on our cost tables (per-link edge times, CPUs, any
cluster), solved by HiGHS through `scipy.optimize.milp` within a time limit.

The program (variables, constraints, why its optimum is the simulator's, the symmetry cuts
and the scaling) is documented in `rlplace.baselines.max_load_program`.

The method (`place`): ``local-search`` (its default 2000 simulations), then the whole program
for ``FULL_SHARE`` of the time limit ``budget_s`` (``--budget-s``; default
`DEFAULT_BUDGET_S`); the better of the two, scored by the simulator, is proven optimal when
HiGHS closed the gap (relative gap <= `rlplace.baselines.max_load_program.MIP_GAP`) and its solution is that one. Otherwise the
rest of the time goes to `improve`, a large-neighbourhood search that solves the program over
the units of a few devices at a time with the others fixed (scipy's HiGHS takes no start
solution, so this is how the incumbent is improved). The answer is never worse than
``local-search``'s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlplace.baselines import local_search
from rlplace.baselines.max_load_program import MaxLoadProgram, run_milp
from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph
from rlplace.placement import Placement
from rlplace.rules import Units, finalize, make_simulator, prepare

#: Seconds the method takes in all (local search, program, neighbourhood search) when no ``budget_s`` is given.
DEFAULT_BUDGET_S = 10.0
#: `place`: share of the time limit the whole program gets before `improve` takes the rest.
FULL_SHARE = 0.75
#: `improve`: devices whose units one round frees (the most loaded one among them).
FREE_DEVICES = 3
#: `improve`: seconds one round's program may take.
ROUND_S = 0.3


@dataclass(frozen=True)
class MaxLoadSolution:
    """What the program (`solve`) or the method's whole search (`solve_and_improve`) found.

    Attributes:
        unit_device: (u,) int64 device per unit of the program's best solution, or None when
            HiGHS found none within the time limit.
        value: the simulator's max load of that solution (the graph's time unit, seconds for
            captured models; ``inf`` without one).
        bound: HiGHS's proven lower bound on the max load of every placement (same unit).
        optimal: HiGHS closed the gap (``value <= bound * (1 + MIP_GAP)`` up to tolerances).
        solve_s: wall-clock seconds of the solve (building the program included).
        size: (binary variables, constraints).
        units: the colocation units ``unit_device`` assigns.
    """

    unit_device: np.ndarray | None
    value: float
    bound: float
    optimal: bool
    solve_s: float
    size: tuple[int, int]
    units: Units


def place(graph: OpGraph, cluster: Cluster, costs: CostTable, **options: Any) -> Placement:
    """The better of the program's solution and ``local-search``'s (module docstring)."""
    return place_with_proof(graph, cluster, costs, **options)[0]


def place_with_proof(
    graph: OpGraph,
    cluster: Cluster,
    costs: CostTable,
    *,
    objective: str = "throughput",
    seed: int = 0,
    microbatches: int = 1,
    schedule: str = "gpipe",
    budget_s: float | None = None,
    referee: Callable[[np.ndarray], tuple[float, float]] | None = None,
) -> tuple[Placement, bool]:
    """(placement, proven optimal) for the ``throughput`` objective; ``budget_s``: seconds in all.
    ``referee``: as `rlplace.baselines.local_search.place` takes it (a coarsened graph's
    placements judged on the full graph); the answer is then local-search's whenever the
    referee scores that better."""
    del microbatches, schedule  # the max-load model has neither
    if objective != "throughput":
        raise RlplaceError(
            f"ilp solves the throughput (max-load) objective only, not {objective!r}; use --objective throughput, or local-search / policy for {objective}"
        )
    solution = solve_and_improve(graph, cluster, costs, seed=seed, time_limit_s=DEFAULT_BUDGET_S if budget_s is None else budget_s, referee=referee)
    assert solution.unit_device is not None  # local-search always answers
    simulator = make_simulator(graph, cluster, costs, objective)
    placement = finalize(graph, cluster, costs, solution.units.expand(solution.unit_device), objective=objective, method="ilp", simulator=simulator)
    return placement, solution.optimal


def solve_and_improve(
    graph: OpGraph, cluster: Cluster, costs: CostTable, *, seed: int = 0, time_limit_s: float = DEFAULT_BUDGET_S,
    referee: Callable[[np.ndarray], tuple[float, float]] | None = None,
) -> MaxLoadSolution:
    """The method's search (module docstring) within ``time_limit_s`` seconds in all: the best
    assignment found, its max load, the program's proven bound and whether it is optimal
    (``referee``: see `place_with_proof`)."""
    began = time.perf_counter()
    units, budget = prepare(graph, cluster, costs, "throughput")
    simulator = make_simulator(graph, cluster, costs, "throughput")
    searched = units.contract(np.asarray(local_search.place(graph, cluster, costs, objective="throughput", seed=seed, referee=referee), dtype=np.int64))
    program = MaxLoadProgram(graph, cluster, costs, units, budget)
    solution = solve_program(program, simulator, time_limit_s=max(FULL_SHARE * time_limit_s - (time.perf_counter() - began), 0.01))
    best, optimal = searched, False
    if solution.unit_device is not None:
        if _key(simulator, units.expand(solution.unit_device)) <= _key(simulator, units.expand(searched)):
            best = solution.unit_device
        optimal = solution.optimal and _key(simulator, units.expand(best)) <= (0.0, solution.value * (1 + 1e-9))
    if not optimal and began + time_limit_s - time.perf_counter() > 0.05:
        best, _, _ = improve(program, simulator, best, deadline=began + time_limit_s, seed=seed)
    judged = units.contract(local_search._refereed(units.expand(best), [units.expand(searched)], referee))
    if not np.array_equal(judged, best):
        best, optimal = judged, False
    value = _key(simulator, units.expand(best))[1]
    return MaxLoadSolution(best, value, solution.bound, optimal, time.perf_counter() - began, solution.size, units)


def _key(simulator: Any, placement: np.ndarray) -> tuple[float, float]:
    """(bytes over capacity, max load): smaller is better."""
    step_time, overflow = simulator.score(placement)
    return float(overflow), float(step_time)


def solve(graph: OpGraph, cluster: Cluster, costs: CostTable, *, time_limit_s: float = DEFAULT_BUDGET_S) -> MaxLoadSolution:
    """Solve the program for ``graph`` on ``cluster`` (its ops' colocation units) alone, no local search."""
    units, budget = prepare(graph, cluster, costs, "throughput")
    return solve_program(MaxLoadProgram(graph, cluster, costs, units, budget), make_simulator(graph, cluster, costs, "throughput"), time_limit_s=time_limit_s)


def solve_program(program: MaxLoadProgram, simulator: Any, *, time_limit_s: float) -> MaxLoadSolution:
    """Solve ``program`` within ``time_limit_s`` seconds; ``simulator`` (the ``throughput``
    one of the program's graph) scores the solution."""
    began = time.perf_counter()
    result = run_milp(program, program.lower, program.upper, time_limit_s)
    dual = result.get("mip_dual_bound")
    bound = float(dual) * program.scale if dual is not None and np.isfinite(dual) else 0.0
    unit_device, value = None, float("inf")
    if result.x is not None:
        unit_device = program.assignment(result.x)
        value = float(simulator.step_time(program.units.expand(unit_device)))
    optimal = result.status == 0 and unit_device is not None
    return MaxLoadSolution(unit_device, value, bound, optimal, time.perf_counter() - began, program.size, program.units)


def improve(
    program: MaxLoadProgram,
    simulator: Any,
    start: np.ndarray,
    *,
    deadline: float,
    seed: int = 0,
    free_devices: int = FREE_DEVICES,
    round_s: float = ROUND_S,
) -> tuple[np.ndarray, float, int]:
    """Large-neighbourhood search on ``program``: from the (u,) assignment ``start``, free every
    unit on the most loaded device and on ``free_devices - 1`` others drawn at random, fix the
    rest, solve that small program (at most ``round_s`` seconds), keep the answer when its max
    load (by ``simulator``, the ``throughput`` one of the program's graph) is no worse, repeat
    until ``deadline`` (`time.perf_counter` seconds; a round's time limit keeps back the most the
    solver has overshot a limit so far, so the search ends by then up to one simulation).

    Returns (best (u,) assignment, its max load in the graph's time unit, programs solved).
    The answer is never worse than ``start``; under the memory estimate it stays feasible
    when ``start`` is.
    """
    units = program.units
    rng = np.random.default_rng(seed)
    u, k = units.num_units, program.num_devices
    best = np.asarray(start, dtype=np.int64).copy()
    best_run = simulator.run(units.expand(best))
    best_value = best_run.step_time
    load = np.asarray(best_run.device_load)
    solved = 0
    # The solver overshoots its time limit (HiGHS: 15-60 ms past a 0.3 s limit here); each round's
    # limit keeps back the largest overshoot seen so far, so the search ends by ``deadline``.
    overshoot = 0.0
    while (left := deadline - time.perf_counter() - overshoot) > 0.02 and k > 1:
        bottleneck = int(np.argmax(load))
        others = np.delete(np.arange(k), bottleneck)
        chosen = np.concatenate([[bottleneck], rng.choice(others, size=min(free_devices - 1, others.size), replace=False)])
        free = np.isin(best, chosen)
        x_high = np.zeros((u, k))
        x_high[np.arange(u), best] = 1.0
        x_low = x_high.copy()
        x_low[free] = 0.0
        x_high[np.ix_(free, chosen)] = program.allowed[np.ix_(free, chosen)]
        lower, upper = program.lower.copy(), program.upper.copy()
        lower[: program.num_x], upper[: program.num_x] = x_low.ravel(), x_high.ravel()
        limit = min(round_s, left)
        began = time.perf_counter()
        result = run_milp(program, lower, upper, limit)
        overshoot = max(overshoot, time.perf_counter() - began - limit)
        solved += 1
        if result.x is None:
            continue
        candidate = program.assignment(result.x)
        run = simulator.run(units.expand(candidate))
        if run.step_time <= best_value and not np.any(run.overflow_bytes > 0):
            best, best_value, load = candidate, run.step_time, np.asarray(run.device_load)
    return best, float(best_value), solved
