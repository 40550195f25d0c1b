"""`MemoryLedger`: bytes committed per device under the memory estimate, item by item (one memory model).

Items are the baselines' colocation units or the env's groups. The bound a ledger keeps for
device d (`rlplace.rules.estimate` is the model) is

    bound[d] = used[d] + work_peak[d]
    used[d]  = sum over items on d of demand            (resident, plus outputs kept alive)
             + one received copy of ``export[a]`` per producer a of an item on d, a not on d
               (only when ``producers`` and ``export`` are given: the env's sequential form)
    work_peak[d] = max ``work`` of an item on d         (only when ``work`` is given)

and a device takes an item when the bound with the item stays within ``budget[d]``. The
baselines give neither copies nor work and reserve the graph's largest working memory in the
budget instead (`rlplace.rules.estimate.memory_budget`); the env gives both, so its bound is an
upper bound of the simulator's peak (see `rlplace.envs.ledger`).

Shapes: N items, k devices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rlplace.rules.units import Units


class MemoryLedger:
    """Bytes committed per device as items are added (and, without copies, removed).

    Args:
        items: the colocation units (their ``demand`` and ``allowed``), or a (N,) float64
            demand in bytes per item.
        budget: (k,) bytes each device may hold.
        allowed: (N, k) bool devices an item may take (default: all; ignored for `Units`).
        work: (N,) working bytes of each item (default: none tracked).
        producers: N int64 arrays, the items each item reads from; with ``export`` ((N,)
            bytes of outputs other items read) the ledger counts received copies.

    Attributes (shapes): budget, used, work_peak: (k,) float64 bytes; placement: (N,) int64
        device per item, -1 while not added; received: (N, k) bool, item a's exported outputs
        already have a copy on device d (only with copies).
    """

    def __init__(
        self,
        items: Units | np.ndarray,
        budget: np.ndarray,
        *,
        allowed: np.ndarray | None = None,
        work: np.ndarray | None = None,
        producers: Sequence[np.ndarray] | None = None,
        export: np.ndarray | None = None,
    ) -> None:
        if isinstance(items, Units):
            demand, allowed = items.demand, items.allowed
        else:
            demand = np.asarray(items, dtype=np.float64)
        self.demand = demand
        self.budget = np.asarray(budget, dtype=np.float64)
        k, count = self.budget.shape[0], demand.shape[0]
        self.allowed = np.ones((count, k), dtype=bool) if allowed is None else allowed
        self.work = work
        self.producers = producers
        self.export = export if producers is not None else None
        self.used = np.zeros(k)
        self.work_peak = np.zeros(k)
        self.placement = np.full(count, -1, dtype=np.int64)
        self.received = np.zeros((count, k), dtype=bool) if self.export is not None else None
        self._devices = np.arange(k)
        self._added: tuple[int, np.ndarray] | None = None  # added_bytes of the last item asked about

    def room(self) -> np.ndarray:
        """(k,) bytes still free (working memory peaks excluded)."""
        return self.budget - self.used

    def added_bytes(self, item: int) -> np.ndarray:
        """(k,) bytes ``used`` of each device grows by if ``item`` goes there."""
        cached = self._added
        if cached is not None and cached[0] == item:
            return cached[1]
        added = np.full(self._devices.size, self.demand[item])
        if self.export is not None and self.producers is not None and self.received is not None:
            sources = self.producers[item]
            if sources.size:
                remote = (self._devices[None, :] != self.placement[sources][:, None]) & ~self.received[sources]
                added += self.export[sources] @ remote
        self._added = (item, added)
        return added

    def candidates(self, item: int) -> np.ndarray:
        """(k,) bool, devices the item may take whose bound stays within the budget with it."""
        work = 0.0 if self.work is None else float(self.work[item])
        return self.allowed[item] & (self.added_bytes(item) + np.maximum(self.work_peak, work) <= self.budget - self.used)

    def fits(self, item: int, device: int) -> bool:
        return bool(self.candidates(item)[device])

    def add(self, item: int, device: int) -> None:
        """Record ``item`` on ``device``."""
        self.used[device] += self.added_bytes(item)[device]
        if self.work is not None:
            self.work_peak[device] = max(self.work_peak[device], float(self.work[item]))
        if self.received is not None and self.producers is not None:
            sources = self.producers[item]
            self.received[sources[self.placement[sources] != device], device] = True
        self.placement[item] = device
        self._added = None

    def remove(self, item: int, device: int) -> None:
        """Take ``item`` off ``device`` (ledgers without copies or work only)."""
        if self.received is not None or self.work is not None:
            raise TypeError("a ledger that counts copies or working memory cannot remove items")
        self.used[device] -= self.demand[item]
        self.placement[item] = -1
        self._added = None


def ledger_for(unit_device: np.ndarray, units: Units, budget: np.ndarray) -> MemoryLedger:
    """A ledger holding every unit of a complete (u,) assignment."""
    ledger = MemoryLedger(units, budget)
    assignment = np.asarray(unit_device, dtype=np.int64)
    np.add.at(ledger.used, assignment, units.demand)
    ledger.placement[:] = assignment
    return ledger
