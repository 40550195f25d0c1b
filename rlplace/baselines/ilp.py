"""``ilp``: the exact optimum of the ``throughput`` (max-load) objective, by integer programming.

Tarnawski et al. (NeurIPS 2020) place non-contiguously under the max-load model with an
integer program; this is that program on our cost tables (per-link edge times, CPUs, any
cluster), solved by HiGHS through `scipy.optimize.milp` within a time limit.

Variables (u units, k devices, i ranges over ops whose output some other unit reads):

- ``x[u, d]`` in {0, 1}: unit u on device d (fixed to 0 where the unit cannot run on d);
- ``r[i, d] >= 0``: what device d pays to receive op i's output;
- ``s[i, a] >= 0``: what device a pays to send op i's output;
- ``L``: the largest load, minimised.

Constraints, for every unit u, device d and every pair (op i, consumer unit v) of an edge
that crosses units, with ``t(a, b)`` the largest time of those edges on the link a -> b
(0 when a = b) and ``M`` the largest such time:

- ``sum_d x[u, d] = 1`` and ``sum_u demand_u x[u, d] <= budget_d`` (the static memory of the
  max-load model, `rlplace.rules.prepare`'s estimate);
- receive: ``r[i, d] >= sum_a t(a, d) x[U(i), a] - M (1 - x[v, d])``;
- send: ``s[i, a] >= sum_b t(a, b) x[v, b] - M (1 - x[U(i), a])``;
- ``L >= sum_u T[u, d] x[u, d] + sum_i (r[i, d] + s[i, d])``, the transfer terms only on
  devices that are not CPUs.

For a fixed x the smallest feasible r and s are exactly the simulator's transfer charges (the
receiver pays the largest edge time of i's edges to it, the sender the largest over its
receivers), so the program's optimum is the simulator's ``throughput`` optimum over all
placements of the units. Devices that are interchangeable (equal op times, memory and kind,
and a link pattern that a swap of the two leaves unchanged) make many equal solutions; the
program keeps one of them by letting the j-th device of each interchangeable group hold
only units j, j+1, ... (a relabelling that orders the group's devices by their first unit
always exists). Times are divided by the work bound and memory rows by their budget, so
HiGHS's absolute tolerances do not swallow microsecond transfer times.

The method (`place`): ``local-search`` (its default 2000 simulations), then the whole program
for ``FULL_SHARE`` of the time limit ``budget_s`` (``--budget-s``; default
`DEFAULT_BUDGET_S`); the better of the two, scored by the simulator, is proven optimal when
HiGHS closed the gap (relative gap <= ``MIP_GAP``) and its solution is that one. Otherwise the
rest of the time goes to `improve`, a large-neighbourhood search that solves the program over
the units of a few devices at a time with the others fixed (scipy's HiGHS takes no start
solution, so this is how the incumbent is improved). The answer is never worse than
``local-search``'s.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlplace.cluster import CPU, Cluster
from rlplace.costs import CostTable
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph
from rlplace.placement import Placement
from rlplace.rules import Units, finalize, make_simulator, prepare

#: Seconds the method takes in all (local search, program, neighbourhood search) when no ``budget_s`` is given.
DEFAULT_BUDGET_S = 10.0
#: Relative gap at which HiGHS calls a solution optimal.
MIP_GAP = 1e-4
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
    from rlplace.baselines import local_search

    began = time.perf_counter()
    units, budget = prepare(graph, cluster, costs, "throughput")
    simulator = make_simulator(graph, cluster, costs, "throughput")
    searched = units.contract(np.asarray(local_search.place(graph, cluster, costs, objective="throughput", seed=seed, referee=referee), dtype=np.int64))
    solution = solve_units(graph, cluster, costs, units, budget, time_limit_s=max(FULL_SHARE * time_limit_s - (time.perf_counter() - began), 0.01))
    best, optimal = searched, False
    if solution.unit_device is not None:
        if _key(simulator, units.expand(solution.unit_device)) <= _key(simulator, units.expand(searched)):
            best = solution.unit_device
        optimal = solution.optimal and _key(simulator, units.expand(best)) <= (0.0, solution.value * (1 + 1e-9))
    if not optimal and began + time_limit_s - time.perf_counter() > 0.05:
        best, _, _ = improve(graph, cluster, costs, units, budget, best, deadline=began + time_limit_s, seed=seed)
    if referee is not None and _better_or_equal(referee(units.expand(searched)), referee(units.expand(best))) and not np.array_equal(searched, best):
        best, optimal = searched, False
    value = _key(simulator, units.expand(best))[1]
    return MaxLoadSolution(best, value, solution.bound, optimal, time.perf_counter() - began, solution.size, units)


def _better_or_equal(first: tuple[float, float], second: tuple[float, float]) -> bool:
    """Whether score ``first`` (bytes over capacity, step time) is at least as good as ``second``."""
    return (float(first[0]), float(first[1])) <= (float(second[0]), float(second[1]))


def _milp(program: _Program, constraints: Any, lower: np.ndarray, upper: np.ndarray, time_limit_s: float) -> Any:
    """`scipy.optimize.milp` on ``program`` with variable bounds ``lower`` / ``upper``."""
    from scipy.optimize import Bounds, milp

    options = {"time_limit": float(time_limit_s), "mip_rel_gap": MIP_GAP, "disp": False}
    with _solver_prints_to_stderr():
        result = milp(program.cost, constraints=constraints, integrality=program.integrality, bounds=Bounds(lower, upper), options=options)
        if result.status == 4:  # HiGHS "solve error": its presolve fails on some tiny programs; once more without it
            result = milp(program.cost, constraints=constraints, integrality=program.integrality, bounds=Bounds(lower, upper), options={**options, "presolve": False})
    return result


@contextlib.contextmanager
def _solver_prints_to_stderr() -> Iterator[None]:
    """Point file descriptor 1 at stderr for the duration of a solve: HiGHS writes the odd
    diagnostic line to the process's stdout even with ``disp=False`` (seen once:
    ``HighsMipSolverData::transformNewIntegerFeasibleSolution``), and ``place --json``'s
    stdout must carry the JSON alone."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _key(simulator: Any, placement: np.ndarray) -> tuple[float, float]:
    """(bytes over capacity, max load): smaller is better."""
    step_time, overflow = simulator.score(placement)
    return float(overflow), float(step_time)


def solve(graph: OpGraph, cluster: Cluster, costs: CostTable, *, time_limit_s: float = DEFAULT_BUDGET_S) -> MaxLoadSolution:
    """Solve the program for ``graph`` on ``cluster`` (its ops' colocation units) alone, no local search."""
    units, budget = prepare(graph, cluster, costs, "throughput")
    return solve_units(graph, cluster, costs, units, budget, time_limit_s=time_limit_s)


def solve_units(graph: OpGraph, cluster: Cluster, costs: CostTable, units: Units, budget: np.ndarray, *, time_limit_s: float) -> MaxLoadSolution:
    """Build and solve the program over ``units`` with (k,) memory ``budget`` (bytes)."""
    from scipy.optimize import LinearConstraint

    began = time.perf_counter()
    program = _Program(graph, cluster, costs, units, budget)
    result = _milp(program, LinearConstraint(program.matrix, program.row_low, program.row_high), program.lower, program.upper, time_limit_s)
    dual = result.get("mip_dual_bound")
    bound = float(dual) * program.scale if dual is not None and np.isfinite(dual) else 0.0
    unit_device, value = None, float("inf")
    if result.x is not None:
        unit_device = program.assignment(result.x)
        value = float(make_simulator(graph, cluster, costs, "throughput").step_time(units.expand(unit_device)))
    optimal = result.status == 0 and unit_device is not None
    return MaxLoadSolution(unit_device, value, bound, optimal, time.perf_counter() - began, program.size, units)


class _Program:
    """The matrices of the module docstring's program (times in units of ``scale`` seconds)."""

    def __init__(self, graph: OpGraph, cluster: Cluster, costs: CostTable, units: Units, budget: np.ndarray) -> None:
        from scipy.sparse import coo_matrix

        from rlplace.simulate import work_bound

        u, k = units.num_units, cluster.num_devices
        self.units, self.num_devices = units, k
        self.scale = work_bound(np.asarray(costs.op_time, dtype=np.float64)) or 1.0
        is_cpu = np.array([device.category == CPU for device in cluster.devices], dtype=bool)
        producer, consumer_unit, pair_time = _crossing_pairs(graph, costs, units)
        pair_time = pair_time / self.scale
        producers, producer_of_pair = np.unique(producer, return_inverse=True)
        num_producers = producers.shape[0]
        # variable layout: x (u*k) | r (P*k) | s (P*k) | L
        self.num_x = u * k
        r0, s0 = self.num_x, self.num_x + num_producers * k
        top = s0 + num_producers * k
        num_vars = top + 1
        unit_of_op = units.of_op if units.item_of_op is None else units.of_op[units.item_of_op]
        producer_unit = unit_of_op[producer]

        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        vals: list[np.ndarray] = []
        low: list[np.ndarray] = []
        high: list[np.ndarray] = []
        count = 0

        def block(row: np.ndarray, col: np.ndarray, val: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
            nonlocal count
            keep = val != 0
            rows.append(row[keep] + count)
            cols.append(col[keep])
            vals.append(val[keep])
            low.append(lo)
            high.append(hi)
            count += lo.shape[0]

        devices = np.arange(k)
        # one device per unit
        block(np.repeat(np.arange(u), k), np.arange(u * k), np.ones(u * k), np.ones(u), np.ones(u))
        # static memory
        finite = np.flatnonzero(np.isfinite(budget) & (budget > 0))
        if finite.size and np.any(units.demand > 0):
            share = units.demand[:, None] / budget[None, finite]  # (u, f)
            row = np.tile(np.arange(finite.size), u)
            col = (np.arange(u)[:, None] * k + finite[None, :]).ravel()
            block(row, col, share.ravel(), np.full(finite.size, -np.inf), np.ones(finite.size))
        # transfers: receive rows (pair, d) and send rows (pair, a) on devices that pay them
        pays = np.flatnonzero(~is_cpu)
        num_pairs = producer.shape[0]
        if num_pairs and pays.size:
            big_in = pair_time[:, :, pays].max(axis=1)  # (pairs, |pays|) largest t(a, d)
            big_out = pair_time[:, pays, :].max(axis=2)  # (pairs, |pays|) largest t(a, b)
            pair_rows = np.arange(num_pairs)[:, None] * pays.size + np.arange(pays.size)[None, :]  # (pairs, |pays|)
            for role in ("receive", "send"):
                big = big_in if role == "receive" else big_out
                own = (r0 if role == "receive" else s0) + producer_of_pair[:, None] * k + pays[None, :]
                # coefficient rows: the cost variable, the other end's x over every device, the big-M x
                if role == "receive":
                    coef = -np.transpose(pair_time[:, :, pays], (0, 2, 1))  # (pairs, |pays|, a): -t(a, d)
                    x_unit, m_unit = producer_unit, consumer_unit
                else:
                    coef = -pair_time[:, pays, :]  # (pairs, |pays|, b): -t(a, b)
                    x_unit, m_unit = consumer_unit, producer_unit
                row = np.concatenate([pair_rows.ravel(), np.repeat(pair_rows.ravel(), k), pair_rows.ravel()])
                col = np.concatenate(
                    [
                        own.ravel(),
                        (x_unit[:, None, None] * k + devices[None, None, :]).repeat(pays.size, axis=1).ravel(),
                        (m_unit[:, None] * k + pays[None, :]).ravel(),
                    ]
                )
                val = np.concatenate([np.ones(pair_rows.size), coef.ravel(), -big.ravel()])
                block(row, col, val, -big.ravel(), np.full(pair_rows.size, np.inf))
        # load: sum_u T x + sum_i (r + s) - L <= 0 on every device
        times = np.where(units.allowed, units.time, 0.0) / self.scale
        row = [np.repeat(devices[None, :], u, axis=0).ravel()]
        col = [np.arange(u * k)]
        val = [times.ravel()]
        if num_producers and pays.size:
            for start in (r0, s0):
                row.append(np.repeat(pays, num_producers))
                col.append(start + np.arange(num_producers)[None, :] * k + pays[:, None])
                val.append(np.ones(pays.size * num_producers))
        row.append(devices)
        col.append(np.full(k, top))
        val.append(-np.ones(k))
        block(np.concatenate(row), np.concatenate([c.ravel() for c in col]), np.concatenate(val), np.full(k, -np.inf), np.zeros(k))

        self.matrix = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(count, num_vars)).tocsr()
        self.row_low, self.row_high = np.concatenate(low), np.concatenate(high)
        self.cost = np.zeros(num_vars)
        self.cost[top] = 1.0
        self.lower = np.zeros(num_vars)
        self.upper = np.full(num_vars, np.inf)
        allowed = units.allowed.copy()
        for group in interchangeable_devices(costs, cluster):
            for position, device in enumerate(group[1:], start=1):
                allowed[: min(position, u), device] = False
        self.upper[: self.num_x] = allowed.ravel().astype(np.float64)
        self.allowed = units.allowed.astype(np.float64)  # (u, k) without the symmetry cuts
        self.integrality = np.zeros(num_vars)
        self.integrality[: self.num_x] = 1
        self.size = (self.num_x, count)

    def assignment(self, solution: np.ndarray) -> np.ndarray:
        """(u,) int64 device per unit from a solution vector."""
        return np.argmax(solution[: self.num_x].reshape(self.units.num_units, self.num_devices), axis=1).astype(np.int64)


def improve(
    graph: OpGraph,
    cluster: Cluster,
    costs: CostTable,
    units: Units,
    budget: np.ndarray,
    start: np.ndarray,
    *,
    deadline: float,
    seed: int = 0,
    free_devices: int = FREE_DEVICES,
    round_s: float = ROUND_S,
) -> tuple[np.ndarray, float, int]:
    """Large-neighbourhood search on the program: from the (u,) assignment ``start``, free every
    unit on the most loaded device and on ``free_devices - 1`` others drawn at random, fix the
    rest, solve that small program (at most ``round_s`` seconds), keep the answer when its max
    load is no worse, repeat until ``deadline`` (`time.perf_counter` seconds).

    Returns (best (u,) assignment, its max load in seconds, programs solved). The answer is
    never worse than ``start``; under the memory estimate it stays feasible when ``start`` is.
    """
    from scipy.optimize import LinearConstraint

    program = _Program(graph, cluster, costs, units, budget)
    constraints = LinearConstraint(program.matrix, program.row_low, program.row_high)
    simulator = make_simulator(graph, cluster, costs, "throughput")
    rng = np.random.default_rng(seed)
    u, k = units.num_units, cluster.num_devices
    best = np.asarray(start, dtype=np.int64).copy()
    best_run = simulator.run(units.expand(best))
    best_value = best_run.step_time
    load = np.asarray(best_run.device_load)
    solved = 0
    while (left := deadline - time.perf_counter()) > 0.02 and k > 1:
        bottleneck = int(np.argmax(load))
        others = np.delete(np.arange(k), bottleneck)
        chosen = np.concatenate([[bottleneck], rng.choice(others, size=min(free_devices - 1, others.size), replace=False)])
        free = np.isin(best, chosen)
        lower = program.lower.copy()
        upper = program.upper.copy()
        fixed = np.zeros((u, k))
        fixed[np.arange(u), best] = 1.0
        x_low, x_high = fixed.copy(), fixed.copy()
        x_low[free] = 0.0
        x_high[np.ix_(free, chosen)] = program.allowed[np.ix_(free, chosen)]
        lower[: program.num_x], upper[: program.num_x] = x_low.ravel(), x_high.ravel()
        result = _milp(program, constraints, lower, upper, min(round_s, left))
        solved += 1
        if result.x is None:
            continue
        candidate = program.assignment(result.x)
        run = simulator.run(units.expand(candidate))
        if run.step_time <= best_value and not np.any(run.overflow_bytes > 0):
            best, best_value, load = candidate, run.step_time, np.asarray(run.device_load)
    return best, float(best_value), solved


def _crossing_pairs(graph: OpGraph, costs: CostTable, units: Units) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (op i, consumer unit v) pairs of edges between different units.

    Returns (producer (p,) int64, consumer_unit (p,) int64, time (p, k, k) float64 seconds:
    the largest time of the pair's edges on each link a -> b, 0 on the diagonal).
    """
    unit_of_op = units.of_op if units.item_of_op is None else units.of_op[units.item_of_op]
    src, dst = np.asarray(graph.edge_src, dtype=np.int64), np.asarray(graph.edge_dst, dtype=np.int64)
    crossing = np.flatnonzero(unit_of_op[src] != unit_of_op[dst])
    k = costs.num_devices
    if crossing.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, k, k))
    keys = np.stack([src[crossing], unit_of_op[dst[crossing]]], axis=1)
    pairs, pair_of_edge = np.unique(keys, axis=0, return_inverse=True)
    class_time = np.asarray(costs.edge_class_time, dtype=np.float64)[crossing]  # (c, L)
    largest = np.zeros((pairs.shape[0], class_time.shape[1]))
    np.maximum.at(largest, pair_of_edge.reshape(-1), class_time)
    link = np.asarray(costs.link_class, dtype=np.int64)
    time = largest[:, link]  # (p, k, k)
    time[:, np.arange(k), np.arange(k)] = 0.0
    return pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64), time


def interchangeable_devices(costs: CostTable, cluster: Cluster) -> list[list[int]]:
    """Groups of devices any two of which can swap without changing any placement's max load:
    equal op-time columns, memory and kind, and a link-class matrix the swap leaves as it is.
    (Swapping is an equivalence: (a c) = (a b)(b c)(a b).) Each group ascending."""
    k = cluster.num_devices
    op_time = np.where(np.isfinite(costs.op_time), costs.op_time, -1.0)
    link = np.asarray(costs.link_class)
    memory = cluster.memory
    kinds = [device.category for device in cluster.devices]
    groups: list[list[int]] = []
    grouped = np.zeros(k, dtype=bool)
    for a in range(k):
        if grouped[a]:
            continue
        group = [a]
        for b in range(a + 1, k):
            if grouped[b] or kinds[a] != kinds[b] or memory[a] != memory[b] or not np.array_equal(op_time[:, a], op_time[:, b]):
                continue
            swap = np.arange(k)
            swap[a], swap[b] = b, a
            if np.array_equal(link[np.ix_(swap, swap)], link):
                group.append(b)
                grouped[b] = True
        groups.append(group)
    return groups
