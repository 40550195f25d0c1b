"""The cold start holds everything a decision loads on first use.

`rlplace place` is one decision in a fresh process: whatever the decision imports or loads
from numba's cache on first use comes out of its budget (`policy`: 0.5-1 s of its 1.8 s, and
two thirds of its simulations, before `rlplace.policy_method.warm_up`) or shows in its
``decide_s`` (`local-search`). The checks run in a fresh interpreter, since this test process
may have imported anything already.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

_COMPILED = textwrap.dedent(
    """
    import json, sys
    from numba.core.registry import CPUDispatcher
    from rlplace.costs import CostTable
    from rlplace.load import resolve_cluster
    from rlplace.synthetic import fork_join, series_parallel

    def compiled():
        found = {}
        for name, module in list(sys.modules.items()):
            if name.startswith("rlplace") and module is not None:
                for attr, value in vars(module).items():
                    if isinstance(value, CPUDispatcher):
                        found[f"{name}.{attr}"] = len(value.signatures)
        return found

    def report(modules, kernels):
        after = compiled()
        print(json.dumps({
            "new_modules": sorted(set(sys.modules) - modules),
            "new_kernels": sorted(k for k, count in after.items() if count > kernels.get(k, 0)),
        }))

    CASES = [
        (series_parallel(90, seed=7), "4xT4", "pipelined", 4, "gpipe"),
        (fork_join(50, seed=6, training=True), "4xL4", "pipelined", 4, "1f1b"),
        (fork_join(60, seed=8, training=True), "2x4xV100", "latency", 1, "gpipe"),
        (series_parallel(40, seed=9), "4xL4", "throughput", 1, "gpipe"),
    ]
    """
)

_POLICY_PROBE = _COMPILED + textwrap.dedent(
    """
    from rlplace.policy_method import load_policy, search

    load_policy(None)
    modules, kernels = set(sys.modules), compiled()
    for graph, cluster_name, objective, microbatches, schedule in CASES:
        cluster = resolve_cluster(cluster_name)
        costs = CostTable.build(graph, cluster)
        search(graph, cluster, costs, objective=objective, microbatches=microbatches, schedule=schedule, budget_s=0.3, workers=1, seed=3)
    report(modules, kernels)
    """
)

# What `rlplace.pipeline.decide` runs before a local-search decision's clock starts, per case.
_LOCAL_SEARCH_PROBE = _COMPILED + textwrap.dedent(
    """
    from rlplace.baselines import local_search
    from rlplace.pipeline import _load_simulator_kernels

    for graph, cluster_name, objective, microbatches, schedule in CASES:
        cluster = resolve_cluster(cluster_name)
        costs = CostTable.build(graph, cluster)
        _load_simulator_kernels(graph, cluster, costs)
        local_search.warm_up(cluster, objective=objective, microbatches=microbatches, schedule=schedule)
        modules, kernels = set(sys.modules), compiled()
        local_search.place(graph, cluster, costs, objective=objective, microbatches=microbatches, schedule=schedule, evaluations=300, seed=3)
        report(modules, kernels)
    """
)


def _reports(probe: str) -> list[dict[str, list[str]]]:
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]
    return [json.loads(line) for line in completed.stdout.strip().splitlines() if line.startswith("{")]


def test_a_policy_decision_after_load_policy_imports_and_compiles_nothing() -> None:
    pytest.importorskip("torch_geometric")
    (report,) = _reports(_POLICY_PROBE)
    assert report == {"new_modules": [], "new_kernels": []}


def test_a_local_search_decision_after_its_warm_up_imports_and_compiles_nothing() -> None:
    reports = _reports(_LOCAL_SEARCH_PROBE)
    assert reports == [{"new_modules": [], "new_kernels": []}] * 4


def test_local_search_warm_up_on_a_cluster_too_small_for_its_graph_is_silent() -> None:
    from rlplace.baselines import local_search
    from rlplace.cluster_spec import cluster_from_dict
    from rlplace.costs import CostTable
    from rlplace.errors import RlplaceError
    from rlplace.synthetic import layered

    spec = {"devices": [{"name": f"d{i}", "kind": "T4", "memory": "1KB"} for i in range(2)], "interconnect": {"intra_host": "pcie4"}}
    cluster = cluster_from_dict(spec, "inline")
    graph = layered(48, seed=0, training=True)
    with pytest.raises(RlplaceError):  # the warm-up's own graph does not fit ...
        local_search.place(graph, cluster, CostTable.build(graph, cluster), evaluations=10)
    local_search._WARMED.discard(("latency", ""))
    local_search.warm_up(cluster)  # ... and the warm-up says nothing: the user's decision will
    assert ("latency", "") in local_search._WARMED
