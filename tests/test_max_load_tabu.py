"""The max-load tabu search: incremental move scores equal whole simulations, and the search
keeps memory, never ends worse than its start and finds small optima."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_ilp import brute_force, chain, fork_join, max_load_problems

from rlplace._simkernel import max_load
from rlplace.baselines import ilp
from rlplace.baselines.max_load_tabu import _score_move, tabu_search, unit_tables
from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.errors import RlplaceError
from rlplace.rules import prepare
from rlplace.simulate import Simulator


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(max_load_problems(), st.randoms(use_true_random=False))
def test_a_moves_incremental_score_is_the_simulators_max_load(problem, random) -> None:
    graph, cluster = problem
    costs = CostTable.build(graph, cluster)
    try:
        units, _ = prepare(graph, cluster, costs, "throughput")
    except RlplaceError:
        return  # nothing fits
    simulator = Simulator(graph, cluster, costs, objective="throughput")
    tables = simulator.max_load_tables()
    lists = unit_tables(tables, units)
    allowed = units.allowed
    assign = np.array([random.choice(np.flatnonzero(allowed[x])) for x in range(units.num_units)], dtype=np.int64)
    p = units.expand(assign)
    load, _ = max_load(graph.num_ops, cluster.num_devices, tables.succ_ptr, tables.succ_op, tables.succ_edge, tables.op_time, tables.edge_time, tables.link_class, p, tables.is_cpu)
    assert load.max() == pytest.approx(simulator.step_time(p))
    for x in range(units.num_units):
        for d in np.flatnonzero(allowed[x]):
            scratch, spare = np.empty(cluster.num_devices), np.full(cluster.num_devices, -1.0)
            top, squares = _score_move(x, d, load, scratch, spare, assign, p, lists.member_ptr, lists.member_op, lists.touch_ptr, lists.touch_op,
                                       tables.succ_ptr, tables.succ_op, tables.succ_edge, tables.op_time, tables.edge_time, tables.link_class, tables.is_cpu)  # fmt: skip
            moved = assign.copy()
            moved[x] = d
            assert top == pytest.approx(simulator.step_time(units.expand(moved)), rel=1e-9, abs=1e-12)
            assert squares == pytest.approx(float(np.sum(scratch**2)))
            np.testing.assert_array_equal(p, units.expand(assign))  # the placement is left as it was


def test_the_fork_join_optimum_from_one_device() -> None:
    graph, cluster, costs = fork_join()  # optimum 7 (tests/test_ilp.py works it out by hand), one device 10
    units, budget = prepare(graph, cluster, costs, "throughput")
    simulator = Simulator(graph, cluster, costs, objective="throughput")
    found, value, steps = tabu_search(simulator, units, budget, np.zeros(units.num_units, dtype=np.int64), deadline=time.perf_counter() + 0.2)
    assert steps > 0
    assert value == pytest.approx(7.0)
    assert simulator.step_time(units.expand(found)) == pytest.approx(7.0)


def test_a_chain_reaches_the_programs_optimum() -> None:
    graph, cluster, costs = chain(12)
    units, budget = prepare(graph, cluster, costs, "throughput")
    simulator = Simulator(graph, cluster, costs, objective="throughput")
    optimum = ilp.solve(graph, cluster, costs, time_limit_s=30.0)
    assert optimum.optimal
    found, value, _ = tabu_search(simulator, units, budget, np.zeros(units.num_units, dtype=np.int64), deadline=time.perf_counter() + 0.5)
    assert value == pytest.approx(optimum.value)
    assert value == pytest.approx(simulator.step_time(units.expand(found)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(max_load_problems(), st.integers(0, 2**16))
def test_the_search_keeps_memory_never_ends_worse_and_finds_small_optima(problem, seed: int) -> None:
    graph, cluster = problem
    costs = CostTable.build(graph, cluster)
    optimum = brute_force(graph, cluster, costs)
    if not np.isfinite(optimum):
        return  # nothing fits: prepare raises
    units, budget = prepare(graph, cluster, costs, "throughput")
    simulator = Simulator(graph, cluster, costs, objective="throughput")
    start = _greedy_fit(units, budget)
    if start is None:
        return
    start_value = simulator.step_time(units.expand(start))
    found, value, _ = tabu_search(simulator, units, budget, start, deadline=time.perf_counter() + 0.05, seed=seed)
    used = np.bincount(found, weights=units.demand, minlength=cluster.num_devices)
    assert np.all(used <= budget + 1e-9)
    assert np.all(units.allowed[np.arange(units.num_units), found])
    assert value == pytest.approx(simulator.step_time(units.expand(found)))
    assert value <= start_value * (1 + 1e-12)
    assert value == pytest.approx(optimum)  # at most 6 ops: the search sees every placement near the best


def _greedy_fit(units, budget) -> np.ndarray | None:
    """(u,) assignment that fits ``budget``: each unit, largest first, on the allowed device with most room (None if one fails)."""
    used = np.zeros(budget.shape[0])
    assign = np.zeros(units.num_units, dtype=np.int64)
    for x in np.argsort(-units.demand, kind="stable"):
        room = np.where(units.allowed[x], budget - used, -np.inf)
        d = int(np.argmax(room))
        if room[d] < units.demand[x]:
            return None
        assign[x] = d
        used[d] += units.demand[x]
    return assign


def test_other_objectives_are_a_clear_error() -> None:
    graph, cluster, costs = fork_join()
    units, budget = prepare(graph, cluster, costs, "latency")
    simulator = Simulator(graph, cluster, costs, objective="latency")
    with pytest.raises(RlplaceError, match="needs 'throughput'"):
        tabu_search(simulator, units, budget, np.zeros(units.num_units, dtype=np.int64), deadline=time.perf_counter() + 0.01)


def test_one_device_has_nothing_to_search() -> None:
    graph, cluster, costs = fork_join()
    one = Cluster.build("one", [cluster.devices[0]], intra_host=(1e9, 0.0))
    costs = CostTable.build(graph, one)
    units, budget = prepare(graph, one, costs, "throughput")
    simulator = Simulator(graph, one, costs, objective="throughput")
    found, value, steps = tabu_search(simulator, units, budget, np.zeros(units.num_units, dtype=np.int64), deadline=time.perf_counter() + 5.0)
    assert steps == 0 and value == pytest.approx(10.0) and found.tolist() == [0] * units.num_units
