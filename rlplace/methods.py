"""The registry of placement methods: one name -> one method, for the CLI, the pipeline and benchmarks.

Every method gets the same inputs: the graph it places (the coarse group graph when the
pipeline coarsens), the cluster, the cost table of that graph, the objective, the micro-batch
count and pipeline schedule (``pipelined`` only: they set every method's memory estimate and
final check, and the schedule the simulator-scored methods score under; see
`rlplace.baselines`), a seed and the method's own options. Names:

- the baselines of `rlplace.baselines` (``single``, ``m-topo``, ``dp``, ``local-search``, ...);
- ``expert:FILE``: a dnn-partitioning split read by `rlplace.formats` (per op: never coarsened);
- ``accelerate``: HF accelerate's device map of the model's ``nn.Module`` (option ``module=``);
- ``policy``: the trained GNN policy (`rlplace.policy_method`, imports the agents on first use).

Layer: this module is above the agents and the env and below `rlplace.pipeline`; nothing
below imports it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rlplace.baselines import METHOD_DESCRIPTIONS as BASELINE_DESCRIPTIONS
from rlplace.baselines import METHODS as BASELINES
from rlplace.baselines import MethodResult, ProofFunction, without_proof
from rlplace.baselines import run_method as run_placement
from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph
from rlplace.placement import Placement

EXPERT_PREFIX = "expert:"

#: One line per method, for ``rlplace methods`` and the README.
METHOD_DESCRIPTIONS: dict[str, str] = {
    **BASELINE_DESCRIPTIONS,
    "accelerate": "HF accelerate's infer_auto_device_map (memory only; models only)",
    "policy": "policy-guided search: local search whose moves a trained GNN ranks (checkpoints/default; 1.8 s, or --budget-s / --evaluations)",
}
#: Methods that search until a budget: they take ``evaluations`` (simulations) and ``budget_s`` (seconds).
SEARCH_METHODS: tuple[str, ...] = ("policy", "local-search")
#: Methods that take ``budget_s`` (seconds): the searching ones and ``ilp`` (HiGHS's time limit).
TIMED_METHODS: tuple[str, ...] = (*SEARCH_METHODS, "ilp")
#: Every method name (``expert:FILE`` besides).
METHOD_NAMES: tuple[str, ...] = tuple(METHOD_DESCRIPTIONS)

__all__ = ["BASELINES", "METHOD_DESCRIPTIONS", "METHOD_NAMES", "SEARCH_METHODS", "TIMED_METHODS", "MethodResult", "check_method_names", "is_expert", "run_method"]


def is_expert(name: str) -> bool:
    """Whether ``name`` is an ``expert:FILE`` split (placed per op of the full graph, never coarsened)."""
    return name.startswith(EXPERT_PREFIX)


def check_method_names(names: Iterable[str]) -> None:
    """Raise `RlplaceError` for the first name that is neither a method nor ``expert:FILE``."""
    for name in names:
        if name not in METHOD_DESCRIPTIONS and not is_expert(name):
            raise RlplaceError(f"unknown method {name!r}; valid methods: {', '.join(METHOD_NAMES)} (and expert:FILE)")


def run_method(name: str, graph: OpGraph, cluster: Cluster, costs: CostTable, *, module: Any = None, **inputs: Any) -> MethodResult:
    """Place ``graph`` on ``cluster`` with method ``name`` and time the decision.

    Args:
        costs: the cost table of ``graph`` on ``cluster`` (the same one every method gets).
        module: the model's ``nn.Module`` (``accelerate`` only; the others ignore it).
        inputs: ``objective`` (required), ``seed``, ``microbatches``, ``schedule`` and the
            method's own keyword options (e.g. ``checkpoint=``, ``samples=`` for ``policy``),
            as `rlplace.baselines.run_method` takes them; every method gets the same ones.
    """
    check_method_names([name])
    place = None if name in BASELINES else _place_function(name, module)
    return run_placement(name, graph, cluster, costs, place=place, **inputs)


def _place_function(name: str, module: Any) -> ProofFunction:
    """The function of a method that is not a baseline, in ``place_with_proof``'s form."""
    if is_expert(name):

        def place_expert(graph: OpGraph, cluster: Cluster, costs: CostTable, **_: Any) -> Placement:
            from rlplace.formats import load_placement_spec
            from rlplace.placement import check_constraints

            placement = load_placement_spec(name, graph, cluster)
            check_constraints(graph, costs, placement)
            return placement

        return without_proof(place_expert)
    if name == "accelerate":
        from functools import partial

        from rlplace.baselines.accelerate_map import place_module

        if module is None:
            raise RlplaceError("accelerate needs a PyTorch model (MODEL as file.py:function or zoo:NAME), not a graph file")
        return without_proof(partial(place_module, module))

    def place_policy(*args: Any, **kwargs: Any) -> Placement:
        from rlplace.policy_method import place  # imports the agents: timed as part of the decision

        return place(*args, **kwargs)

    return without_proof(place_policy)
