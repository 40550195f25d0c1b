"""Classic placement baselines: one module per algorithm, all with the same signature.

Every baseline is ``place(graph, cluster, costs, *, objective="latency", seed=0,
microbatches=1, schedule="gpipe", **own_options) -> Placement``: ``microbatches`` and
``schedule`` are the M and the pipeline schedule of ``pipelined`` (ignored by every other
objective). They set the memory estimate a method decides under (`rlplace.rules.prepare`:
1F1B keeps fewer micro-batches' activations alive than GPipe) and the exact simulator check
at the end (`rlplace.rules.finalize`), and the methods that score candidates with the
simulator (``dp``, ``local-search``, ``random``) score them under that schedule. A baseline
returns a placement that respects op times (no op on a device it cannot run on), colocation
classes and device memory, or raises `RlplaceError` saying why no such placement was found.
Modules are imported on first use, so importing this package stays cheap.

A baseline module may also define ``place_with_proof(...) -> (Placement, bool | None)``
(same arguments) saying whether the placement is proven optimal for the method's own problem;
`run_method` uses it when present and reports ``optimal=None`` otherwise.

``METHODS`` maps each baseline name to its ``place``; `run_method` times one decision (of a
baseline, or of any function with the same contract: `rlplace.methods`, a layer above, passes
those of ``expert:FILE``, ``accelerate`` and ``policy``). The env and the agents use this
package for reference and teacher placements.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph
from rlplace.placement import Placement

PlaceFunction = Callable[..., Placement]
#: ``place_with_proof``'s form: (placement, proven optimal or None).
ProofFunction = Callable[..., tuple[Placement, bool | None]]

_MODULES: dict[str, str] = {
    "single": "single",
    "round-robin": "round_robin",
    "random": "random_search",
    "metis": "metis",
    "m-topo": "m_topo",
    "m-etf": "m_etf",
    "m-sct": "m_sct",
    "heft": "heft",
    "critical-path": "critical_path",
    "dp": "dp",
    "local-search": "local_search",
    "ilp": "ilp",
}

#: One line per baseline, for ``rlplace methods`` and the README.
METHOD_DESCRIPTIONS: dict[str, str] = {
    "single": "all ops on the fastest device that holds the whole graph",
    "round-robin": "ops (colocation classes as one) dealt to devices in turn, in topological order",
    "random": "best of 64 seeded random feasible placements, scored by the simulator",
    "metis": "pymetis k-way min-cut partition weighted by compute and bytes, parts sized by device speed",
    "m-topo": "Baechi m-TOPO: topological order cut into chunks of equal compute under memory caps",
    "m-etf": "Baechi m-ETF: earliest-task-first list scheduling under memory caps",
    "m-sct": "Baechi m-SCT: favourite-child LP (HiGHS), then ETF keeping favourite children local",
    "heft": "HEFT: upward rank, earliest finish time with insertion",
    "critical-path": "bottom-level priority list scheduling at the earliest start time",
    "dp": "best contiguous pipeline split (dynamic program)",
    "local-search": "moves and swaps from the best fast baseline, scored by the simulator (2000 simulations)",
    "ilp": "throughput only: the exact max-load optimum by integer program (HiGHS, 10 s or --budget-s; proves optimality)",
}


def _module(name: str) -> Any:
    return importlib.import_module(f"rlplace.baselines.{_MODULES[name]}")


def _lazy(name: str) -> PlaceFunction:
    module_name = _MODULES[name]

    def place(graph: OpGraph, cluster: Cluster, costs: CostTable, *, objective: str = "latency", seed: int = 0, **options: Any) -> Placement:
        return _module(name).place(graph, cluster, costs, objective=objective, seed=seed, **options)

    place.__name__ = f"{module_name}_place"
    place.__qualname__ = place.__name__
    place.__doc__ = f"``rlplace.baselines.{module_name}.place`` (imported on first call)."
    return place


#: Baseline name -> ``place(graph, cluster, costs, *, objective, seed, microbatches, schedule)``.
METHODS: Mapping[str, PlaceFunction] = {name: _lazy(name) for name in _MODULES}
#: Baselines that solve one objective only (they raise `RlplaceError` for the others).
THROUGHPUT_ONLY = frozenset({"ilp"})
#: Methods that take ``stages=True`` (a contiguous split, stage k on one device; ``--stages``).
STAGE_AWARE = frozenset({"dp", "local-search"})


@dataclass(frozen=True, eq=False)
class MethodResult:
    """One decision of a method.

    Attributes:
        method: the method name.
        placement: (n,) int64 device per op, read-only.
        decide_s: wall-clock seconds of the decision (the ``place`` call, simulator checks included).
        optimal: proven optimal within the method's search space (``dp``: contiguous splits,
            see `rlplace.baselines.dp.DpSolution.optimal`); None when the method makes no claim.
    """

    method: str
    placement: Placement
    decide_s: float
    optimal: bool | None = None


def check_method_names(names: Iterable[str]) -> None:
    """Raise `RlplaceError` for the first name that is not a baseline of `METHODS`."""
    for name in names:
        if name not in METHODS:
            raise RlplaceError(f"unknown method {name!r}; valid baselines: {', '.join(METHODS)}")


def without_proof(place: PlaceFunction) -> ProofFunction:
    """``place`` in ``place_with_proof``'s form, claiming nothing (``optimal=None``)."""

    def place_with_proof(*args: Any, **kwargs: Any) -> tuple[Placement, bool | None]:
        return place(*args, **kwargs), None

    return place_with_proof


def run_method(
    name: str,
    graph: OpGraph,
    cluster: Cluster,
    costs: CostTable,
    *,
    objective: str,
    seed: int = 0,
    microbatches: int = 1,
    schedule: str = "gpipe",
    place: ProofFunction | None = None,
    **options: Any,
) -> MethodResult:
    """Place ``graph`` on ``cluster`` with method ``name`` and time the decision.

    Args:
        objective, seed, microbatches, schedule: passed to the method (module docstring).
        place: the method's function in ``place_with_proof``'s form (see `without_proof`); None
            for the baseline ``name`` of `METHODS` (its ``place_with_proof`` when it has one).
        options: the method's own keyword options.
    """
    started = time.perf_counter()
    if place is None:
        check_method_names([name])
        module = _module(name)
        place = module.place_with_proof if hasattr(module, "place_with_proof") else without_proof(module.place)
    placement, optimal = place(graph, cluster, costs, objective=objective, seed=seed, microbatches=microbatches, schedule=schedule, **options)
    return MethodResult(method=name, placement=placement, decide_s=time.perf_counter() - started, optimal=optimal)
