"""`MemoryLedger`: per-device memory bookkeeping for the sequential action form.

The ledger keeps an upper bound of each device's peak memory under the simulator's model
for the groups placed so far, so a device the mask offers can never make a latency or
throughput placement overflow:

    bound[d] = sum over groups on d of (resident + transient)      (every output kept alive)
             + sum over (producer group a, device d) with a consumer of a on d and a not on d
               of export[a]                                        (one received copy each)
             + max over groups on d of work                        (one op runs at a time)

Under ``throughput`` transient, export and work are 0 and the bound is exact (resident bytes).
Under ``pipelined`` several micro-batches may hold activations at once, so the bound is not
guaranteed; a final overflow is handled by the env's ``oom_mode``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .problem import PlacementProblem


class MemoryLedger:
    """Upper bounds of memory per device as groups are placed one by one in topological order.

    Shapes (G groups, k devices):
        placement: (G,) int64, device per placed group, -1 before it is placed.
        used: (k,) float64 bytes of resident, transient and received-copy memory so far.
        work_peak: (k,) float64 largest working memory of a group placed on the device.
        received: (G, k) bool, the exported outputs of group a already have a copy on device d.
    """

    def __init__(self, problem: PlacementProblem) -> None:
        self.problem = problem
        k = problem.num_devices
        self.placement = np.full(problem.num_groups, -1, dtype=np.int64)
        self.used = np.zeros(k)
        self.work_peak = np.zeros(k)
        self.received = np.zeros((problem.num_groups, k), dtype=bool)
        self._devices = np.arange(k)

    def added_bytes(self, group: int) -> np.ndarray:
        """(k,) bytes the bound of each device grows by if ``group`` goes there (work excluded)."""
        problem = self.problem
        added = np.full(self._devices.size, problem.resident[group] + problem.transient[group])
        for producer in problem.group_preds[group]:
            exported = problem.export[producer]
            if exported > 0:
                added += exported * ((self._devices != self.placement[producer]) & ~self.received[producer])
        return added

    def room(self, group: int) -> np.ndarray:
        """(k,) bool, devices whose bound stays within capacity with ``group`` added."""
        problem = self.problem
        bound = self.used + self.added_bytes(group) + np.maximum(self.work_peak, problem.work[group])
        return bound <= problem.capacity

    def place(self, group: int, device: int) -> None:
        """Record ``group`` on ``device``."""
        problem = self.problem
        self.used[device] += self.added_bytes(group)[device]
        self.work_peak[device] = max(self.work_peak[device], problem.work[group])
        for producer in problem.group_preds[group]:
            if self.placement[producer] != device:
                self.received[producer, device] = True
        self.placement[group] = device
