"""The ranked scan of `rlplace.baselines.local_search.search_units` and the block phase that uses it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlplace.baselines import local_search
from rlplace.baselines.block_search import build_blocks
from rlplace.baselines.local_search import search_units
from tests.test_block_search import chain_problem


class CountingSimulator:
    """Scores an (n,) placement as (step time = ops off device 0 - bonus, overflow 0) and keeps
    every placement it scored: with ``bonus_unit`` None every move off device 0 is worse, so the
    all-on-0 start is the optimum."""

    def __init__(self, bonus_op: int | None = None) -> None:
        self.seen: list[np.ndarray] = []
        self.bonus_op = bonus_op

    def score(self, placement: np.ndarray, *, cutoff: float = np.inf) -> tuple[float, float]:
        placement = np.asarray(placement)
        self.seen.append(placement.copy())
        value = float(np.count_nonzero(placement))
        if self.bonus_op is not None and placement[self.bonus_op] == 1:
            value -= 1.5  # this one move improves: 1 - 1.5 < 0
        return value, 0.0

    def run(self, placement: np.ndarray):  # the random scan's critical-path focus; the ranked scan never asks
        raise AssertionError("the ranked scan must not simulate a critical path")


@pytest.fixture
def plain_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    """No random positions and no interleaved swaps: the ranked scan is the ranking alone."""
    monkeypatch.setattr(local_search, "RANKED_RANDOM_SHARE", 0.0)
    monkeypatch.setattr(local_search, "SWAP_PROBABILITY", 0.0)


def moved_unit(units, placement: np.ndarray) -> int:
    """The one unit a candidate placement has off device 0."""
    (unit,) = np.flatnonzero(units.contract(placement) != 0)
    return int(unit)


def test_the_ranked_scan_tries_the_best_ranked_moves_in_order_and_kicks_after_its_length(plain_scan: None) -> None:
    problem = chain_problem()
    units = problem.units
    u = units.num_units
    simulator = CountingSimulator()
    calls: list[np.ndarray] = []

    def rank(assignment: np.ndarray) -> np.ndarray:
        calls.append(assignment.copy())
        return np.tile(np.arange(u, dtype=float)[:, None], (1, 2))  # higher unit id first

    start = np.zeros(u, dtype=np.int64)
    search_units(units, problem.budget, simulator, [start], objective="latency", evaluations=1 + local_search.RANKED_SCAN + 1, seed=0, rank=rank)
    scanned = simulator.seen[1 : 1 + local_search.RANKED_SCAN]
    assert [moved_unit(units, p) for p in scanned] == list(range(u - 1, u - 1 - local_search.RANKED_SCAN, -1))
    # then a kick (random units to random devices), not the 49th-ranked move, and no new ranking yet
    kicked = units.contract(simulator.seen[-1])
    assert not (np.count_nonzero(kicked) == 1 and int(np.flatnonzero(kicked)[0]) == u - 1 - local_search.RANKED_SCAN)
    assert len(calls) == 1


def test_a_taken_move_keeps_the_order_without_the_moved_units_moves(plain_scan: None) -> None:
    problem = chain_problem()
    units = problem.units
    u = units.num_units
    top = u - 1
    simulator = CountingSimulator(bonus_op=int(units.first_op[top]))
    calls: list[int] = []

    def rank(assignment: np.ndarray) -> np.ndarray:
        calls.append(1)
        return np.tile(np.arange(u, dtype=float)[:, None], (1, 2))

    start = np.zeros(u, dtype=np.int64)
    best, _ = search_units(units, problem.budget, simulator, [start], objective="latency", evaluations=5, seed=0, rank=rank)
    assert best[top] == 1 and np.count_nonzero(best) == 1  # the top-ranked move improved and was taken
    after = [units.contract(p) for p in simulator.seen[2:]]
    # the same order goes on: the next candidates add u-2, u-3, ... to the taken move, with no new ranking
    assert [int(np.flatnonzero(a)[np.flatnonzero(a) != top][0]) for a in after] == [u - 2, u - 3, u - 4]
    assert all(a[top] == 1 for a in after) and len(calls) == 1


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), evaluations=st.integers(1, 120))
def test_the_ranked_search_is_never_worse_than_its_best_start(seed: int, evaluations: int) -> None:
    problem = chain_problem()
    rng = np.random.default_rng(seed)
    starts = [rng.integers(0, 2, problem.num_units) for _ in range(2)]
    best, made = search_units(
        problem.units, problem.budget, problem.simulator, starts, objective="latency", evaluations=evaluations, seed=seed,
        rank=lambda assignment: rng.random((problem.num_units, 2)),
    )  # fmt: skip
    assert made <= max(evaluations, len(starts))
    assert problem.score(best) <= min(problem.score(s) for s in starts)


def test_a_blocks_move_scores_the_mean_of_its_units_scores() -> None:
    problem = chain_problem()
    blocks = build_blocks(problem.graph, problem.units, max_blocks=8)
    scores = np.random.default_rng(0).normal(size=(problem.num_units, 2))
    block_scores = blocks.mean_scores(scores)
    for block, members in enumerate(blocks.units.members):
        assert np.allclose(block_scores[block], scores[members].mean(axis=0))


def test_the_block_phase_ranks_by_the_ranker_and_the_ablation_at_random(monkeypatch: pytest.MonkeyPatch) -> None:
    import agents.guided_search as guided

    problem = chain_problem()
    start = np.zeros(problem.num_units, dtype=np.int64)
    seen: list[int] = []

    def ranker(problem_, assignment, observation):  # type: ignore[no-untyped-def]
        seen.append(1)
        return np.zeros(problem_.num_units * problem_.num_devices)

    monkeypatch.setattr(guided, "BLOCK_RANK", "ranked")
    assert guided._block_ranking(problem, None, 0) is not None  # the ablation: a random ranking, not the random scan
    block_calls_before = len(seen)
    guided.search_from_starts(problem, [start], ranker, evaluations=200, seed=0, block_share=0.3, max_blocks=8)
    assert len(seen) > block_calls_before
    monkeypatch.setattr(guided, "BLOCK_RANK", None)
    assert guided._block_ranking(problem, ranker, 0) is None
    monkeypatch.setattr(guided, "BLOCK_RANK", "random")
    random_rank = guided._block_ranking(problem, ranker, 0)
    assert random_rank is not None
    count = len(seen)
    scores = random_rank(start)
    assert scores.shape == (problem.num_units, problem.num_devices) and len(seen) == count
