"""The simulation cutoff: a search's candidate simulation may stop once it cannot win.

`Simulator.score(p, cutoff=c)` returns the exact score or, for a placement whose step time
surely exceeds ``c`` (whether it fits in memory or not), ``(inf, 0.0)``; local-search and the
guided search pass the current placement's step time, so they take exactly the same path with
and without it, on roomy and on memory-bound clusters alike.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_simulate import cluster_of, graph_of, place, problems

from rlplace.agents import guided_search as guided
from rlplace.agents.data import resolve_cluster_spec
from rlplace.baselines import local_search
from rlplace.costs import CostTable
from rlplace.envs.improve_state import build_move_problem
from rlplace.load import load_model
from rlplace.objectives import SCHEDULES
from rlplace.rules import cutoff_for
from rlplace.simulate import Simulator

RANDOM = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@RANDOM
@given(problems(), st.sampled_from(SCHEDULES), st.sampled_from([0.0, 0.5, 0.9, 0.999, 1.0, 1.001, 2.0]), st.booleans())
def test_a_cut_score_is_exact_or_surely_above_the_cutoff(problem, schedule, factor, tight_memory):
    graph, _, costs, placement, microbatches = problem
    cluster = cluster_of(costs.num_devices, memory=60.0 if tight_memory else 1e12)
    objective = "pipelined" if microbatches > 1 else "latency"
    simulator = Simulator(graph, cluster, costs, objective=objective, microbatches=microbatches, schedule=schedule)
    full = simulator.score(placement)
    cutoff = full[0] * factor
    cut = simulator.score(placement, cutoff=cutoff)
    if np.isfinite(cut[0]):
        assert cut == full
    else:
        assert cut[1] == 0.0 and full[0] > cutoff  # an overflowing placement may be cut too: it loses either way
    if cutoff >= full[0]:
        assert cut == full  # a schedule that ends at the cutoff is never cut


def test_the_work_left_on_an_idle_device_stops_the_simulation() -> None:
    """a (3 s) and b (4 s) on device 0, c (1 s) on device 1 after a: 7 s in all."""
    graph = graph_of({"a": 3.0, "b": 4.0, "c": 1.0}, [("a", "c", 0.0)])
    cluster = cluster_of(2)
    costs = CostTable(op_time=np.array([[3.0, 3.0], [4.0, 4.0], [1.0, 1.0]]), edge_time=np.zeros((1, 2, 2)), time_unit="s")
    simulator = Simulator(graph, cluster, costs)
    placement = place(graph, {"a": 0, "b": 0, "c": 1})
    assert simulator.score(placement) == (7.0, 0.0)
    assert simulator.score(placement, cutoff=7.0) == (7.0, 0.0)
    assert simulator.score(placement, cutoff=6.99) == (np.inf, 0.0)


def test_a_transfer_on_the_tail_stops_the_simulation_at_its_producer() -> None:
    """a (1 s) on device 0, then b (1 s) on device 1 behind a 5 s transfer: 7 s in all. With
    a cutoff of 6.5 s the tail of a (the transfer and b, 6 s) passes it when a finishes, before
    the transfer is sent; a tail of op times alone (1 s) would let the schedule run on."""
    from rlplace import _simkernel as kernel

    graph = graph_of({"a": 1.0, "b": 1.0}, [("a", "b", 0.0)])
    cluster = cluster_of(2)
    costs = CostTable(op_time=np.array([[1.0, 1.0], [1.0, 1.0]]), edge_time=np.array([[[0.0, 5.0], [5.0, 0.0]]]), time_unit="s")
    simulator = Simulator(graph, cluster, costs)
    placement = place(graph, {"a": 0, "b": 1})
    assert simulator.score(placement) == (7.0, 0.0)
    assert simulator.score(placement, cutoff=7.0) == (7.0, 0.0)
    arguments = simulator._schedule_args(placement, (simulator._op_rank, simulator._rank_op))
    makespan, *_, transfers_sent = kernel._schedule(*arguments, 6.5, True)[:7]
    assert makespan == np.inf and transfers_sent == 0


def test_cutoff_for_follows_the_search_key() -> None:
    assert cutoff_for(None) == np.inf
    assert cutoff_for((5.0, 1.0)) == np.inf  # an overflowing placement loses to any that fits
    assert cutoff_for((0.0, 2.0)) == pytest.approx(2.0) and cutoff_for((0.0, 2.0)) >= 2.0


@pytest.fixture(scope="module", params=[False, True], ids=["roomy", "memory-bound"])
def pipelined_problem(request):
    """A 40-layer synthetic training graph on a mixed cluster of four devices; memory-bound:
    capacities scaled so that no device holds the model (most candidates may overflow)."""
    from rlplace.agents.improve_data import memory_bound

    graph = load_model("synthetic:layered:n=40:seed=3:training=true").graph
    cluster = resolve_cluster_spec("2xA100+2xT4")
    if request.param:
        cluster = memory_bound(cluster, graph, "pipelined")
    return graph, cluster, CostTable.build(graph, cluster)


class _CountingCuts:
    """Wraps `Simulator.score` to count the scores a cutoff cut short."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.cut = 0
        original = Simulator.score

        def score(simulator: Simulator, placement: np.ndarray, *, cutoff: float = np.inf) -> tuple[float, float]:
            result = original(simulator, placement, cutoff=cutoff)
            self.cut += int(np.isinf(result[0]))
            return result

        monkeypatch.setattr(Simulator, "score", score)


def test_local_search_takes_the_same_path_with_and_without_the_cutoff(pipelined_problem, monkeypatch: pytest.MonkeyPatch) -> None:
    graph, cluster, costs = pipelined_problem
    options = {"objective": "pipelined", "microbatches": 4, "seed": 1, "evaluations": 400}
    counter = _CountingCuts(monkeypatch)
    with_cutoff = local_search.place(graph, cluster, costs, **options)
    assert counter.cut > 0  # the search did pass its cutoff
    monkeypatch.setattr(local_search, "cutoff_for", lambda against: np.inf)
    without = local_search.place(graph, cluster, costs, **options)
    np.testing.assert_array_equal(with_cutoff, without)


def test_the_guided_search_takes_the_same_path_with_and_without_the_cutoff(pipelined_problem, monkeypatch: pytest.MonkeyPatch) -> None:
    graph, cluster, costs = pipelined_problem
    problem = build_move_problem(graph, cluster, costs, objective="pipelined", microbatches=4)
    starts = [np.zeros(problem.num_units, np.int64), np.arange(problem.num_units, dtype=np.int64) % problem.num_devices]
    counter = _CountingCuts(monkeypatch)
    best, key, stats = guided.guided_search(problem, starts, None, evaluations=400, seed=2)
    assert counter.cut > 0
    monkeypatch.setattr(guided, "cutoff_for", lambda against: np.inf)
    best_full, key_full, stats_full = guided.guided_search(problem, starts, None, evaluations=400, seed=2)
    np.testing.assert_array_equal(best, best_full)
    assert key == key_full and stats.simulations == stats_full.simulations and stats.moves_taken == stats_full.moves_taken
