"""The env's sequential memory bound: a `rlplace.rules.MemoryLedger` over the problem's groups.

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

from typing import Any

from rlplace.rules import MemoryLedger


def sequential_ledger(problem: Any, *, resident_only: bool = False) -> MemoryLedger:
    """An empty ledger for placing ``problem``'s groups one by one in topological order
    (``problem`` is a `rlplace.envs.problem.PlacementProblem`)."""
    if resident_only:
        return MemoryLedger(problem.resident, problem.capacity, allowed=problem.allowed)
    return MemoryLedger(
        problem.resident + problem.transient,
        problem.capacity,
        allowed=problem.allowed,
        work=problem.work,
        producers=problem.group_preds,
        export=problem.export,
    )
