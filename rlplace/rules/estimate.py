"""The memory estimate every placement rule uses while it decides (one memory model).

- ``throughput`` objective: the static sum of ``resident_bytes`` per device, which is exactly
  the dnn-partitioning paper's constraint and the simulator's memory for that objective.
- ``latency`` / ``pipelined``: ``resident_bytes + output_bytes`` of every op on the device
  (every activation counted as live for the whole step, which is what a training graph does
  with forward activations kept for the backward pass), plus, reserved on every device, the
  largest ``work_bytes`` of any op (a device runs one op at a time). Received copies of remote
  inputs are counted only by the env's sequential bound (`rlplace.envs.ledger`).

The estimate can be far above the simulator's peak for graphs whose activations die early
(inference), never below it by more than received copies. The simulator gives the exact peak;
`rlplace.rules.finish` checks it once at the end and repairs (`rlplace.rules.repair`).

Shapes: n ops, k devices.
"""

from __future__ import annotations

import numpy as np

from rlplace.cluster import Cluster
from rlplace.graph import OpGraph


def op_memory_demand(graph: OpGraph, objective: str) -> np.ndarray:
    """(n,) bytes each op adds to its device under the estimate (module docstring)."""
    if objective == "throughput":
        return np.asarray(graph.resident_bytes, dtype=np.float64)
    return graph.resident_bytes + graph.output_bytes


def work_reserve(graph: OpGraph, objective: str) -> float:
    """Bytes reserved on every device for the running op: the largest ``work_bytes`` (0 under ``throughput``)."""
    return 0.0 if objective == "throughput" or graph.num_ops == 0 else float(np.max(graph.work_bytes))


def memory_budget(graph: OpGraph, cluster: Cluster, objective: str) -> np.ndarray:
    """(k,) bytes per device the estimate may fill: capacity minus `work_reserve`."""
    return cluster.memory - work_reserve(graph, objective)
