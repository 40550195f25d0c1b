"""The registry of placement methods: one name -> one method, for the CLI, the pipeline and benchmarks.

Every method gets the same inputs: the graph it places (the coarse group graph when the
pipeline coarsens), the cluster, the cost table of that graph, the objective, the micro-batch
count and pipeline schedule (``pipelined`` only: the methods that score candidates with the
simulator score them under that schedule, `rlplace.baselines.MICROBATCH_AWARE`), a seed and
the method's own options. Names:

- the baselines of `rlplace.baselines` (``single``, ``m-topo``, ``dp``, ``local-search``, ...);
- ``expert:FILE``: a dnn-partitioning split read by `rlplace.formats` (per op: never coarsened);
- ``accelerate``: HF accelerate's device map of the model's ``nn.Module`` (option ``module=``);
- ``policy``: the trained GNN policy (`rlplace.policy_method`, imports the agents on first use).

Layer: this module is above the agents and the env and below `rlplace.pipeline`; nothing
below imports it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from rlplace.baselines import METHOD_DESCRIPTIONS as BASELINE_DESCRIPTIONS
from rlplace.baselines import METHODS as BASELINES
from rlplace.baselines import MICROBATCH_AWARE as BASELINES_WITH_MICROBATCHES
from rlplace.baselines import MethodResult
from rlplace.baselines import run_method as run_baseline
from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph

EXPERT_PREFIX = "expert:"

#: One line per method, for ``rlplace methods`` and the README.
METHOD_DESCRIPTIONS: dict[str, str] = {
    **BASELINE_DESCRIPTIONS,
    "accelerate": "HF accelerate's infer_auto_device_map (memory only; models only)",
    "policy": "policy-guided search: local search whose moves a trained GNN ranks (checkpoints/default; 2000 simulations or --budget-s)",
}
#: Every method name (``expert:FILE`` besides).
METHOD_NAMES: tuple[str, ...] = tuple(METHOD_DESCRIPTIONS)
#: Methods that take ``microbatches=`` (for ``pipelined``; the others place independently of M).
TAKES_MICROBATCHES = frozenset(BASELINES_WITH_MICROBATCHES | {"policy"})

__all__ = ["BASELINES", "METHOD_DESCRIPTIONS", "METHOD_NAMES", "TAKES_MICROBATCHES", "MethodResult", "check_method_names", "is_expert", "run_method"]


def is_expert(name: str) -> bool:
    """Whether ``name`` is an ``expert:FILE`` split (placed per op of the full graph, never coarsened)."""
    return name.startswith(EXPERT_PREFIX)


def check_method_names(names: Iterable[str]) -> None:
    """Raise `RlplaceError` for the first name that is neither a method nor ``expert:FILE``."""
    for name in names:
        if name not in METHOD_DESCRIPTIONS and not is_expert(name):
            raise RlplaceError(f"unknown method {name!r}; valid methods: {', '.join(METHOD_NAMES)} (and expert:FILE)")


def run_method(
    name: str,
    graph: OpGraph,
    cluster: Cluster,
    costs: CostTable,
    *,
    objective: str,
    microbatches: int = 1,
    schedule: str = "gpipe",
    seed: int = 0,
    module: Any = None,
    **options: Any,
) -> MethodResult:
    """Place ``graph`` on ``cluster`` with method ``name`` and time the decision.

    Args:
        costs: the cost table of ``graph`` on ``cluster`` (the same one every method gets).
        microbatches: M of ``pipelined``, passed to the methods of `TAKES_MICROBATCHES`.
        schedule: the pipeline schedule of ``pipelined``, passed to the baselines of
            `rlplace.baselines.MICROBATCH_AWARE` (not yet to ``policy``, which scores its candidates in GPipe order).
        module: the model's ``nn.Module`` (``accelerate`` only; the others ignore it).
        options: the method's own keyword options (e.g. ``checkpoint=``, ``samples=`` for ``policy``).
    """
    check_method_names([name])
    if name in BASELINES:
        return run_baseline(name, graph, cluster, costs, objective=objective, seed=seed, microbatches=microbatches, schedule=schedule, **options)
    started = time.perf_counter()
    if is_expert(name):
        from rlplace.formats import load_placement_spec
        from rlplace.placement import check_constraints

        placement = load_placement_spec(name, graph, cluster)
        check_constraints(graph, costs, placement)
    elif name == "accelerate":
        from rlplace.baselines.accelerate_map import place_module

        if module is None:
            raise RlplaceError("accelerate needs a PyTorch model (MODEL as file.py:function or zoo:NAME), not a graph file")
        placement = place_module(module, graph, cluster, costs, objective=objective, seed=seed)
    else:  # policy
        from rlplace.policy_method import place

        placement = place(graph, cluster, costs, objective=objective, microbatches=microbatches, seed=seed, **options)
    return MethodResult(method=name, placement=placement, decide_s=time.perf_counter() - started)
