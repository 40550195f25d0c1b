"""The block-level search (`rlplace.baselines.block_search`) and its place in the policy pipeline."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlplace.baselines.block_search import block_search, build_blocks
from rlplace.cluster import Cluster, Device
from rlplace.costs import CostTable
from rlplace.envs.improve_state import build_move_problem
from rlplace.graph import OpGraph

CHAIN = 40
STEP = 1.0  # time units per op
TINY = 1e-6


def two_chains() -> OpGraph:
    """Two independent chains of ``CHAIN`` ops, each op ``STEP`` long, nearly free edges: on two
    equal devices the best latency is one chain per device, ``CHAIN * STEP``; all on one device
    takes ``2 * CHAIN * STEP``."""
    ops = [dict(name=f"{chain}{i}", times={"accelerator": STEP}) for chain in "ab" for i in range(CHAIN)]
    edges = [dict(src=f"{chain}{i}", dst=f"{chain}{i + 1}", bytes=1.0, time=TINY) for chain in "ab" for i in range(CHAIN - 1)]
    return OpGraph.build(ops, edges, name="two-chains", time_classes=("accelerator",), time_unit="unit")


def two_devices() -> Cluster:
    devices = tuple(Device(f"g{i}", "custom", "accelerator", 1e12, 1e12, 1e12, 1e11) for i in range(2))
    return Cluster("pair", devices, np.array([[np.inf, 1e9], [1e9, np.inf]]), np.zeros((2, 2)))


def chain_problem():
    graph = two_chains()
    cluster = two_devices()
    return build_move_problem(graph, cluster, CostTable.build(graph, cluster), objective="latency")


def spy(monkeypatch: pytest.MonkeyPatch, module: object, name: str, on_call: Callable[..., object]) -> None:
    """Replace ``module.name`` for the test by a wrapper that calls ``on_call(*args, **kwargs)``
    and then the real function."""
    real = getattr(module, name)

    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        on_call(*args, **kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


def keep_starts(seen: dict[str, list[np.ndarray]], key: str, position: int) -> Callable[..., None]:
    """An ``on_call`` for `spy` that stores copies of the positional argument ``position``
    (a search's starts) under ``seen[key]``."""

    def on_call(*args: object, **_: object) -> None:
        seen[key] = [np.asarray(start).copy() for start in args[position]]  # type: ignore[attr-defined]

    return on_call


def test_blocks_partition_the_units_and_sum_their_members() -> None:
    problem = chain_problem()
    blocks = build_blocks(problem.graph, problem.units, max_blocks=8)
    members = np.concatenate(blocks.units.members)
    assert sorted(members.tolist()) == list(range(problem.num_units))  # every unit in exactly one block
    assert 2 <= blocks.num_blocks <= 8
    for block, units in enumerate(blocks.units.members):
        assert blocks.units.demand[block] == pytest.approx(problem.units.demand[units].sum())
        assert np.allclose(blocks.units.time[block], problem.units.time[units].sum(axis=0))
        assert np.array_equal(blocks.units.allowed[block], problem.units.allowed[units].all(axis=0))
    # a block never mixes the two independent chains (the coarsening groups along edges)
    for units in blocks.units.members:
        chains = {problem.graph.names[int(problem.units.first_op[u])][0] for u in units}
        assert len(chains) == 1


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 1), min_size=8, max_size=8))
def test_a_block_assignment_survives_the_round_trip_through_units(devices: list[int]) -> None:
    problem = chain_problem()
    blocks = build_blocks(problem.graph, problem.units, max_blocks=8)
    assignment = np.array(devices[: blocks.num_blocks], dtype=np.int64)
    fine = blocks.to_fine(assignment)
    assert fine.shape == (problem.num_units,)
    assert np.array_equal(blocks.from_fine(fine), assignment)


def test_block_search_finds_one_chain_per_device_from_all_on_one() -> None:
    """From everything on device 0 (2 * CHAIN), moving whole blocks reaches the optimum CHAIN,
    every block's units stay together, and the answer is never worse than its start."""
    problem = chain_problem()
    blocks = build_blocks(problem.graph, problem.units, max_blocks=8)
    start = np.zeros(problem.num_units, dtype=np.int64)
    assert problem.score(start)[1] == pytest.approx(2 * CHAIN * STEP)
    found, made = block_search(blocks, problem.budget, problem.simulator, [start], objective="latency", evaluations=300, seed=0)
    assert 1 <= made <= 300
    assert np.array_equal(blocks.to_fine(blocks.from_fine(found)), found)
    assert problem.score(found)[1] == pytest.approx(CHAIN * STEP, abs=1e-3)


def test_the_block_phase_counts_within_the_simulation_budget() -> None:
    """With a simulation budget the block phase's simulations are part of it (two equal
    devices: no polish past the budget), and the answer is never worse than the starts."""
    from rlplace.agents.guided_search import search_from_starts

    problem = chain_problem()
    starts = [np.zeros(problem.num_units, dtype=np.int64)]
    best, stats = search_from_starts(problem, starts, None, evaluations=200, seed=1, block_share=0.3, max_blocks=8)
    assert stats.simulations == 200
    assert problem.score(best) <= problem.score(starts[0])
    again, _ = search_from_starts(problem, starts, None, evaluations=200, seed=1, block_share=0.3, max_blocks=8)
    assert np.array_equal(best, again)  # one seed, one answer
    with pytest.raises(ValueError, match="block_share"):
        search_from_starts(problem, starts, None, evaluations=200, seed=1, block_share=0.5, max_blocks=8)


def test_the_block_phase_never_runs_past_the_decisions_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a time budget the block phase gets ``block_share`` of it from its own start, but
    its deadline is never later than ``began`` + ``budget_s``: starts that took most of the
    budget cut the phase instead of overrunning the decision."""
    import time

    import rlplace.agents.guided_search as guided
    import rlplace.baselines.block_search as block_module

    deadlines: list[float | None] = []
    called: list[float] = []

    def record(*args: object, deadline: float | None = None, **kwargs: object) -> None:
        deadlines.append(deadline)
        called.append(time.perf_counter())

    spy(monkeypatch, block_module, "block_search", record)
    problem = chain_problem()
    starts = [np.zeros(problem.num_units, dtype=np.int64)]
    budget_s = 100.0
    fresh = time.perf_counter()
    guided.search_from_starts(problem, starts, None, evaluations=120, budget_s=budget_s, began=fresh, seed=0, block_share=0.3, max_blocks=8)
    # its whole share from its own start (local search's run before it may take a while: a
    # fresh clone compiles numba kernels on first use)
    assert called[-1] + 0.3 * budget_s < fresh + budget_s
    assert deadlines[-1] == pytest.approx(called[-1] + 0.3 * budget_s, abs=1.0)
    late = time.perf_counter() - 0.99 * budget_s  # the starts "took" 99 % of the budget
    guided.search_from_starts(problem, starts, None, evaluations=120, budget_s=budget_s, began=late, seed=0, block_share=0.3, max_blocks=8)
    assert deadlines[-1] == late + budget_s


def test_local_search_first_runs_it_before_the_block_phase_and_changes_no_simulation_budget_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """`LOCAL_SEARCH_FIRST` orders the two first phases (local search's run, then the block
    phase); each has its own simulations and seed, so under a simulation budget the answer
    is the same in either order."""
    import rlplace.agents.guided_search as guided
    import rlplace.baselines.block_search as block_module
    import rlplace.baselines.local_search as local_search

    calls: list[str] = []
    spy(monkeypatch, local_search, "search_units", lambda *args, **kwargs: calls.append("local"))
    spy(monkeypatch, block_module, "block_search", lambda *args, **kwargs: calls.append("blocks"))
    problem = chain_problem()
    starts = [np.zeros(problem.num_units, dtype=np.int64)]
    answers = {}
    for first in (False, True):
        monkeypatch.setattr(guided, "LOCAL_SEARCH_FIRST", first)
        calls.clear()
        answers[first] = guided.search_from_starts(problem, starts, None, evaluations=200, seed=1, block_share=0.3, max_blocks=8)
        assert calls == (["local", "blocks"] if first else ["blocks", "local"])
    assert np.array_equal(answers[False][0], answers[True][0])
    assert answers[False][1].simulations == answers[True][1].simulations == 200


def test_no_block_phase_when_there_are_no_more_units_than_blocks() -> None:
    """``max_blocks`` >= the units: the phase is skipped, the search is the one without it."""
    from rlplace.agents.guided_search import search_from_starts

    problem = chain_problem()
    starts = [np.zeros(problem.num_units, dtype=np.int64)]
    without, plain = search_from_starts(problem, starts, None, evaluations=120, seed=3)
    skipped, stats = search_from_starts(problem, starts, None, evaluations=120, seed=3, block_share=0.3, max_blocks=problem.num_units)
    assert np.array_equal(without, skipped)
    assert stats.simulations == plain.simulations


def test_local_search_phase_never_sees_the_block_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The local-search run inside the pipeline starts from the classic starts only (so the
    answer is never worse than local-search's own run), while the guided search gets the block
    answer among its starts."""
    import rlplace.agents.guided_search as guided
    import rlplace.baselines.local_search as local_search

    seen: dict[str, list[np.ndarray]] = {}
    spy(monkeypatch, local_search, "search_units", keep_starts(seen, "local", 3))
    spy(monkeypatch, guided, "guided_search", keep_starts(seen, "guided", 1))
    problem = chain_problem()
    start = np.zeros(problem.num_units, dtype=np.int64)
    guided.search_from_starts(problem, [start], None, evaluations=160, seed=4, block_share=0.3, max_blocks=4)
    assert len(seen["local"]) == 1 and np.array_equal(seen["local"][0], start)
    assert len(seen["guided"]) == 3  # local search's answer, the block answer, the start
    block_answer = seen["guided"][1]
    assert problem.score(block_answer)[1] < problem.score(start)[1]  # the block phase moved off all-on-one


def test_extra_starts_reach_the_block_and_guided_phases_but_never_local_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """``extra_starts`` (the policy's METIS restarts) are starts of the block search and the
    guided search; local search's own run still sees the classic starts alone."""
    import rlplace.agents.guided_search as guided
    import rlplace.baselines.block_search as block_module
    import rlplace.baselines.local_search as local_search

    seen: dict[str, list[np.ndarray]] = {}
    spy(monkeypatch, local_search, "search_units", keep_starts(seen, "local", 3))
    spy(monkeypatch, block_module, "block_search", keep_starts(seen, "block", 3))
    spy(monkeypatch, guided, "guided_search", keep_starts(seen, "guided", 1))
    problem = chain_problem()
    start = np.zeros(problem.num_units, dtype=np.int64)
    extra = np.arange(problem.num_units, dtype=np.int64) % 2
    guided.search_from_starts(problem, [start], None, evaluations=160, seed=4, block_share=0.3, max_blocks=4, extra_starts=[extra])
    assert len(seen["local"]) == 1 and np.array_equal(seen["local"][0], start)
    assert len(seen["block"]) == 2 and np.array_equal(seen["block"][1], extra)
    assert len(seen["guided"]) == 4 and np.array_equal(seen["guided"][3], extra)  # LS answer, block answer, start, extra


def test_the_policy_draws_its_metis_restarts_from_each_members_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every portfolio member runs METIS at `METIS_RESTARTS` seeds of its own (distinct, and other
    than the classic start's), and hands them to phases 2-3 as extra starts."""
    import rlplace.agents.guided_search as guided
    import rlplace.baselines as baselines
    import rlplace.policy_method as policy_method
    from rlplace.load import load_model

    metis_seeds: list[int] = []
    extra_counts: list[int] = []
    real_metis = baselines.METHODS["metis"]

    def recording_metis(*args, seed: int = 0, **kwargs):  # type: ignore[no-untyped-def]
        metis_seeds.append(seed)
        return real_metis(*args, seed=seed, **kwargs)

    monkeypatch.setitem(baselines.METHODS, "metis", recording_metis)  # a dict entry: not `spy`'s attribute
    spy(monkeypatch, guided, "search_from_starts", lambda *args, extra_starts=(), **kwargs: extra_counts.append(len(extra_starts)))
    graph = load_model("synthetic:layered:n=30:seed=2").graph
    cluster = Cluster("four", tuple(Device(f"g{i}", "custom", "accelerator", 1e12, 1e12, 1e12, 1e11) for i in range(4)), np.full((4, 4), 1e9), np.zeros((4, 4)))
    costs = CostTable.build(graph, cluster)
    for seed in (0, 1):
        policy_method.search(graph, cluster, costs, seed=seed, evaluations=50, random_order=True)
    per_call = guided.METIS_RESTARTS + 1
    assert len(metis_seeds) == 2 * per_call and extra_counts == [guided.METIS_RESTARTS] * 2
    first, second = metis_seeds[:per_call], metis_seeds[per_call:]
    assert first[0] == 0 and second[0] == 1  # the classic start keeps the decision's seed
    assert len(set(first[1:])) == guided.METIS_RESTARTS and not set(first[1:]) & set(second[1:])
