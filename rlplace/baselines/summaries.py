"""Cost summaries the list-scheduling and partitioning baselines rank by.

Shapes: n ops, m edges, k devices.
"""

from __future__ import annotations

import numpy as np

from rlplace.costs import CostTable


def finite_mean(op_time: np.ndarray) -> np.ndarray:
    """(n,) mean of each row over its finite entries."""
    finite = np.isfinite(op_time)
    return np.where(finite, op_time, 0.0).sum(axis=1) / np.maximum(finite.sum(axis=1), 1)


def fastest_time(op_time: np.ndarray) -> np.ndarray:
    """(n,) time of each op on its fastest device."""
    return op_time.min(axis=1) if op_time.shape[1] else np.zeros(op_time.shape[0])


def mean_edge_time(costs: CostTable) -> np.ndarray:
    """(m,) transfer time of each edge averaged over ordered pairs of distinct devices."""
    k = costs.num_devices
    if k < 2:
        return np.zeros(costs.num_edges)
    # a sum over pairs is a sum over link classes weighted by how many pairs have each
    return costs.edge_class_time @ costs.pair_counts().astype(np.float64) / (k * (k - 1))


def device_speed(costs: CostTable) -> np.ndarray:
    """(k,) relative speed of each device, summing to 1.

    Measured on the ops every device can run: speed is inversely proportional to their total
    time on the device. Equal speeds when no such op has any cost.
    """
    k = costs.num_devices
    common = np.all(np.isfinite(costs.op_time), axis=1)
    totals = costs.op_time[common].sum(axis=0) if np.any(common) else np.zeros(k)
    if not np.all(totals > 0):
        return np.full(k, 1.0 / k)
    speed = 1.0 / totals
    return speed / speed.sum()
