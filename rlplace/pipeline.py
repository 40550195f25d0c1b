"""One placement decision end to end: coarsen, cost, place, expand, simulate.

`decide` is what ``rlplace place`` and ``rlplace evaluate`` run per (model, cluster, method);
benchmarks call it too, so every number they print comes from the same path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.errors import RlplaceError
from rlplace.feedback import compile_phase, phase
from rlplace.graph import OpGraph
from rlplace.load import LoadedModel
from rlplace.placement import Placement, as_placement


@dataclass(frozen=True, eq=False)
class Decision:
    """A placement of every op of ``graph`` and the simulated evidence for it.

    Attributes:
        method: the method that decided.
        objective: latency, pipelined or throughput.
        graph: the full op graph (placement is in its order).
        cluster: the cluster placed on.
        placement: (n,) int64 device per op.
        decide_s: wall-clock seconds the method took (coarsening and costing excluded).
        result: the simulator's `SimResult` on the full graph.
        coarsening: the `Coarsening` used, or None when the graph was placed as is.
        optimal: the method proved the placement optimal in its search space (`MethodResult.optimal`;
            False when that proof was about a coarsened graph); None when it makes no claim.
    """

    method: str
    objective: str
    graph: OpGraph
    cluster: Cluster
    placement: Placement
    decide_s: float
    result: Any
    coarsening: Any = None
    optimal: bool | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``place --json`` fields of DESIGN.md."""
        result = self.result
        return {
            "method": self.method,
            "objective": self.objective,
            "step_time": float(result.step_time),
            "time_unit": self.graph.time_unit,
            "decide_s": self.decide_s,
            "device_names": self.cluster.device_names,
            "placement": [int(d) for d in self.placement],
            "peak_memory_bytes": [float(m) for m in result.peak_memory],
            "capacity_bytes": [float(c) if np.isfinite(c) else None for c in result.capacity],  # None: uncapped
            "oom": bool(result.oom),
            "overflow_bytes": [float(o) for o in result.overflow_bytes],
            "lower_bound": float(result.lower_bound),
            "microbatches": result.microbatches,
            "schedule": result.schedule,
            "peak_activation_bytes": None if result.activation_memory is None else [float(m) for m in result.activation_memory],
            "busy_time": [float(b) for b in result.busy_time],
            "graph": self.graph.name,
            "cluster": self.cluster.name,
            "num_ops": self.graph.num_ops,
            "num_groups": None if self.coarsening is None else int(self.coarsening.graph.num_ops),
            "optimal": self.optimal,
        }


def default_objective(graph: OpGraph) -> str:
    """Throughput for profiled graphs of the dnn-partitioning data, latency otherwise."""
    return "throughput" if graph.meta.get("format") == "dnn-partitioning" else "latency"


def working_graph(graph: OpGraph, max_groups: int) -> tuple[OpGraph, Any]:
    """The graph the methods see: captured graphs above ``max_groups`` ops are coarsened.

    Profiled graphs (given times) are placed op by op: their reference results are per op.
    """
    if graph.num_ops <= max_groups or graph.has_given_times:
        return graph, None
    from rlplace.coarsen import coarsen

    coarsening = coarsen(graph, max_groups)
    return coarsening.graph, coarsening


def decide(
    model: LoadedModel,
    cluster: Cluster,
    method: str,
    *,
    objective: str,
    microbatches: int = 1,
    schedule: str = "gpipe",
    seed: int = 0,
    max_groups: int = 256,
    record: bool = False,
    method_options: dict[str, Any] | None = None,
    keep_whole: bool = True,
) -> Decision:
    """Place ``model`` on ``cluster`` with ``method`` and simulate the result.

    ``keep_whole``: the modules the model declares in ``_no_split_modules`` stay on one device
    (`rlplace.devicemap.keep_modules_whole`); the Decision's graph carries that constraint.
    ``schedule`` (``pipelined`` only) is the pipeline schedule of the objective: the methods
    that score candidates with the simulator score them under it, the full-graph memory check
    and repair uses its activation memory, and the final simulation runs it.
    """
    from rlplace.methods import is_expert, run_method
    from rlplace.simulate import simulate

    graph = model.graph
    if keep_whole and model.module is not None:
        from rlplace.devicemap import keep_modules_whole, no_split_paths

        graph = keep_modules_whole(graph, no_split_paths(model.module))
    costs = CostTable.build(graph, cluster)
    expert = is_expert(method)  # a split of the full graph: never coarsened
    work, coarsening = graph, None
    if not expert:
        with phase("coarsen"):
            work, coarsening = working_graph(graph, max_groups)
    work_costs = costs if coarsening is None else CostTable.grouped(costs, coarsening.group_of, work, cluster)
    if not expert:
        with compile_phase():
            _load_simulator_kernels(work, cluster, work_costs)
            if method == "local-search":
                from rlplace.baselines import local_search

                local_search.warm_up(cluster, objective=objective, microbatches=microbatches, schedule=schedule)
    options = dict(method_options or {})
    if method == "policy":
        # Importing torch + torch_geometric and loading the checkpoint is the cold start of a
        # process (its time shows as the "load" phase of `-v`), not part of the decision.
        with phase("load", "policy checkpoint"):
            preload_policy(options.get("checkpoint"))
    if coarsening is not None and method in ("local-search", "policy", "ilp"):
        options["referee"] = _full_graph_referee(graph, cluster, costs, coarsening, objective, microbatches, schedule)
    with phase("search", method):
        outcome = run_method(
            method, work, cluster, work_costs, objective=objective, microbatches=microbatches, schedule=schedule, seed=seed, module=model.module, **options
        )
    decide_s = outcome.decide_s
    # A proof about the coarsened graph is no proof about the full one.
    optimal = outcome.optimal if coarsening is None or outcome.optimal is None else False
    placement = as_placement(outcome.placement, graph, cluster) if coarsening is None else coarsening.expand(outcome.placement)
    if coarsening is not None:
        # Group sizes bound memory only approximately; check the full graph exactly and repair
        # (or explain) there, counting the time as part of the decision.
        from rlplace.rules import finalize

        started = time.perf_counter()
        placement = finalize(graph, cluster, costs, placement, objective=objective, method=method, microbatches=microbatches, schedule=schedule)
        decide_s += time.perf_counter() - started
    if (method_options or {}).get("stages"):
        from rlplace.baselines.dp import stage_order

        if stage_order(graph, placement) is None:
            raise RlplaceError(f"{method} --stages: the split of the coarsened graph is not contiguous on the full graph {graph.name!r}; raise --max-groups")
    result = simulate(graph, cluster, costs, placement, objective=objective, microbatches=microbatches, schedule=schedule, record=record)
    return Decision(method, objective, graph, cluster, placement, decide_s, result, coarsening, optimal)


def _full_graph_referee(graph: OpGraph, cluster: Cluster, costs: CostTable, coarsening: Any, objective: str, microbatches: int, schedule: str) -> Any:
    """(bytes over, step time) of a coarse placement on the full graph, simulated as the decision's final result is."""
    from rlplace.simulate import Simulator

    simulator = Simulator(graph, cluster, costs, objective=objective, microbatches=microbatches, schedule=schedule)

    def referee(coarse: np.ndarray) -> tuple[float, float]:
        step, overflow = simulator.score(coarsening.expand(coarse))
        return float(overflow), float(step)

    return referee


_kernels_loaded = False


def preload_policy(checkpoint: Any = None) -> float:
    """Import the agents and load the policy checkpoint before a decision is timed; returns
    the seconds it took (the process's cold start, about 0 once loaded)."""
    from rlplace.policy_method import load_policy

    began = time.perf_counter()
    load_policy(checkpoint)
    return time.perf_counter() - began


def _load_simulator_kernels(graph: OpGraph, cluster: Cluster, costs: CostTable) -> None:
    """Run the simulator once per process before a decision is timed, so that loading its
    compiled kernels from numba's cache (about half a second) is not charged to a method."""
    global _kernels_loaded
    if _kernels_loaded:
        return
    from rlplace.simulate import simulate

    fastest = np.argmin(costs.op_time, axis=1)
    for objective in ("latency", "throughput"):
        simulate(graph, cluster, costs, fastest, objective=objective)
    _kernels_loaded = True
