"""The memory estimate every placement rule uses while it decides (one memory model).

- ``throughput`` objective: the static sum of ``resident_bytes`` per device, which is exactly
  the dnn-partitioning paper's constraint and the simulator's memory for that objective.
- ``latency`` / ``pipelined``: ``resident_bytes + output_bytes`` of every op on the device
  (every activation counted as live for the whole step, which is what a training graph does
  with forward activations kept for the backward pass), plus, reserved on every device, the
  largest ``work_bytes`` of any op (a device runs one op at a time). Received copies of remote
  inputs are counted only by the env's sequential bound (`rlplace.envs.ledger`).
- ``pipelined`` under ``1f1b``: the output bytes are scaled by `activation_share`, the share
  of the M micro-batches a device keeps in flight (at most ``min(M, k)`` of them; see
  `rlplace.schedules`), so a split that only fits because 1F1B holds fewer micro-batches than
  GPipe is not thrown away by the estimate. ``gpipe`` keeps all M micro-batches' activations
  (M shares of 1 / M each: the whole step's), and ``interleaved-1f1b`` is counted as
  ``gpipe`` (its warm-up depends on the chunks of the placement; the estimate stays an upper bound).

The estimate can be far above the simulator's peak for graphs whose activations die early
(inference), never below it by more than received copies. The simulator gives the exact peak;
`rlplace.rules.finish` checks it once at the end and repairs (`rlplace.rules.repair`).

Shapes: n ops, k devices.
"""

from __future__ import annotations

import numpy as np

from rlplace.cluster import Cluster
from rlplace.graph import OpGraph


def activation_share(objective: str, microbatches: int = 1, schedule: str = "gpipe", num_devices: int = 1) -> float:
    """Share of a device's whole-step output bytes the estimate counts as alive at once (0..1].

    1 except under ``pipelined`` with ``1f1b`` and M > 1: stage r keeps at most
    ``min(M, p - r) <= min(M, k)`` micro-batches in flight (p stages, k = ``num_devices``),
    each holding 1 / M of the step's activations, so the share is ``min(M, k) / M``.
    """
    if objective != "pipelined" or schedule != "1f1b" or microbatches <= 1:
        return 1.0
    return min(microbatches, max(1, num_devices)) / microbatches


def op_memory_demand(graph: OpGraph, objective: str, share: float = 1.0) -> np.ndarray:
    """(n,) bytes each op adds to its device under the estimate (module docstring);
    ``share``: `activation_share` of the output bytes (1 unless ``pipelined`` under ``1f1b``)."""
    if objective == "throughput":
        return np.asarray(graph.resident_bytes, dtype=np.float64)
    return graph.resident_bytes + share * graph.output_bytes


def work_reserve(graph: OpGraph, objective: str) -> float:
    """Bytes reserved on every device for the running op: the largest ``work_bytes`` (0 under ``throughput``)."""
    return 0.0 if objective == "throughput" or graph.num_ops == 0 else float(np.max(graph.work_bytes))


def memory_budget(graph: OpGraph, cluster: Cluster, objective: str) -> np.ndarray:
    """(k,) bytes per device the estimate may fill: capacity minus `work_reserve`."""
    return cluster.memory - work_reserve(graph, objective)
