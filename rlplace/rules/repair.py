"""Turn a chosen device per item into a placement the cluster can run.

- `legalize` (the env's items are groups): a device an item may not take becomes its lowest
  allowed device; then every item of a colocation unit follows the unit's first item.
- `repair_estimate`: make a (u,) unit assignment obey op times and the memory *estimate*
  (`rlplace.rules.estimate`) with few moves; greedy baselines use it (`fit_with_fallback`).
- `repair_exact`: move units off devices whose *simulated* peak memory exceeds capacity,
  keeping a move only when the simulator says the total overflow went down. The baselines'
  final check and the env's ``oom_mode="repair"`` both run it (on op units and on group units).

Shapes: N items, u units, k devices.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rlplace.cluster import Cluster
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph
from rlplace.rules.ledger import MemoryLedger, ledger_for
from rlplace.rules.units import Units
from rlplace.units import show_bytes

#: Moves `repair_exact` simulates per step before it gives up.
EXACT_REPAIR_TRIES = 8


def legalize(choice: np.ndarray, allowed: np.ndarray, first_allowed: np.ndarray, leader: np.ndarray) -> tuple[np.ndarray, int]:
    """(N,) chosen devices (any int) -> ((N,) int64 legal devices, number of choices outside ``allowed``).

    Args:
        allowed: (N, k) bool devices each item may take; first_allowed: (N,) its lowest one.
        leader: (N,) first item of each item's colocation unit (`Units.leader`).
    """
    choice = np.asarray(choice, dtype=np.int64)
    k = allowed.shape[1]
    in_range = (choice >= 0) & (choice < k)
    clipped = np.where(in_range, choice, 0)
    ok = in_range & allowed[np.arange(choice.size), clipped]
    devices = np.where(ok, clipped, first_allowed)
    return devices[leader], int(choice.size - np.count_nonzero(ok))


def repair_estimate(graph: OpGraph, cluster: Cluster, units: Units, unit_device: np.ndarray, budget: np.ndarray) -> np.ndarray:
    """Make a (u,) assignment obey op times and the memory estimate with few moves.

    First every unit on a device it cannot run on moves to the fastest device that can run it
    and has room; then, while a device is over its budget, the unit that removes the overflow
    with the least memory (or the largest unit when none does) moves to the device with the
    most room that can take it. Raises `RlplaceError` when a unit fits nowhere.
    """
    assignment = np.array(unit_device, dtype=np.int64)
    ledger = ledger_for(assignment, units, budget)
    for unit in np.flatnonzero(~units.allowed[np.arange(units.num_units), assignment]):
        ledger.remove(int(unit), int(assignment[unit]))
        options = np.flatnonzero(ledger.candidates(int(unit)))
        if options.size == 0:
            options = np.flatnonzero(units.allowed[unit])
        target = int(options[int(np.argmin(units.time[unit, options]))])
        assignment[unit] = target
        ledger.add(int(unit), target)
    for _ in range(units.num_units + 1):
        over = ledger.used - ledger.budget
        device = int(np.argmax(over))
        if over[device] <= 0:
            return assignment
        moved = _move_off(units, assignment, ledger, device, float(over[device]), ledger.room())
        if not moved:
            raise RlplaceError(
                f"cannot fit graph {graph.name!r} on cluster {cluster.name!r}: device {cluster.devices[device].name} is "
                f"{show_bytes(float(over[device]))} over its memory and no op fits elsewhere; use more or larger devices"
            )
    return assignment


def _move_off(units: Units, assignment: np.ndarray, ledger: MemoryLedger, device: int, overflow: float, room: np.ndarray) -> bool:
    """Move one unit off ``device`` to free ``overflow`` bytes; ``room`` is the free space per device."""
    for unit in units_to_move(units, assignment, device, overflow):
        options = units.allowed[unit] & (room >= units.demand[unit])
        options[device] = False
        if np.any(options):
            target = int(np.argmax(np.where(options, room, -np.inf)))
            ledger.remove(unit, device)
            ledger.add(unit, target)
            assignment[unit] = target
            return True
    return False


def repair_exact(
    units: Units,
    unit_device: np.ndarray,
    peak_memory: Callable[[np.ndarray], np.ndarray],
    capacity: np.ndarray,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Move units off devices whose simulated peak memory exceeds capacity.

    Each step takes the most overflowing device and tries, in order, up to
    ``EXACT_REPAIR_TRIES`` of its units (those whose estimated size alone covers the overflow,
    smallest first, then the others, largest first), each to the device with the most
    simulated slack it may take; the first move that lowers the total simulated overflow is
    kept. Stops when nothing overflows, no tried move helps, or after u + 1 steps.

    Args:
        unit_device: (u,) int64 device per unit.
        peak_memory: (u,) device per unit -> (k,) simulated peak bytes.
        capacity: (k,) bytes.
        allowed: (u, k) bool devices a unit may take (default ``units.allowed``).
    Returns:
        ((u,) repaired assignment, (k,) its peak bytes, number of moves kept); it fits when
        ``np.all(peak <= capacity)``.
    """
    allowed = units.allowed if allowed is None else allowed
    assignment = np.array(unit_device, dtype=np.int64)
    peak = np.asarray(peak_memory(assignment), dtype=np.float64)
    moves = 0
    for _ in range(units.num_units + 1):
        over = peak - capacity
        device = int(np.argmax(over))
        if over[device] <= 0:
            break
        total = float(np.maximum(over, 0.0).sum())
        improved = False
        for unit in units_to_move(units, assignment, device, float(over[device]))[:EXACT_REPAIR_TRIES]:
            options = allowed[unit].copy()
            options[device] = False
            if not np.any(options):
                continue
            trial = assignment.copy()
            trial[unit] = int(np.argmax(np.where(options, capacity - peak, -np.inf)))
            trial_peak = np.asarray(peak_memory(trial), dtype=np.float64)
            if float(np.maximum(trial_peak - capacity, 0.0).sum()) < total:
                assignment, peak, improved = trial, trial_peak, True
                moves += 1
                break
        if not improved:
            break
    return assignment, peak, moves


def units_to_move(units: Units, assignment: np.ndarray, device: int, overflow: float) -> list[int]:
    """Units on ``device`` with memory, those whose estimate covers ``overflow`` first (smallest first), then the rest (largest first)."""
    on_device = np.flatnonzero(assignment == device)
    on_device = on_device[units.demand[on_device] > 0]
    demand = units.demand[on_device]
    fixes = np.flatnonzero(demand >= overflow)
    rest = np.flatnonzero(demand < overflow)
    order = np.concatenate([fixes[np.argsort(demand[fixes], kind="stable")], rest[np.argsort(-demand[rest], kind="stable")]])
    return [int(on_device[i]) for i in order]
