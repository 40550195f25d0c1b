"""Tabu search on the ``throughput`` (max-load) objective, with moves scored incrementally.

The max-load model (`rlplace._simkernel.max_load`) is a sum of per-op contributions: an op
adds its time to its device and, when it has consumers elsewhere, its transfer cost to each
receiving device and the largest of those to its own. Moving one unit changes only the
contributions of the unit's ops and of their predecessors, so a move is scored by taking
those out of the (k,) loads and putting them back under the new device: O(ops touched x
(degree + k)) instead of a whole simulation. That makes every legal move of every unit that
can change the busiest device's load cheap enough to score at each step.

The search (a classic tabu search for min-max partitioning): at each step take the best
scored move, better or not, ranked by (max load, sum of squared loads) so that it walks the
max-load objective's plateaus toward balance; a unit may not go back to the device it left
for a random tenure of steps unless that gives a new best (aspiration); memory is the
estimate's static sum (`rlplace.rules`), so a move that overfills a device is never scored.
After ``patience`` steps without a new best it restarts from the best with a few random
legal moves (a kick). Loads are recomputed from scratch after every step taken, so rounding
never accumulates.

Shapes: n items (ops of the working graph), u units, k devices; times in the graph's unit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from numba import njit

from rlplace._simkernel import max_load, max_load_contribution
from rlplace.errors import RlplaceError
from rlplace.rules import Units
from rlplace.simulate import MaxLoadTables, Simulator

#: Steps one compiled call runs before the clock is checked (a few ms on 256 units x 16 devices).
STEPS_PER_CALL = 64
#: Steps without a new best before a kick: max(MIN_PATIENCE, PATIENCE_PER_UNIT x units).
PATIENCE_PER_UNIT = 2.0
MIN_PATIENCE = 50
#: Random legal moves per kick.
KICK_SIZE = 8
#: A unit may not return to the device it left for TENURE_MIN + rand(0..spread) steps, spread =
#: max(2, TENURE_SPREAD_PER_UNIT x units).
TENURE_MIN = 5
TENURE_SPREAD_PER_UNIT = 0.1


@njit(cache=True)
def _score_move(
    x: int, d: int, load: np.ndarray, scratch: np.ndarray, spare: np.ndarray, assign: np.ndarray, p: np.ndarray,
    member_ptr: np.ndarray, member_op: np.ndarray, touch_ptr: np.ndarray, touch_op: np.ndarray,
    succ_ptr: np.ndarray, succ_op: np.ndarray, succ_edge: np.ndarray, op_time: np.ndarray, edge_time: np.ndarray, link_class: np.ndarray, is_cpu: np.ndarray,
) -> tuple[float, float]:  # fmt: skip
    """(max load, sum of squared loads) once unit ``x`` is on device ``d``, from the (k,) loads
    ``load`` of (u,) ``assign`` / (n,) ``p`` (left as they were); ``scratch`` (k,) receives the
    new loads, ``spare`` is `max_load_contribution`'s scratch."""
    for t in range(load.shape[0]):
        scratch[t] = load[t]
    for j in range(touch_ptr[x], touch_ptr[x + 1]):
        max_load_contribution(touch_op[j], p, -1.0, scratch, spare, succ_ptr, succ_op, succ_edge, op_time, edge_time, link_class, is_cpu)
    for j in range(member_ptr[x], member_ptr[x + 1]):
        p[member_op[j]] = d
    for j in range(touch_ptr[x], touch_ptr[x + 1]):
        max_load_contribution(touch_op[j], p, 1.0, scratch, spare, succ_ptr, succ_op, succ_edge, op_time, edge_time, link_class, is_cpu)
    for j in range(member_ptr[x], member_ptr[x + 1]):
        p[member_op[j]] = assign[x]
    top_value = 0.0
    squares = 0.0
    for t in range(load.shape[0]):
        if scratch[t] > top_value:
            top_value = scratch[t]
        squares += scratch[t] * scratch[t]
    return top_value, squares


@njit(cache=True)
def _put(x: int, d: int, assign: np.ndarray, p: np.ndarray, used: np.ndarray, demand: np.ndarray, member_ptr: np.ndarray, member_op: np.ndarray) -> None:
    """Unit ``x`` onto device ``d``: (u,) ``assign``, its ops in (n,) ``p`` and the (k,) bytes ``used``."""
    used[assign[x]] -= demand[x]
    used[d] += demand[x]
    assign[x] = d
    for j in range(member_ptr[x], member_ptr[x + 1]):
        p[member_op[j]] = d


@njit(cache=True)
def _tabu_steps(
    assign: np.ndarray, p: np.ndarray, tabu_until: np.ndarray, step0: int, steps: int, best_assign: np.ndarray, best_value: float, stale: int,
    patience: int, kick_size: int, tenure_low: int, tenure_high: int, seed: int,
    member_ptr: np.ndarray, member_op: np.ndarray, touch_ptr: np.ndarray, touch_op: np.ndarray, near_ptr: np.ndarray, near_op: np.ndarray,
    allowed: np.ndarray, demand: np.ndarray, budget: np.ndarray,
    succ_ptr: np.ndarray, succ_op: np.ndarray, succ_edge: np.ndarray, op_time: np.ndarray, edge_time: np.ndarray, link_class: np.ndarray, is_cpu: np.ndarray,
) -> tuple[float, int]:  # fmt: skip
    """Run ``steps`` tabu steps from (u,) ``assign`` / (n,) ``p`` (both updated in place);
    ``best_assign`` and the returned (best value, steps without a new best) carry over calls."""
    np.random.seed(seed)
    u, k = allowed.shape
    used = np.zeros(k)
    for x in range(u):
        used[assign[x]] += demand[x]
    load = max_load(p.shape[0], k, succ_ptr, succ_op, succ_edge, op_time, edge_time, link_class, p, is_cpu)[0]
    scratch = np.empty(k)
    spare = np.full(k, -1.0)
    for step in range(step0, step0 + steps):
        if stale >= patience:
            # Kick: back to the best, then a few random legal moves.
            for x in range(u):
                if assign[x] != best_assign[x]:
                    _put(x, best_assign[x], assign, p, used, demand, member_ptr, member_op)
            for _ in range(kick_size):
                x = np.random.randint(u)
                d = np.random.randint(k)
                if d == assign[x] or not allowed[x, d] or used[d] + demand[x] > budget[d]:
                    continue
                _put(x, d, assign, p, used, demand, member_ptr, member_op)
            load = max_load(p.shape[0], k, succ_ptr, succ_op, succ_edge, op_time, edge_time, link_class, p, is_cpu)[0]
            stale = 0
        top = 0
        for d in range(1, k):
            if load[d] > load[top]:
                top = d
        chosen_x, chosen_d = -1, -1
        chosen_max, chosen_sq = np.inf, np.inf
        for x in range(u):
            a = assign[x]
            # Only a unit on the busiest device, or one next to an op there, can change its load.
            relevant = a == top
            if not relevant:
                for j in range(near_ptr[x], near_ptr[x + 1]):
                    if p[near_op[j]] == top:
                        relevant = True
                        break
            if not relevant:
                continue
            for d in range(k):
                if d == a or not allowed[x, d] or used[d] + demand[x] > budget[d]:
                    continue
                top_value, squares = _score_move(x, d, load, scratch, spare, assign, p, member_ptr, member_op, touch_ptr, touch_op,
                                                 succ_ptr, succ_op, succ_edge, op_time, edge_time, link_class, is_cpu)
                if tabu_until[x, d] > step and not top_value < best_value * (1.0 - 1e-12):
                    continue
                if top_value < chosen_max * (1.0 - 1e-12) or (top_value <= chosen_max * (1.0 + 1e-12) and squares < chosen_sq):
                    chosen_x, chosen_d, chosen_max, chosen_sq = x, d, top_value, squares
        if chosen_x < 0:
            stale = patience
            continue
        a = assign[chosen_x]
        _put(chosen_x, chosen_d, assign, p, used, demand, member_ptr, member_op)
        tabu_until[chosen_x, a] = step + tenure_low + np.random.randint(tenure_high - tenure_low + 1)
        load = max_load(p.shape[0], k, succ_ptr, succ_op, succ_edge, op_time, edge_time, link_class, p, is_cpu)[0]
        value = load.max()
        if value < best_value * (1.0 - 1e-12):
            best_value = value
            best_assign[:] = assign
            stale = 0
        else:
            stale += 1
    return best_value, stale


def _csr(lists: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(ptr (len+1,), flat) int64 of a list of int arrays."""
    ptr = np.zeros(len(lists) + 1, dtype=np.int64)
    ptr[1:] = np.cumsum([len(a) for a in lists])
    flat = np.concatenate(lists).astype(np.int64) if lists else np.zeros(0, dtype=np.int64)
    return ptr, flat


@dataclass(frozen=True, eq=False)
class UnitTables:
    """Per-unit op lists of a tabu search (CSR, int64; u units): ``member`` the unit's ops,
    ``touch`` the ops whose contribution a move of the unit changes (its ops and their
    producers), ``near`` the ops next to the unit's (producers and consumers, its own left out)."""

    member_ptr: np.ndarray
    member_op: np.ndarray
    touch_ptr: np.ndarray
    touch_op: np.ndarray
    near_ptr: np.ndarray
    near_op: np.ndarray


def unit_tables(tables: MaxLoadTables, units: Units) -> UnitTables:
    """`UnitTables` of ``units`` over the graph of ``tables``."""
    empty = np.zeros(0, dtype=np.int64)
    touch, near = [], []
    for members in units.members:
        preds = np.concatenate([tables.pred_op[tables.pred_ptr[i] : tables.pred_ptr[i + 1]] for i in members] + [empty])
        succs = np.concatenate([tables.succ_op[tables.succ_ptr[i] : tables.succ_ptr[i + 1]] for i in members] + [empty])
        touch.append(np.union1d(members, preds))
        near.append(np.setdiff1d(np.union1d(preds, succs), members))
    return UnitTables(*_csr(list(units.members)), *_csr(touch), *_csr(near))


def tabu_search(
    simulator: Simulator,
    units: Units,
    budget: np.ndarray,
    start: np.ndarray,
    *,
    deadline: float,
    seed: int = 0,
    patience: int | None = None,
    kick_size: int | None = None,
) -> tuple[np.ndarray, float, int]:
    """Tabu search (module docstring) from the (u,) unit assignment ``start`` until
    ``deadline`` (`time.perf_counter` seconds; checked every `STEPS_PER_CALL` steps, and those
    first steps always run), on ``simulator`` (a ``throughput``
    `rlplace.simulate.Simulator` whose ops ``units`` partitions) under the (k,) memory
    ``budget`` (bytes, the estimate's; ``start`` must fit it). ``patience``: steps without a new
    best before a kick (default from `PATIENCE_PER_UNIT` and `MIN_PATIENCE`); ``kick_size``:
    random moves per kick (default `KICK_SIZE`).
    Returns (best (u,) assignment, its max load in the graph's time unit, steps run)."""
    if simulator.objective != "throughput":
        raise RlplaceError(f"max-load tabu search: the simulator's objective is {simulator.objective!r}; it needs 'throughput'")
    if units.item_of_op is not None:
        raise RlplaceError("max-load tabu search: units over grouped ops are not supported; give units over the simulator's ops")
    tables = simulator.max_load_tables()
    lists = unit_tables(tables, units)
    u, k = units.num_units, simulator.num_devices
    assign = np.asarray(start, dtype=np.int64).copy()
    p = units.expand(assign).astype(np.int64)
    best_assign = assign.copy()
    best_value = float(simulator.step_time(p))
    if k < 2 or u == 0:
        return best_assign, best_value, 0  # no move to make
    tabu_until = np.zeros((u, k), dtype=np.int64)
    patience = max(MIN_PATIENCE, int(PATIENCE_PER_UNIT * u)) if patience is None else patience
    kick_size = KICK_SIZE if kick_size is None else kick_size
    tenure_low, tenure_high = TENURE_MIN, TENURE_MIN + max(2, int(TENURE_SPREAD_PER_UNIT * u))
    stale = 0
    step = 0
    rng = np.random.default_rng(seed)
    allowed = np.ascontiguousarray(units.allowed)
    demand = np.asarray(units.demand, dtype=np.float64)
    budget = np.asarray(budget, dtype=np.float64)
    while True:
        # The first call always runs (a few ms at most), so the kernel is always loaded
        # (`rlplace.policy_method.warm_up` counts on it) and a search started late still searches.
        best_value, stale = _tabu_steps(
            assign, p, tabu_until, step, STEPS_PER_CALL, best_assign, best_value, stale, patience, kick_size, tenure_low, tenure_high, int(rng.integers(2**31)),
            lists.member_ptr, lists.member_op, lists.touch_ptr, lists.touch_op, lists.near_ptr, lists.near_op, allowed, demand, budget,
            tables.succ_ptr, tables.succ_op, tables.succ_edge, tables.op_time, tables.edge_time, tables.link_class, tables.is_cpu,
        )  # fmt: skip
        step += STEPS_PER_CALL
        if time.perf_counter() >= deadline:
            return best_assign, float(best_value), step
