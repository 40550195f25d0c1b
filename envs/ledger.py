"""`MemoryLedger`: per-device memory bookkeeping for the sequential action form.

The ledger keeps an upper bound of each device's peak memory under the simulator's model
(``rlplace.simulate``) for the groups placed so far, so a device the mask offers can never
make the final placement overflow:

    bound[d] = sum over groups on d of (resident + transient)      (every output kept alive)
             + sum over (producer group a, device d) with a consumer of a on d and a not on d
               of export[a]                                        (one received copy each)
             + max over groups on d of work                        (one op runs at a time)

Under ``throughput`` transient, export and work are 0 and the bound is exact (resident bytes).
Under ``pipelined`` each of the M micro-batches holds 1/M of every activation, copy and working
buffer, so the same sums still bound the peak.

The bound is safe but loose: on the synthetic training graphs it is 1.7 to 2.6 times the
simulated peak for random placements (activations are freed long before the step ends). With
``resident_only=True`` the ledger counts resident bytes only, a lower bound: the mask then
removes only devices that certainly cannot hold the group, and a final overflow is left to
the env's ``oom_mode``.
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

    def __init__(self, problem: PlacementProblem, *, resident_only: bool = False) -> None:
        self.problem = problem
        self.resident_only = resident_only
        k = problem.num_devices
        self.placement = np.full(problem.num_groups, -1, dtype=np.int64)
        self.used = np.zeros(k)
        self.work_peak = np.zeros(k)
        self.received = np.zeros((problem.num_groups, k), dtype=bool)
        self._devices = np.arange(k)
        self._added: tuple[int, np.ndarray] | None = None  # added_bytes of the last group asked about

    def added_bytes(self, group: int) -> np.ndarray:
        """(k,) bytes the bound of each device grows by if ``group`` goes there (work excluded)."""
        cached = self._added
        if cached is not None and cached[0] == group:
            return cached[1]
        problem = self.problem
        if self.resident_only:
            added = np.full(self._devices.size, problem.resident[group])
        else:
            added = np.full(self._devices.size, problem.resident[group] + problem.transient[group])
            producers = problem.group_preds[group]
            if producers.size:
                remote = (self._devices[None, :] != self.placement[producers][:, None]) & ~self.received[producers]
                added += problem.export[producers] @ remote
        self._added = (group, added)
        return added

    def room(self, group: int) -> np.ndarray:
        """(k,) bool, devices whose bound stays within capacity with ``group`` added."""
        problem = self.problem
        work = 0.0 if self.resident_only else problem.work[group]
        bound = self.used + self.added_bytes(group) + np.maximum(self.work_peak, work)
        return bound <= problem.capacity

    def place(self, group: int, device: int) -> None:
        """Record ``group`` on ``device``."""
        problem = self.problem
        self.used[device] += self.added_bytes(group)[device]
        if not self.resident_only:
            self.work_peak[device] = max(self.work_peak[device], problem.work[group])
            producers = problem.group_preds[group]
            self.received[producers[self.placement[producers] != device], device] = True
        self.placement[group] = device
        self._added = None
