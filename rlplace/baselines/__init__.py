"""Classic placement baselines: one module per algorithm, all with the same signature.

Every method is ``place(graph, cluster, costs, *, objective="latency", seed=0) -> Placement``
and returns a placement that respects op times (no op on a device it cannot run on),
colocation classes and device memory (estimate while deciding, exact simulator check at the
end; see `rlplace.baselines.common`), or raises `RlplaceError` saying why no such placement
was found. Modules are imported on first use, so importing this package stays cheap.

``METHODS`` maps each method name to its ``place``; `run_method` times one decision.
``expert:FILE`` splits are read by `rlplace.formats`, the learned ``policy`` by the agents.
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
    "accelerate": "accelerate_map",
    "policy": "policy",
}

#: One line per method, for ``rlplace methods`` and the README.
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
    "accelerate": "HF accelerate's infer_auto_device_map (memory only; models only)",
    "policy": "pretrained GNN policy: greedy, 16 samples and a 200-simulation local search (checkpoints/default)",
}


def _lazy(module_name: str) -> PlaceFunction:
    def place(graph: OpGraph, cluster: Cluster, costs: CostTable, *, objective: str = "latency", seed: int = 0, **options: Any) -> Placement:
        module = importlib.import_module(f"rlplace.baselines.{module_name}")
        return module.place(graph, cluster, costs, objective=objective, seed=seed, **options)

    place.__name__ = f"{module_name}_place"
    place.__qualname__ = place.__name__
    place.__doc__ = f"``rlplace.baselines.{module_name}.place`` (imported on first call)."
    return place


#: Method name -> ``place(graph, cluster, costs, *, objective, seed)``.
METHODS: Mapping[str, PlaceFunction] = {name: _lazy(module) for name, module in _MODULES.items()}
#: Methods that score candidates with the simulator and take ``microbatches=`` for ``pipelined``.
MICROBATCH_AWARE = frozenset({"dp", "local-search", "random"})
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
    """Raise `RlplaceError` for the first name that is not a method of `METHODS`."""
    for name in names:
        if name not in METHODS:
            raise RlplaceError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)} (and expert:FILE)")


def run_method(
    name: str,
    graph: OpGraph,
    cluster: Cluster,
    costs: CostTable,
    *,
    objective: str,
    seed: int = 0,
    module: Any = None,
    **options: Any,
) -> MethodResult:
    """Place ``graph`` on ``cluster`` with method ``name`` and time the decision.

    ``module`` is the model's ``nn.Module`` (needed by ``accelerate`` only; other methods ignore it).
    ``options`` go to the method's ``place`` (e.g. ``checkpoint=``, ``samples=`` for ``policy``).
    """
    check_method_names([name])
    started = time.perf_counter()
    if name == "accelerate":
        from rlplace.baselines.accelerate_map import place_module

        if module is None:
            raise RlplaceError("accelerate needs a PyTorch model (MODEL as file.py:function or zoo:NAME), not a graph file")
        placement = place_module(module, graph, cluster, costs, objective=objective, seed=seed)
    elif name == "dp":
        from rlplace.baselines.dp import place_with_proof

        placement, optimal = place_with_proof(graph, cluster, costs, objective=objective, seed=seed, **options)
        return MethodResult(method=name, placement=placement, decide_s=time.perf_counter() - started, optimal=optimal)
    else:
        placement = METHODS[name](graph, cluster, costs, objective=objective, seed=seed, **options)
    return MethodResult(method=name, placement=placement, decide_s=time.perf_counter() - started)
