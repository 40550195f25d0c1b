"""``ilp``: the integer program of the max-load objective finds the brute-force optimum."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlplace.baselines import ilp, max_load_program, run_method
from rlplace.cluster import Cluster, Device
from rlplace.costs import CostTable, interchangeable_devices
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph
from rlplace.rules import prepare
from rlplace.simulate import Simulator


def two_host_cluster(categories: list[str], memory: float) -> Cluster:
    """Devices on two hosts (the first half on host 0), slower links between hosts; CPUs uncapped."""
    half = (len(categories) + 1) // 2
    devices = [
        Device(f"d{i}", "custom", category, 1e12, 1e12, np.inf if category == "cpu" else memory, 1e12, host=0 if i < half else 1)
        for i, category in enumerate(categories)
    ]
    return Cluster.build("test", devices, intra_host=(1e3, 0.0), inter_host=(2.5e2, 0.5))


@st.composite
def max_load_problems(draw: st.DrawFn) -> tuple[OpGraph, Cluster]:
    n = draw(st.integers(2, 6))
    categories = draw(st.sampled_from([["accelerator"] * 2, ["accelerator"] * 3, ["accelerator", "accelerator", "cpu"], ["accelerator"] * 4]))
    ops = []
    for i in range(n):
        times = {"accelerator": draw(st.floats(0.5, 10.0)), "cpu": draw(st.floats(1.0, 40.0))}
        if i and draw(st.booleans()) and "cpu" in categories:
            times["accelerator"] = float("inf")  # only the CPU runs it
        ops.append({"name": f"o{i}", "times": times, "resident_bytes": draw(st.floats(0.0, 60.0))})
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    chosen = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=len(pairs))) if pairs else []
    edges = [{"src": f"o{i}", "dst": f"o{j}", "bytes": draw(st.floats(0.0, 3e3))} for i, j in chosen]
    graph = OpGraph.build(ops, edges, time_classes=("accelerator", "cpu"))
    memory = draw(st.sampled_from([1e9, 150.0]))
    return graph, two_host_cluster(categories, memory)


def brute_force(graph: OpGraph, cluster: Cluster, costs: CostTable) -> float:
    """The smallest max load over every placement that fits the static memory."""
    simulator = Simulator(graph, cluster, costs, objective="throughput")
    best = float("inf")
    for choice in itertools.product(range(cluster.num_devices), repeat=graph.num_ops):
        placement = np.array(choice, dtype=np.int64)
        times = costs.op_time[np.arange(graph.num_ops), placement]
        if np.all(np.isfinite(times)):
            step_time, overflow = simulator.score(placement)
            if overflow == 0:
                best = min(best, step_time)
    return best


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(max_load_problems())
def test_the_program_finds_the_brute_force_optimum(problem: tuple[OpGraph, Cluster]) -> None:
    graph, cluster = problem
    costs = CostTable.build(graph, cluster)
    optimum = brute_force(graph, cluster, costs)
    if not np.isfinite(optimum):
        return  # nothing fits: prepare raises, covered below
    solution = ilp.solve(graph, cluster, costs, time_limit_s=30.0)
    # "optimal" means within HiGHS's relative gap: a plan 1e-5 worse than the best may be returned.
    assert solution.optimal
    assert optimum * (1 - 1e-9) <= solution.value <= optimum * (1 + max_load_program.MIP_GAP) + 1e-12
    assert solution.bound <= optimum * (1 + 1e-6)
    assert solution.bound >= optimum * (1 - 2 * max_load_program.MIP_GAP)


def fork_join() -> tuple[OpGraph, Cluster, CostTable]:
    """a -> (b, c) -> d with unit transfers; b and c weigh 4, a and d 1."""
    ops = [{"name": name, "times": {"accelerator": t}} for name, t in (("a", 1.0), ("b", 4.0), ("c", 4.0), ("d", 1.0))]
    edges = [{"src": s, "dst": d, "bytes": 0.0, "time": 1.0} for s, d in (("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"))]
    graph = OpGraph.build(ops, edges, time_classes=("accelerator",))
    devices = [Device(f"d{i}", "custom", "accelerator", 1e12, 1e12, 1e9, 1e12) for i in range(2)]
    cluster = Cluster.build("pair", devices, intra_host=(1e9, 0.0))
    return graph, cluster, CostTable.build(graph, cluster)


def test_fork_join_by_hand() -> None:
    # one device: 10. c alone on the other: d0 = 1 + 4 + 1 + send a 1 + receive c 1 = 8,
    # d1 = 4 + receive a 1 + send c 1 = 6, so 8. a, b | c, d: d0 = 1 + 4 + send a 1 +
    # send b 1 = 7, d1 = 4 + 1 + receive a 1 + receive b 1 = 7, so 7 (a | b, c, d: 10).
    graph, cluster, costs = fork_join()
    solution = ilp.solve(graph, cluster, costs)
    assert solution.optimal and solution.value == pytest.approx(7.0)
    result = run_method("ilp", graph, cluster, costs, objective="throughput")
    assert result.optimal is True
    assert Simulator(graph, cluster, costs, objective="throughput").step_time(result.placement) == pytest.approx(7.0)


def test_other_objectives_are_a_clear_error() -> None:
    graph, cluster, costs = fork_join()
    with pytest.raises(RlplaceError, match=r"throughput \(max-load\) objective only"):
        run_method("ilp", graph, cluster, costs, objective="latency")


def test_devices_that_swap_freely_are_grouped_by_host_and_kind() -> None:
    cluster = two_host_cluster(["accelerator"] * 4 + ["cpu"], 1e9)  # hosts: d0-d2 | d3, d4
    ops = [{"name": "a", "times": {"accelerator": 1.0, "cpu": 2.0}}]
    graph = OpGraph.build(ops, [], time_classes=("accelerator", "cpu"))
    assert interchangeable_devices(CostTable.build(graph, cluster), cluster) == [[0, 1, 2], [3], [4]]


def chain(n: int) -> tuple[OpGraph, Cluster, CostTable]:
    """A chain of n unequal ops with small transfers on four equal devices."""
    rng = np.random.default_rng(7)
    ops = [{"name": f"o{i}", "times": {"accelerator": float(t)}} for i, t in enumerate(rng.uniform(1.0, 5.0, n))]
    edges = [{"src": f"o{i}", "dst": f"o{i + 1}", "bytes": 0.0, "time": 0.2} for i in range(n - 1)]
    graph = OpGraph.build(ops, edges, time_classes=("accelerator",))
    devices = [Device(f"d{i}", "custom", "accelerator", 1e12, 1e12, 1e9, 1e12) for i in range(4)]
    cluster = Cluster.build("four", devices, intra_host=(1e9, 0.0))
    return graph, cluster, CostTable.build(graph, cluster)


def test_improve_never_gets_worse_and_reaches_the_optimum_when_it_frees_every_device() -> None:
    graph, cluster, costs = chain(12)
    units, budget = prepare(graph, cluster, costs, "throughput")
    simulator = Simulator(graph, cluster, costs, objective="throughput")
    start = np.zeros(units.num_units, dtype=np.int64)  # all on one device
    optimum = ilp.solve(graph, cluster, costs, time_limit_s=30.0)
    assert optimum.optimal
    program = max_load_program.MaxLoadProgram(graph, cluster, costs, units, budget)
    found, value, solved = ilp.improve(program, simulator, start, deadline=time.perf_counter() + 5.0, free_devices=4, round_s=5.0)
    assert solved >= 1
    assert value == pytest.approx(simulator.step_time(units.expand(found)))
    assert value == pytest.approx(optimum.value)
    # two freed devices at a time: never worse than the start, and better than one device
    found, value, _ = ilp.improve(program, simulator, start, deadline=time.perf_counter() + 1.0, free_devices=2)
    assert optimum.value - 1e-9 <= value < simulator.step_time(units.expand(start))


def test_improve_keeps_back_the_solvers_overshoot_and_ends_by_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """A solver that runs 0.05 s past every time limit (on a fake clock): after the first round
    the limits keep that much back, so the search ends at its deadline, not 0.05 s after it."""
    from types import SimpleNamespace

    graph, cluster, costs = chain(12)
    units, budget = prepare(graph, cluster, costs, "throughput")
    simulator = Simulator(graph, cluster, costs, objective="throughput")
    program = max_load_program.MaxLoadProgram(graph, cluster, costs, units, budget)
    clock = SimpleNamespace(now=0.0)
    limits: list[float] = []

    def late_solver(program: object, lower: object, upper: object, limit: float) -> SimpleNamespace:
        limits.append(limit)
        clock.now += limit + 0.05
        return SimpleNamespace(x=None)

    monkeypatch.setattr(ilp, "run_milp", late_solver)
    monkeypatch.setattr(ilp, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    start = np.zeros(units.num_units, dtype=np.int64)
    found, _, solved = ilp.improve(program, simulator, start, deadline=0.5, round_s=0.3)
    assert limits == pytest.approx([0.3, 0.1])  # 0.5 - 0.35 spent - 0.05 kept back
    assert solved == 2 and clock.now <= 0.5 + 1e-12
    assert np.array_equal(found, start)


def test_on_a_coarsened_graph_ilp_is_never_worse_than_local_search_on_the_full_graph() -> None:
    from rlplace.cluster_spec import load_cluster
    from rlplace.load import LoadedModel
    from rlplace.pipeline import decide
    from rlplace.synthetic import synthetic_graph

    # Here the 8 groups' optimum is 2.2 % worse on the ops than local-search's refereed answer:
    # without the full-graph referee ilp would return it.
    model = LoadedModel("synthetic", synthetic_graph("series-parallel", n=50, seed=3, training=True))
    cluster = load_cluster("4xT4")
    searched = decide(model, cluster, "local-search", objective="throughput", max_groups=8)
    exact = decide(model, cluster, "ilp", objective="throughput", max_groups=8, method_options={"budget_s": 0.5})
    assert exact.coarsening is not None
    assert exact.optimal is False  # a proof about the groups is none about the ops
    assert exact.result.step_time <= searched.result.step_time * (1 + 1e-9)


def test_solver_output_goes_to_stderr_and_stdout_comes_back(capfd: pytest.CaptureFixture[str]) -> None:
    import os

    with max_load_program.solver_prints_to_stderr():
        os.write(1, b"native line\n")
    os.write(1, b"after\n")
    captured = capfd.readouterr()
    assert captured.out == "after\n"
    assert "native line" in captured.err


def test_a_program_highs_presolve_fails_on_is_solved_without_presolve() -> None:
    # Found by the brute-force test: scipy's HiGHS returns "Solve error" (status 4) with presolve on.
    ops = [{"name": f"o{i}", "times": {"accelerator": t, "cpu": 1.0}} for i, t in enumerate((4.555747362700331, 2.060883770438521, 7.0))]
    graph = OpGraph.build(ops, [{"src": "o0", "dst": "o2", "bytes": 2671.0}], time_classes=("accelerator", "cpu"))
    cluster = two_host_cluster(["accelerator"] * 3, 1e9)
    costs = CostTable.build(graph, cluster)
    solution = ilp.solve(graph, cluster, costs)
    assert solution.optimal
    assert solution.value == pytest.approx(brute_force(graph, cluster, costs))
