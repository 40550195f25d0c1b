"""The policy's cold start holds everything a decision loads on first use.

`rlplace place --method policy` is one decision in a fresh process: whatever the decision
imports or loads from numba's cache on first use comes out of its 1.8 s budget (it took
0.5-1 s of it, and two thirds of the simulations, before `warm_up`). The check runs in a
fresh interpreter, since this test process may have imported anything already.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch_geometric")

_PROBE = textwrap.dedent(
    """
    import json, sys
    from numba.core.registry import CPUDispatcher
    from rlplace.costs import CostTable
    from rlplace.load import resolve_cluster
    from rlplace.policy_method import load_policy, search
    from rlplace.synthetic import fork_join, series_parallel

    def compiled():
        found = {}
        for name, module in list(sys.modules.items()):
            if name.startswith("rlplace") and module is not None:
                for attr, value in vars(module).items():
                    if isinstance(value, CPUDispatcher):
                        found[f"{name}.{attr}"] = len(value.signatures)
        return found

    load_policy(None)
    modules, kernels = set(sys.modules), compiled()
    cases = [
        (series_parallel(90, seed=7), "4xT4", "pipelined", 4),
        (fork_join(60, seed=8, training=True), "2x4xV100", "latency", 1),
        (series_parallel(40, seed=9), "4xL4", "throughput", 1),
    ]
    for graph, cluster_name, objective, microbatches in cases:
        cluster = resolve_cluster(cluster_name)
        search(graph, cluster, CostTable.build(graph, cluster), objective=objective, microbatches=microbatches, budget_s=0.3, workers=1, seed=3)
    after = compiled()
    print(json.dumps({
        "new_modules": sorted(set(sys.modules) - modules),
        "new_kernels": sorted(k for k, count in after.items() if count > kernels.get(k, 0)),
    }))
    """
)


def test_a_decision_after_load_policy_imports_and_compiles_nothing() -> None:
    completed = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["new_modules"] == []
    assert report["new_kernels"] == []
