"""The guided search's group kick: a few units of one device moved together to one other device."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlplace.agents import guided_search as guided
from rlplace.cluster import Cluster, Device
from rlplace.costs import CostTable
from rlplace.envs.improve_state import MoveProblem, build_move_problem
from rlplace.graph import OpGraph


def four_devices() -> Cluster:
    devices = [Device(f"d{i}", "gpu", "accelerator", 1e12, 1e12, 1e12, 1e12) for i in range(4)]
    return Cluster.build("four", devices, intra_host=(1e10, 0.0), inter_host=(1e10, 0.0))


@st.composite
def problems_and_placements(draw: st.DrawFn) -> tuple[MoveProblem, np.ndarray, int]:
    """A random DAG of 2-12 ops on four devices, each op unable to run on some of them
    (an infinite time there), a placement on allowed devices, and an rng seed."""
    n = draw(st.integers(2, 12))
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    chosen = sorted(draw(st.lists(st.sampled_from(pairs), unique=True, max_size=min(len(pairs), 16))))
    graph = OpGraph.build([{"name": f"o{i}", "flops": 1e9, "output_bytes": 1e6} for i in range(n)], [{"src": f"o{i}", "dst": f"o{j}", "bytes": 1e6} for i, j in chosen])
    allowed = np.array(draw(st.lists(st.lists(st.booleans(), min_size=4, max_size=4).filter(any), min_size=n, max_size=n)))
    op_time = np.where(allowed, 1.0, np.inf)
    costs = CostTable(op_time=op_time, edge_time=np.full((len(chosen), 4, 4), 0.1) * (1 - np.eye(4))[None], time_unit="s")
    problem = build_move_problem(graph, four_devices(), costs, objective="latency")
    placement = np.array([draw(st.sampled_from(np.flatnonzero(problem.units.allowed[u]).tolist())) for u in range(problem.num_units)], dtype=np.int64)
    return problem, placement, draw(st.integers(0, 2**16))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems_and_placements())
def test_a_group_kick_moves_units_of_one_device_together_to_one_device_that_runs_them(case: tuple[MoveProblem, np.ndarray, int]) -> None:
    problem, best, seed = case
    before = best.copy()
    kicked = guided._group_kick(problem, best, np.random.default_rng(seed))
    np.testing.assert_array_equal(best, before)  # the best placement is not touched
    assert problem.units.allowed[np.arange(problem.num_units), kicked].all()
    moved = np.flatnonzero(kicked != best)
    homes, targets = set(best[moved].tolist()), set(kicked[moved].tolist())
    if len(homes) == 1 and len(targets) == 1:  # a group kick
        assert 1 <= moved.size <= guided.GROUP_KICK_SIZE
    else:  # the plain kick, taken when no other device can run the whole group
        rng = np.random.default_rng(seed)
        home = int(best[int(rng.integers(problem.num_units))])
        members = rng.choice(np.flatnonzero(best == home), size=min(guided.GROUP_KICK_SIZE, int(np.sum(best == home))), replace=False)
        runs_all = problem.units.allowed[members].all(axis=0)
        runs_all[home] = False
        assert not runs_all.any()


def test_the_group_is_four_units_of_the_drawn_device_when_there_are_enough() -> None:
    """Ten ops all on device 0 of four equal devices: four of them go to one other device."""
    graph = OpGraph.build([{"name": f"o{i}", "flops": 1e9, "output_bytes": 1e6} for i in range(10)], [])
    costs = CostTable(op_time=np.ones((10, 4)), edge_time=np.zeros((0, 4, 4)), time_unit="s")
    problem = build_move_problem(graph, four_devices(), costs, objective="latency")
    best = np.zeros(problem.num_units, dtype=np.int64)
    for seed in range(20):
        kicked = guided._group_kick(problem, best, np.random.default_rng(seed))
        moved = np.flatnonzero(kicked != best)
        assert moved.size == guided.GROUP_KICK_SIZE == 4
        assert len(set(kicked[moved].tolist())) == 1 and kicked[moved[0]] != 0


def test_the_search_uses_group_kicks_only_at_a_positive_share(monkeypatch: pytest.MonkeyPatch) -> None:
    graph = OpGraph.build([{"name": f"o{i}", "flops": 1e9 * (1 + i % 3), "output_bytes": 1e6} for i in range(12)], [{"src": f"o{i}", "dst": f"o{i + 1}", "bytes": 1e6} for i in range(11)])
    cluster = four_devices()
    problem = build_move_problem(graph, cluster, CostTable.build(graph, cluster), objective="latency")
    calls = {"group": 0}
    real = guided._group_kick

    def counting(*args: object) -> np.ndarray:
        calls["group"] += 1
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(guided, "_group_kick", counting)
    starts = [np.zeros(problem.num_units, dtype=np.int64)]
    _, _, stats = guided.guided_search(problem, starts, None, evaluations=600, group_kick_share=0.0, seed=0)
    assert stats.restarts > 0 and calls["group"] == 0
    _, _, stats = guided.guided_search(problem, starts, None, evaluations=600, group_kick_share=1.0, seed=0)
    assert stats.restarts > 0 and calls["group"] == stats.restarts


def test_the_policy_pipeline_passes_its_group_kick_share_to_the_guided_search(monkeypatch: pytest.MonkeyPatch) -> None:
    from rlplace.policy_method import search

    graph = OpGraph.build([{"name": f"o{i}", "flops": 1e9, "output_bytes": 1e6} for i in range(6)], [{"src": f"o{i}", "dst": f"o{i + 1}", "bytes": 1e6} for i in range(5)])
    cluster = four_devices()
    seen: list[dict[str, object]] = []
    real = guided.guided_search

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(kwargs)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(guided, "guided_search", spy)
    search(graph, cluster, CostTable.build(graph, cluster), evaluations=60, random_order=True, group_kick_share=0.25)
    search(graph, cluster, CostTable.build(graph, cluster), evaluations=60, random_order=True)
    assert seen[0]["group_kick_share"] == 0.25 and "group_kick_share" not in seen[1]
