"""Local search over *blocks* of units: the coarse level of a two-level (multilevel) search.

The graph is coarsened into at most ``max_blocks`` convex groups of ops (`rlplace.coarsen`,
the same coarsening the pipeline applies to large graphs); every colocation unit joins the
block holding most of its ops, and a block moves as a whole. `search_units` (the
``local-search`` of `rlplace.baselines.local_search`: moves, swaps, kicks) then runs over
these blocks, every candidate expanded to a full placement and scored by the *same*
simulator as the fine search (no coarse cost model). With 64 blocks of a 256-unit graph on 4
devices one descent step has ~200 candidates instead of ~800, so in the same seconds the coarse search reaches
restructurings (which run of a pipeline goes to which device) that single-unit moves from
``dp``'s split only reach through worse placements. Its answer is a start for the fine search,
which then repairs at unit granularity what whole blocks cannot express.

Shapes: u fine units, b <= ``max_blocks`` blocks, k devices, n ops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rlplace.baselines.local_search import search_units
from rlplace.coarsen import coarsen
from rlplace.graph import OpGraph
from rlplace.rules import Units
from rlplace.rules.units import members_of

#: Blocks of the coarse level (the policy pipeline's default; chosen on the validation sets
#: among 16, 32, 64, 96 and 128: docs/learned-placer-experiments.md).
DEFAULT_MAX_BLOCKS = 64


@dataclass(frozen=True)
class Blocks:
    """Fine units grouped into blocks.

    Attributes:
        units: `Units` whose items are the fine units: ``units.of_op`` (u,) block of each fine
            unit, ``demand`` (b,) summed bytes, ``allowed`` (b, k) every member can run there,
            ``time`` (b, k) summed seconds.
        fine: the fine `Units` (items = ops).
    """

    units: Units
    fine: Units

    @property
    def num_blocks(self) -> int:
        return self.units.num_units

    def to_fine(self, block_device: np.ndarray) -> np.ndarray:
        """(u,) device per fine unit from (b,) device per block."""
        return self.units.expand(block_device)

    def from_fine(self, unit_device: np.ndarray) -> np.ndarray:
        """(b,) device per block from (u,) device per fine unit: the device holding most of the
        block's time (the fastest time of each unit as its weight; ties: the lower device)."""
        k = self.fine.time.shape[1]
        votes = np.zeros((self.num_blocks, k))
        weight = np.where(self.fine.allowed, self.fine.time, np.inf).min(axis=1)
        np.add.at(votes, (self.units.of_op, np.asarray(unit_device, dtype=np.int64)), weight + 1e-30)
        votes[~self.units.allowed] = -1.0
        return votes.argmax(axis=1).astype(np.int64)


def build_blocks(graph: OpGraph, fine: Units, max_blocks: int = DEFAULT_MAX_BLOCKS) -> Blocks:
    """The fine units of ``graph`` grouped into at most ``max_blocks`` blocks (module doc)."""
    group_of_op = coarsen(graph, max_blocks).group_of
    u = fine.num_units
    k = fine.time.shape[1]
    # each unit joins the group holding most of its ops (ties: the lower group)
    ops_in_group = np.zeros((u, int(group_of_op.max()) + 1 if graph.num_ops else 1))
    np.add.at(ops_in_group, (fine.unit_of_op, group_of_op), 1.0)
    _, block_of_unit = np.unique(ops_in_group.argmax(axis=1), return_inverse=True)
    block_of_unit = block_of_unit.reshape(-1).astype(np.int64)
    b = int(block_of_unit.max()) + 1 if u else 0
    members = members_of(block_of_unit, b)
    time = np.zeros((b, k))
    np.add.at(time, block_of_unit, fine.time)
    blocks = Units(
        of_op=block_of_unit,
        first_op=np.array([m[0] for m in members], dtype=np.int64),
        members=members,
        demand=np.bincount(block_of_unit, weights=fine.demand, minlength=b),
        allowed=np.isfinite(time),
        time=time,
    )
    return Blocks(units=blocks, fine=fine)


class _FineSimulator:
    """The fine simulator seen through blocks: placements arrive as (u,) device per fine unit
    (what ``Blocks.units.expand`` gives) and are scored as full (n,) placements."""

    def __init__(self, simulator: Any, fine: Units) -> None:
        self._simulator = simulator
        self._fine = fine

    def score(self, unit_device: np.ndarray, *, cutoff: float = np.inf) -> tuple[float, float]:
        return self._simulator.score(self._fine.to_ops(unit_device), cutoff=cutoff)

    def run(self, unit_device: np.ndarray) -> Any:
        """The simulation's result with ``critical_path`` as fine-unit ids (what the local
        search's critical-path focus indexes ``units.of_op`` with)."""
        result = self._simulator.run(self._fine.to_ops(unit_device))
        return _Path(self._fine.unit_of_op[np.asarray(result.critical_path, dtype=np.int64)])


@dataclass(frozen=True)
class _Path:
    critical_path: np.ndarray


def block_search(
    blocks: Blocks,
    budget: np.ndarray,
    simulator: Any,
    starts: list[np.ndarray],
    *,
    objective: str,
    evaluations: int,
    deadline: float | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, int]:
    """`search_units` over ``blocks`` from (u,) fine-unit ``starts`` (each turned into a block
    assignment by `Blocks.from_fine`), scored by the fine ``simulator``; ``budget`` (k,) bytes of
    the memory estimate. Returns (the best (u,) fine-unit assignment found, simulations made).
    Stops after ``evaluations`` simulations or at ``deadline`` (`time.perf_counter` seconds)."""
    block_starts = [blocks.from_fine(start) for start in starts]
    best, made = search_units(
        blocks.units, budget, _FineSimulator(simulator, blocks.fine), block_starts, objective=objective, evaluations=evaluations, deadline=deadline, seed=seed
    )
    return blocks.to_fine(best), made
