"""The env's observation: padded arrays describing groups, the edges between them, and devices.

Every value is normalized so graphs and clusters of any scale look alike: times are divided
by the mean group time (the graph's fastest single-device time divided by the number of
groups G) and passed through ``log1p``; bytes are divided by the mean finite device memory of
the cluster (``mem_scale``) or by the graph's own totals; positions in the DAG are fractions
of its depth or critical path.

Keys, shapes and dtypes (N = max_nodes, E = max_edges, D = max_devices):

``node_features`` (N, 13) float32, one row per group, zeros for padding:
    0 ``compute``      log1p(fastest time of the group / mean group time)
    1 ``spread``       log(slowest / fastest time over the devices that can run it) (0 = homogeneous)
    2 ``resident``     resident bytes (params, grads, optimizer state) / mem_scale
    3 ``transient``    summed output bytes of its ops / mem_scale
    4 ``comm_in``      log1p(incoming transfer time on an average link / mean group time)
    5 ``comm_out``     log1p(outgoing transfer time on an average link / mean group time)
    6 ``depth``        longest path from a source, in edges / the DAG's depth (0..1)
    7 ``tlevel``       earliest start with fastest times and free communication / critical path (0..1)
    8 ``blevel``       longest compute path from the group to a sink / critical path (0..1)
    9 ``backward``     fraction of its ops in the backward pass or optimizer
    10 ``size``        log1p(ops in the group / mean ops per group)
    11 ``placed``      1 once the group has a device (see ``node_device``)
    12 ``to_place``    1 for the group(s) the next action places (every group in one-shot)
``node_device`` (N,) int64: device of each group, -1 when not placed yet and for padding.
``node_mask`` (N,) int8: 1 for a real group.
``edge_index`` (2, E) int64: group ids ``src < dst`` of each edge (data dependence between
    groups), padding ``0 -> 0``. Graphs with more than E group edges keep the E heaviest.
``edge_features`` (E, 3) float32:
    0 ``comm``         log1p(transfer time of the edge's bytes on an average link / mean group time)
    1 ``bytes``        log1p(bytes / mean bytes of the graph's group edges)
    2 ``crosses``      1 when both ends are placed on different devices
``edge_mask`` (E,) int8: 1 for a real edge.
``device_features`` (D, 7) float32, zeros for padding:
    0 ``speed``        fastest time of the groups it can run / its time for them (1 = fastest device)
    1 ``capable``      fraction of groups allowed on it
    2 ``memory``       log1p(capacity / the graph's resident bytes), 10 for an uncapped device
    3 ``memory_rel``   capacity / mem_scale (1 = average device), 10 for an uncapped device
    4 ``memory_left``  1 - (memory of what is placed) / capacity, in [0, 1]; the memory is the
                       sequential ledger's safe bound, or resident + output bytes in one-shot
    5 ``load``         summed time of the groups placed on it / fastest single-device time
    6 ``cpu``          1 for a CPU
``device_mask`` (D,) int8: 1 for a real device.
``link_time`` (D, D) float32: log1p(time to send the graph's mean group-edge tensor from
    device a to b / mean group time), 0 on the diagonal and for padding.
``global_features`` (12,) float32:
    0 G / N, 1 devices / D, 2 fraction of groups placed, 3 coarsened (0/1),
    4 log1p(ops per group), 5 log1p(total transfer time on an average link / fastest single-device time),
    6 graph resident bytes / total finite capacity, 7 fastest single-device time / T_ref,
    8-10 objective one-hot (latency, pipelined, throughput), then 11 log(micro-batches).
``current_node`` (1,) int64, sequential form only: the group the next action places.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gymnasium import spaces

from rlplace.cluster import CPU

from .problem import PlacementProblem

NODE_FEATURES = ("compute", "spread", "resident", "transient", "comm_in", "comm_out", "depth", "tlevel", "blevel", "backward", "size", "placed", "to_place")
EDGE_FEATURES = ("comm", "bytes", "crosses")
DEVICE_FEATURES = ("speed", "capable", "memory", "memory_rel", "memory_left", "load", "cpu")
GLOBAL_FEATURES = ("groups", "devices", "progress", "coarsened", "ops_per_group", "comm_ratio", "memory_pressure", "reference_speedup", "latency", "pipelined", "throughput", "microbatches")
OBJECTIVE_COLUMNS = {"latency": 8, "pipelined": 9, "throughput": 10}
UNCAPPED = 10.0
#: Bound of every float feature (values are clipped to it; real ones stay far inside).
FEATURE_BOUND = 1e3

_PLACED = NODE_FEATURES.index("placed")
_TO_PLACE = NODE_FEATURES.index("to_place")
_CROSSES = EDGE_FEATURES.index("crosses")
_MEMORY_LEFT = DEVICE_FEATURES.index("memory_left")
_LOAD = DEVICE_FEATURES.index("load")
_PROGRESS = GLOBAL_FEATURES.index("progress")


@dataclass(frozen=True, eq=False)
class StaticObservation:
    """The parts of one pair's observation that do not change during an episode (padded).

    ``edge_src``/``edge_dst`` (E',) are the kept edges unpadded (E' <= E), for the dynamic
    ``crosses`` feature; ``group_time`` (G, k) and ``inverse_capacity`` (k,) (1 / bytes, 0 for an
    uncapped device) feed the device load and memory features.
    """

    arrays: dict[str, np.ndarray]
    num_groups: int
    num_devices: int
    edge_src: np.ndarray
    edge_dst: np.ndarray
    group_time: np.ndarray
    inverse_capacity: np.ndarray
    single_time: float


class ObservationEncoder:
    """Builds the observation space and encodes problems and episode states into it."""

    def __init__(self, max_nodes: int, max_devices: int, max_edges: int, *, sequential: bool) -> None:
        self.max_nodes = max_nodes
        self.max_devices = max_devices
        self.max_edges = max_edges
        self.sequential = sequential
        unbounded = dict(low=-FEATURE_BOUND, high=FEATURE_BOUND, dtype=np.float32)
        layout: dict[str, spaces.Space] = {
            "node_features": spaces.Box(shape=(max_nodes, len(NODE_FEATURES)), **unbounded),
            "node_device": spaces.Box(low=-1, high=max_devices - 1, shape=(max_nodes,), dtype=np.int64),
            "node_mask": spaces.Box(low=0, high=1, shape=(max_nodes,), dtype=np.int8),
            "edge_index": spaces.Box(low=0, high=max_nodes - 1, shape=(2, max_edges), dtype=np.int64),
            "edge_features": spaces.Box(shape=(max_edges, len(EDGE_FEATURES)), **unbounded),
            "edge_mask": spaces.Box(low=0, high=1, shape=(max_edges,), dtype=np.int8),
            "device_features": spaces.Box(shape=(max_devices, len(DEVICE_FEATURES)), **unbounded),
            "device_mask": spaces.Box(low=0, high=1, shape=(max_devices,), dtype=np.int8),
            "link_time": spaces.Box(low=0.0, high=FEATURE_BOUND, shape=(max_devices, max_devices), dtype=np.float32),
            "global_features": spaces.Box(shape=(len(GLOBAL_FEATURES),), **unbounded),
        }
        if sequential:
            layout["current_node"] = spaces.Box(low=0, high=max_nodes - 1, shape=(1,), dtype=np.int64)
        self.space = spaces.Dict(layout)

    # ------------------------------------------------------------------ static
    def static(self, problem: PlacementProblem) -> StaticObservation:
        """Encode everything about ``problem`` that an episode does not change."""
        graph, costs = problem.graph, problem.costs
        num_groups, k = problem.num_groups, problem.num_devices
        n_max, d_max = self.max_nodes, self.max_devices
        group_time = np.asarray(problem.group_time)
        finite_time = np.where(np.isfinite(group_time), group_time, np.nan)
        fastest = np.nanmin(finite_time, axis=1)
        slowest = np.nanmax(finite_time, axis=1)
        mean_group_time = max(float(fastest.sum()) / num_groups, 1e-30)
        capacity = np.asarray(problem.capacity)
        finite_capacity = capacity[np.isfinite(capacity)]
        graph_resident = float(graph.resident_bytes.sum())
        mem_scale = float(finite_capacity.mean()) if finite_capacity.size else max(graph_resident, 1.0)

        # transfer times on an average link (mean over ordered pairs of distinct devices)
        off_diagonal = ~np.eye(k, dtype=bool)
        pairs = max(k * (k - 1), 1)
        op_edge_comm = (costs.edge_time * off_diagonal).sum(axis=(1, 2)) / pairs if graph.num_edges else np.zeros(0)
        group_of_op = problem.group_of_op
        src_group, dst_group = group_of_op[graph.edge_src], group_of_op[graph.edge_dst]
        crossing = src_group != dst_group
        comm_in = np.bincount(dst_group[crossing], weights=op_edge_comm[crossing], minlength=num_groups)
        comm_out = np.bincount(src_group[crossing], weights=op_edge_comm[crossing], minlength=num_groups)

        nodes = np.zeros((n_max, len(NODE_FEATURES)), dtype=np.float32)
        nodes[:num_groups, 0] = np.log1p(fastest / mean_group_time)
        nodes[:num_groups, 1] = np.log(np.maximum(slowest, 1e-300) / np.maximum(fastest, 1e-300)) * (fastest > 0)
        nodes[:num_groups, 2] = problem.resident / mem_scale
        nodes[:num_groups, 3] = np.bincount(group_of_op, weights=graph.output_bytes, minlength=num_groups) / mem_scale
        nodes[:num_groups, 4] = np.log1p(comm_in / mean_group_time)
        nodes[:num_groups, 5] = np.log1p(comm_out / mean_group_time)
        depth, tlevel, blevel = _levels(problem, fastest)
        nodes[:num_groups, 6] = depth
        nodes[:num_groups, 7] = tlevel
        nodes[:num_groups, 8] = blevel
        ops_per_group = np.bincount(group_of_op, minlength=num_groups)
        nodes[:num_groups, 9] = np.bincount(group_of_op, weights=graph.is_backward.astype(np.float64), minlength=num_groups) / ops_per_group
        nodes[:num_groups, 10] = np.log1p(ops_per_group / (graph.num_ops / num_groups))

        edge_src, edge_dst, edge_bytes = problem.group_edge_src, problem.group_edge_dst, problem.group_edge_bytes
        group_edge_comm = _group_edge_values(problem, op_edge_comm, crossing)
        if edge_src.size > self.max_edges:
            keep = np.sort(np.argsort(-group_edge_comm, kind="stable")[: self.max_edges])
            edge_src, edge_dst, edge_bytes, group_edge_comm = edge_src[keep], edge_dst[keep], edge_bytes[keep], group_edge_comm[keep]
        num_edges = edge_src.size
        edge_index = np.zeros((2, self.max_edges), dtype=np.int64)
        edge_index[0, :num_edges] = edge_src
        edge_index[1, :num_edges] = edge_dst
        edges = np.zeros((self.max_edges, len(EDGE_FEATURES)), dtype=np.float32)
        edges[:num_edges, 0] = np.log1p(group_edge_comm / mean_group_time)
        mean_bytes = float(edge_bytes.mean()) if num_edges and edge_bytes.mean() > 0 else 1.0
        edges[:num_edges, 1] = np.log1p(edge_bytes / mean_bytes)

        capable = np.isfinite(group_time)
        devices = np.zeros((d_max, len(DEVICE_FEATURES)), dtype=np.float32)
        runnable_fastest = (np.where(capable, fastest[:, None], 0.0)).sum(axis=0)
        runnable_time = np.where(capable, group_time, 0.0).sum(axis=0)
        devices[:k, 0] = np.where(runnable_time > 0, runnable_fastest / np.maximum(runnable_time, 1e-300), 1.0)
        devices[:k, 1] = problem.allowed.mean(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            devices[:k, 2] = np.where(np.isfinite(capacity), np.log1p(capacity / max(graph_resident, 1.0)), UNCAPPED)
            devices[:k, 3] = np.where(np.isfinite(capacity), np.minimum(capacity / mem_scale, UNCAPPED), UNCAPPED)
        devices[:k, 4] = 1.0
        devices[:k, 6] = [device.category == CPU for device in problem.cluster.devices]

        link_time = np.zeros((d_max, d_max), dtype=np.float32)
        if graph.num_edges and k > 1:
            mean_tensor_time = costs.edge_time[crossing].mean(axis=0) if np.any(crossing) else costs.edge_time.mean(axis=0)
            link_time[:k, :k] = np.log1p(mean_tensor_time / mean_group_time) * off_diagonal

        total_capacity = float(finite_capacity.sum())
        glob = np.zeros(len(GLOBAL_FEATURES), dtype=np.float32)
        glob[0] = num_groups / n_max
        glob[1] = k / d_max
        glob[3] = float(problem.coarsening is not None)
        glob[4] = np.log1p(graph.num_ops / num_groups)
        glob[5] = np.log1p(float(op_edge_comm[crossing].sum()) / problem.single_time)
        glob[6] = graph_resident / total_capacity if total_capacity > 0 else 0.0
        glob[7] = problem.single_time / problem.reference_time
        glob[OBJECTIVE_COLUMNS[problem.objective]] = 1.0
        glob[11] = np.log(problem.microbatches)

        node_mask = np.zeros(n_max, dtype=np.int8)
        node_mask[:num_groups] = 1
        edge_mask = np.zeros(self.max_edges, dtype=np.int8)
        edge_mask[:num_edges] = 1
        device_mask = np.zeros(d_max, dtype=np.int8)
        device_mask[:k] = 1
        arrays = {
            "node_features": nodes,
            "node_device": np.full(n_max, -1, dtype=np.int64),
            "node_mask": node_mask,
            "edge_index": edge_index,
            "edge_features": edges,
            "edge_mask": edge_mask,
            "device_features": devices,
            "device_mask": device_mask,
            "link_time": link_time,
            "global_features": glob,
        }
        if self.sequential:
            arrays["current_node"] = np.zeros(1, dtype=np.int64)
        for array in arrays.values():
            if array.dtype.kind == "f":
                np.nan_to_num(array, copy=False, nan=0.0, posinf=FEATURE_BOUND, neginf=-FEATURE_BOUND)
                np.clip(array, -FEATURE_BOUND, FEATURE_BOUND, out=array)
            array.setflags(write=False)
        return StaticObservation(
            arrays=arrays,
            num_groups=num_groups,
            num_devices=k,
            edge_src=edge_src,
            edge_dst=edge_dst,
            group_time=np.where(capable, group_time, 0.0),
            inverse_capacity=np.where(np.isfinite(capacity), 1.0 / capacity, 0.0),
            single_time=problem.single_time,
        )

    # ----------------------------------------------------------------- dynamic
    def encode(self, static: StaticObservation, placement: np.ndarray, memory_used: np.ndarray, current: int | None) -> dict[str, np.ndarray]:
        """The observation of an episode state.

        Args:
            placement: (G,) int64 device per group, -1 for groups not placed yet.
            memory_used: (k,) bytes of the memory bound of what is placed.
            current: the group the next action places (sequential), None in one-shot, or
                -1 once the episode is over.
        """
        num_groups, k = static.num_groups, static.num_devices
        obs = {key: array.copy() for key, array in static.arrays.items()}
        placed = placement >= 0
        nodes = obs["node_features"]
        nodes[:num_groups, _PLACED] = placed
        if current is None:
            nodes[:num_groups, _TO_PLACE] = ~placed
        elif current >= 0:
            nodes[current, _TO_PLACE] = 1.0
            obs["current_node"][0] = current
        obs["node_device"][:num_groups] = placement
        ends_src, ends_dst = placement[static.edge_src], placement[static.edge_dst]
        # an unplaced end is -1, so two ends differ and are both placed iff min >= 0 and they differ
        obs["edge_features"][: static.edge_src.size, _CROSSES] = (np.minimum(ends_src, ends_dst) >= 0) & (ends_src != ends_dst)
        devices = obs["device_features"]
        devices[:k, _MEMORY_LEFT] = np.clip(1.0 - memory_used * static.inverse_capacity, 0.0, 1.0)
        placed_count = int(np.count_nonzero(placed))
        if placed_count:
            where = placement[placed]
            devices[:k, _LOAD] = np.bincount(where, weights=static.group_time[placed, where], minlength=k) / static.single_time
        obs["global_features"][_PROGRESS] = placed_count / num_groups
        return obs


def _levels(problem: PlacementProblem, fastest: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(G,) depth fraction, top level and bottom level as fractions of the critical path."""
    num_groups = problem.num_groups
    depth = np.zeros(num_groups)
    start = np.zeros(num_groups)
    for group in range(num_groups):
        preds = problem.group_preds[group]
        if preds.size:
            depth[group] = depth[preds].max() + 1
            start[group] = (start[preds] + fastest[preds]).max()
    bottom = fastest.copy()
    src, dst = problem.group_edge_src, problem.group_edge_dst
    order = np.argsort(-src, kind="stable")
    for s, d in zip(src[order].tolist(), dst[order].tolist(), strict=True):
        bottom[s] = max(bottom[s], fastest[s] + bottom[d])
    critical = max(float(bottom.max()), 1e-30)
    return depth / max(float(depth.max()), 1.0), start / critical, bottom / critical


def _group_edge_values(problem: PlacementProblem, op_edge_values: np.ndarray, crossing: np.ndarray) -> np.ndarray:
    """Sum ``op_edge_values`` (m,) of op edges that cross groups onto the (m',) group edges."""
    graph, num_groups = problem.graph, problem.num_groups
    keys = problem.group_of_op[graph.edge_src[crossing]] * num_groups + problem.group_of_op[graph.edge_dst[crossing]]
    group_keys = problem.group_edge_src * num_groups + problem.group_edge_dst
    index = np.searchsorted(group_keys, keys)
    return np.bincount(index, weights=op_edge_values[crossing], minlength=group_keys.size)
