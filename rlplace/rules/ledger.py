"""`MemoryLedger`: bytes committed per device under the memory estimate (`rlplace.rules.estimate`).

Shapes: k devices, u units.
"""

from __future__ import annotations

import numpy as np

from rlplace.rules.units import Units


class MemoryLedger:
    """Bytes committed per device under the memory estimate, unit by unit.

    Shapes: budget, used: (k,) float64 bytes.
    """

    def __init__(self, units: Units, budget: np.ndarray) -> None:
        self.units = units
        self.budget = np.asarray(budget, dtype=np.float64)
        self.used = np.zeros_like(self.budget)

    def room(self) -> np.ndarray:
        """(k,) bytes still free."""
        return self.budget - self.used

    def fits(self, unit: int, device: int) -> bool:
        return bool(self.units.allowed[unit, device] and self.units.demand[unit] <= self.budget[device] - self.used[device])

    def candidates(self, unit: int) -> np.ndarray:
        """(k,) bool, devices that can run the unit and have room for it."""
        return self.units.allowed[unit] & (self.units.demand[unit] <= self.room())

    def add(self, unit: int, device: int) -> None:
        self.used[device] += self.units.demand[unit]

    def remove(self, unit: int, device: int) -> None:
        self.used[device] -= self.units.demand[unit]


def ledger_for(unit_device: np.ndarray, units: Units, budget: np.ndarray) -> MemoryLedger:
    """A ledger holding every unit of a complete (u,) assignment."""
    ledger = MemoryLedger(units, budget)
    np.add.at(ledger.used, np.asarray(unit_device, dtype=np.int64), units.demand)
    return ledger
