"""Where the env's step times come from, and how a step time becomes a reward.

A `RewardSource` scores a placement of the *full* graph: ``evaluate(placement) ->
(step_time, overflow_bytes)``. The default, `SimulatorRewardSource`, asks rlplace's event
simulator; a measured source (real devices) plugs in through the same protocol with a
factory ``(graph, cluster, costs, *, objective, microbatches) -> RewardSource`` passed as the
env's ``reward_source``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph


@runtime_checkable
class RewardSource(Protocol):
    """Scores placements of one (graph, cluster) pair."""

    def evaluate(self, placement: np.ndarray) -> tuple[float, float]:
        """(step time in the graph's time unit, total bytes over capacity summed over devices)
        for ``placement``, an (n,) int64 device per op of the full graph."""
        ...


RewardSourceFactory = Callable[..., RewardSource]
"""``factory(graph, cluster, costs, *, objective, microbatches) -> RewardSource``."""


class SimulatorRewardSource:
    """The default reward source: `rlplace.simulate.Simulator.score` on the full graph."""

    def __init__(self, simulator: Any) -> None:
        self.simulator = simulator

    def evaluate(self, placement: np.ndarray) -> tuple[float, float]:
        step_time, overflow = self.simulator.score(placement)
        return float(step_time), float(overflow)


def make_reward_source(
    spec: str | RewardSourceFactory, simulator: Any, graph: OpGraph, cluster: Cluster, costs: CostTable, *, objective: str, microbatches: int
) -> RewardSource:
    """The reward source named by ``spec`` (``"simulator"``) or built by a factory."""
    if spec == "simulator":
        return SimulatorRewardSource(simulator)
    if callable(spec):
        source = spec(graph, cluster, costs, objective=objective, microbatches=microbatches)
        if not isinstance(source, RewardSource):
            raise RlplaceError(f"reward_source factory returned {type(source).__name__}, which has no evaluate(placement) method")
        return source
    raise RlplaceError(f"unknown reward_source {spec!r}; use 'simulator' or a factory (graph, cluster, costs, *, objective, microbatches) -> RewardSource")


def terminal_reward(step_time: float, reference_time: float) -> float:
    """``(T_ref - T) / T_ref``: 0 for the reference heuristic, 0.5 for twice as fast, -1 for twice as slow."""
    return (reference_time - step_time) / reference_time


def oom_reward(step_time: float, reference_time: float, overflow_fraction: float, penalty: float) -> float:
    """Reward of a complete placement that overflows memory after any repair.

    ``min(terminal_reward, 0) - penalty * (1 + overflow_fraction)``: never above ``-penalty``,
    worse the more bytes overflow (as a fraction of the cluster's finite capacity) and the
    slower the placement is, so a feasible placement no slower than the reference always wins.
    """
    return min(terminal_reward(step_time, reference_time), 0.0) - penalty * (1.0 + overflow_fraction)


def dead_end_reward(unplaced_fraction: float, penalty: float) -> float:
    """Reward when a sequential episode stops because no device has room for the next group:
    ``-penalty * (1 + unplaced_fraction)``, so getting further before the dead end is better."""
    return -penalty * (1.0 + unplaced_fraction)
