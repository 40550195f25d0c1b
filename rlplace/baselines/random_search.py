"""``random``: the best of N seeded random feasible placements, scored by the simulator.

Each sample walks the units in topological order of their first op and puts each on a
device drawn uniformly among those that can run it and have room under the memory estimate
(`rlplace.rules`). Samples are ranked by the simulator's score for the requested
objective: less memory overflow first, then smaller step time; the first best sample wins.
"""

from __future__ import annotations

import numpy as np

from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph
from rlplace.placement import Placement
from rlplace.rules import MemoryLedger, Units, finalize, fit_with_fallback, make_simulator, prepare, start_assignment_error

#: Number of random placements scored.
DEFAULT_SAMPLES = 64


def place(
    graph: OpGraph,
    cluster: Cluster,
    costs: CostTable,
    *,
    objective: str = "latency",
    seed: int = 0,
    microbatches: int = 1,
    schedule: str = "gpipe",
    samples: int = DEFAULT_SAMPLES,
) -> Placement:
    """Best of ``samples`` random feasible placements drawn with ``numpy.random.default_rng(seed)``;
    ``microbatches`` and ``schedule`` set M and the pipeline schedule of the ``pipelined``
    objective they are scored (and their memory checked) with."""
    units, budget = prepare(graph, cluster, costs, objective, microbatches=microbatches, schedule=schedule)
    rng = np.random.default_rng(seed)
    simulator = make_simulator(graph, cluster, costs, objective, microbatches, schedule)
    best: np.ndarray | None = None
    best_key = (np.inf, np.inf)
    failure: RlplaceError | None = None
    for _ in range(max(1, samples)):
        try:
            placement = units.expand(random_assignment(units, budget, rng, graph, cluster))
        except RlplaceError as error:  # this draw packed memory badly; others may fit
            failure = error
            continue
        step_time, overflow = simulator.score(placement)
        key = (float(overflow), float(step_time))
        if best is None or key < best_key:
            best, best_key = placement, key
    if best is None:
        # Every draw stranded a unit; place the last draw without memory limits and repair it.
        assert failure is not None
        assignment = fit_with_fallback(graph, cluster, units, budget, lambda limit: random_assignment(units, limit, rng, graph, cluster))
        best = units.expand(assignment)
    return finalize(graph, cluster, costs, best, objective=objective, method="random", simulator=simulator)


def random_assignment(units: Units, budget: np.ndarray, rng: np.random.Generator, graph: OpGraph, cluster: Cluster) -> np.ndarray:
    """(u,) device per unit, each drawn uniformly among the devices that can take it."""
    ledger = MemoryLedger(units, budget)
    assignment = np.empty(units.num_units, dtype=np.int64)
    for unit in range(units.num_units):
        options = np.flatnonzero(ledger.candidates(unit))
        if options.size == 0:
            raise start_assignment_error(graph, cluster, units, unit)
        device = int(options[rng.integers(options.size)])
        assignment[unit] = device
        ledger.add(unit, device)
    return assignment
