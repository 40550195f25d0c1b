"""Turn a placement of a captured `OpGraph` into a device for every node the executor runs.

The executor's forward program is traced the way `rlplace.capture` traces a training graph,
so most forward nodes carry the name of a captured forward op and take that op's device.
The rest are matched as follows:

* parameters and buffers live on the device of the op that owns them
  (``graph.meta["op_params"]`` / ``["op_buffers"]``), which is also where capture puts their
  memory and their optimizer update;
* the model's inputs live where the captured ``input`` ops are placed (in input order);
* a node capture folded away (a view of a parameter, a ``getitem``) runs with its first
  placed consumer, else with its producer, else with the majority of the captured ops of
  its module.

Backward ops and optimizer updates are not assigned here: the backward of a node runs where
the node ran and an update where its parameter lives, which is what a placement that keeps
colocation classes together (`rlplace.placement.check_constraints`) asks for.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlplace.graph import NO_CLASS, OpGraph
from rlplace.measure.program import ForwardProgram


@dataclass(frozen=True)
class Assignment:
    """Devices of the executor's nodes and how they were found.

    Attributes:
        node_device: node or placeholder name -> device index.
        matched_by_name: forward nodes whose name is a captured forward op.
        num_nodes: forward nodes of the program.
    """

    node_device: dict[str, int]
    matched_by_name: int
    num_nodes: int

    @property
    def matched_fraction(self) -> float:
        return self.matched_by_name / self.num_nodes if self.num_nodes else 1.0


def assign_devices(program: ForwardProgram, graph: OpGraph, placement: np.ndarray) -> Assignment:
    """Device of every node and placeholder of ``program`` under ``placement`` of ``graph``.

    Shapes:
        placement: (n,) int64 device per op of ``graph``, in graph order.
    """
    forward_ops = {graph.names[i]: i for i in range(graph.num_ops) if not graph.is_backward[i]}
    devices: dict[str, int] = {}
    matched = 0
    for node in program.nodes:
        op = forward_ops.get(node.name)
        if op is not None and graph.kinds[op] != "input":
            devices[node.name] = int(placement[op])
            matched += 1
    _assign_placeholders(program, graph, placement, devices)
    _assign_unmatched(program, graph, placement, devices)
    return Assignment(devices, matched, len(program.nodes))


def _assign_placeholders(program: ForwardProgram, graph: OpGraph, placement: np.ndarray, devices: dict[str, int]) -> None:
    owner: dict[str, int] = {}
    for key in ("op_params", "op_buffers"):
        for op, names in enumerate(graph.meta.get(key) or []):
            for tensor_name in names:
                owner.setdefault(str(tensor_name), int(placement[op]))
    for canonical, aliases in (graph.meta.get("param_aliases") or {}).items():
        if canonical in owner:
            for alias in aliases:
                owner.setdefault(str(alias), owner[canonical])
    for placeholder, fqn in (*program.parameters.items(), *program.buffers.items()):
        if fqn in owner:
            devices[placeholder] = owner[fqn]
    input_ops = [i for i in range(graph.num_ops) if graph.kinds[i] == "input"]
    if len(input_ops) == len(program.user_inputs):
        for placeholder, op in zip(program.user_inputs, input_ops, strict=True):
            devices[placeholder] = int(placement[op])


def _assign_unmatched(program: ForwardProgram, graph: OpGraph, placement: np.ndarray, devices: dict[str, int]) -> None:
    consumers: dict[str, list[str]] = {}
    for node in program.nodes:
        for inp in node.all_input_nodes:
            consumers.setdefault(inp.name, []).append(node.name)
    for node in reversed(program.nodes):  # first placed consumer (consumers come later)
        if node.name not in devices:
            placed = [devices[user] for user in consumers.get(node.name, []) if user in devices]
            if placed:
                devices[node.name] = placed[0]
    by_module: dict[str, Counter[int]] = {}
    paths = graph.meta.get("module_paths") or []
    for op, path in enumerate(paths):
        if not graph.is_backward[op] and graph.kinds[op] != "input":
            by_module.setdefault(str(path), Counter())[int(placement[op])] += 1
    previous = 0
    for node in program.nodes:  # producer, else module majority, else the node before
        if node.name not in devices:
            producers = [devices[inp.name] for inp in node.all_input_nodes if inp.name in devices]
            module_votes = by_module.get(program.module_paths.get(node.name, ""))
            if producers:
                devices[node.name] = producers[0]
            elif module_votes:
                devices[node.name] = module_votes.most_common(1)[0][0]
            else:
                devices[node.name] = previous
        previous = devices[node.name]


def executed_placement(graph: OpGraph, placement: np.ndarray, program_nodes: Collection[str] | None = None) -> np.ndarray:
    """The placement the executor actually runs, for the simulator to predict.

    Backward ops in a colocation class run where their forward op runs, and updates where
    their parameter lives, as placed. Backward ops outside any class (capture leaves the
    sums that accumulate a gradient from several users out of them) run where autograd runs
    them: with the op that consumes the summed gradient, the backward of the value's
    producer. Each such op therefore takes the device of its first consumer (last ops
    first, so chains of sums follow through).

    With ``program_nodes`` (the names of the executor's forward nodes), a forward op outside
    any class that the executor does not run as a node of its own, such as the detached
    copy of an activation autograd saves for the backward pass, runs with its first
    producer (first ops first): the executor keeps that value where it was computed, so
    placing the copy elsewhere sends no message.

    Shapes: placement (n,) int64 -> (n,) int64.
    """
    executed = np.array(placement, dtype=np.int64)
    if program_nodes is not None:
        predecessors = graph.predecessors()
        known = set(program_nodes)
        for op in range(graph.num_ops):
            if not graph.is_backward[op] and graph.coloc[op] == NO_CLASS and graph.kinds[op] != "input" and graph.names[op] not in known and len(predecessors[op]):
                executed[op] = executed[int(predecessors[op].min())]
    successors = graph.successors()
    floating = graph.is_backward & (graph.coloc == NO_CLASS)
    for op in range(graph.num_ops - 1, -1, -1):
        if floating[op] and len(successors[op]):
            executed[op] = executed[int(successors[op].min())]
    return executed


def schedule_order(program: ForwardProgram, graph: OpGraph, start: np.ndarray) -> list[str]:
    """The forward nodes of ``program`` in the order the simulator starts them, for
    `rlplace.measure.plan.plan_segments`: each device then runs its nodes in the simulated
    order instead of the program's (which, for two branches spread over two devices, would
    run a branch's every node on a device before the other branch's first).

    A node named after a captured forward op takes that op's simulated start; any other
    node the latest key of its inputs (it runs right after them); the order is the
    topological order that takes the smallest key first (ties: program order), each
    ``getitem`` right after the node whose tuple it unpacks.

    Shapes: start (n,) seconds, the simulated start of each op of ``graph``
    (`rlplace.simulate.SimResult.op_start`).
    """

    forward_ops = {graph.names[i]: i for i in range(graph.num_ops) if not graph.is_backward[i]}
    return order_by_key(program, {name: float(start[op]) for name, op in forward_ops.items()})


def order_by_key(program: ForwardProgram, keys: dict[str, float]) -> list[str]:
    """The forward nodes in the topological order that takes the smallest key first (ties:
    program order), each ``getitem`` right after the node whose tuple it unpacks; a node
    without a key in ``keys`` takes the largest key of its inputs (-inf without any)."""
    from rlplace.measure.program import is_getitem

    position = {node.name: index for index, node in enumerate(program.nodes)}
    key: dict[str, float] = {}
    for node in program.nodes:
        if node.name in keys:
            key[node.name] = keys[node.name]
        else:
            key[node.name] = max((key[inp.name] for inp in node.all_input_nodes if inp.name in key), default=-np.inf)
    waiting = {node.name: sum(1 for inp in node.all_input_nodes if inp.name in position) for node in program.nodes}
    users: dict[str, list[str]] = {node.name: [] for node in program.nodes}
    for node in program.nodes:
        for inp in node.all_input_nodes:
            if inp.name in position:
                users[inp.name].append(node.name)
    nodes = {node.name: node for node in program.nodes}
    ready = [(key[name], position[name], name) for name, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order: list[str] = []

    def emit(name: str) -> None:
        order.append(name)
        for user in users[name]:
            waiting[user] -= 1
            if waiting[user] == 0:
                if is_getitem(nodes[user]):
                    emit(user)
                else:
                    heapq.heappush(ready, (key[user], position[user], user))

    while ready:
        emit(heapq.heappop(ready)[2])
    return order


def executor_priority(graph: OpGraph, start: np.ndarray) -> np.ndarray:
    """Simulator priorities (`rlplace.simulate.Simulator`, lower first among ready ops of a
    device) that pick ops the way the executor runs them, given the ops' simulated starts
    ``start`` under the default priority:

    * forward ops: their topological index, as by default (the executor runs them in the
      simulated order, `schedule_order`);
    * backward ops: after every forward op, last forward first: the executor runs a device's
      segments backward in reverse order, so the backward of what was computed last starts
      first (and a gradient another device waits for leaves before unrelated backward work).
      A backward op takes the latest simulated start of its colocation class's forward ops
      (ties, and ops without a class: topological index);
    * optimizer updates: last of all, as the executor updates once per device at the end.

    Shapes: start (n,) seconds; returns (n,) float64.
    """
    n = graph.num_ops
    index = np.arange(n, dtype=np.float64)
    backward = np.asarray(graph.is_backward, dtype=bool)
    optimizer = np.array([kind == "optimizer" for kind in graph.kinds], dtype=bool)
    latest: dict[int, float] = {}
    for op in np.flatnonzero(~backward):
        label = int(graph.coloc[op])
        if label != NO_CLASS:
            latest[label] = max(latest.get(label, -np.inf), float(start[op]))
    forward_start = np.array([latest.get(int(graph.coloc[op]), np.nan) if graph.coloc[op] != NO_CLASS else np.nan for op in range(n)])
    # Backward ops without a forward start keep their topological place among the others.
    horizon = float(np.nanmax(start)) if n else 0.0
    reverse = np.where(np.isnan(forward_start), np.nan, horizon - forward_start)
    ranked = np.flatnonzero(backward & ~optimizer)
    keys = reverse[ranked]
    fill = np.isnan(keys)
    if fill.any():  # no class: inherit the key of the backward op before it in topological order
        last = 0.0
        for position in range(len(keys)):
            if fill[position]:
                keys[position] = last
            last = keys[position]
    priority = index.copy()
    order = ranked[np.lexsort((ranked, keys))]
    priority[order] = n + np.arange(len(order), dtype=np.float64)
    updates = np.flatnonzero(optimizer)
    priority[updates] = 2 * n + index[updates]
    return priority


def executor_schedule(graph: OpGraph, cluster: Any, costs: Any, executed: np.ndarray) -> tuple[Any, np.ndarray]:
    """A latency `rlplace.simulate.Simulator` of ``graph`` on ``cluster`` and the priorities
    that pick ops the way the executor does (`executor_priority`, from its first simulation
    of ``executed``'s starts); shapes: executed (n,) int64, priorities (n,) float64."""
    from rlplace.simulate import Simulator

    simulator = Simulator(graph, cluster, costs, objective="latency")
    first = simulator.run(executed)
    assert first.op_start is not None  # the latency objective always has a schedule
    return simulator, executor_priority(graph, first.op_start)


def simulate_as_executed(graph: OpGraph, cluster: Any, costs: Any, executed: np.ndarray, *, record: bool = False) -> Any:
    """The simulator's `SimResult` for one training step (latency objective) of ``executed``
    (a placement as the executor runs it, `executed_placement`), ops picked as the executor
    picks them (`executor_schedule`).

    When ``cluster.meta`` holds a `rlplace.profile.ReceiveCost`, messages cost their
    receivers what that says given what each receiver was doing in this schedule
    (`rlplace.measure.receive`), in place of the constant per-endpoint cost:
    the step is simulated once more with those times added."""
    from rlplace.measure.receive import charged_simulator, receive_state
    from rlplace.profile import cluster_receive_cost

    simulator, priority = executor_schedule(graph, cluster, costs, executed)
    receive = cluster_receive_cost(cluster)
    if receive is None:
        return simulator.run(executed, record=record, priority=priority)
    state = receive_state(graph, executed, simulator.run(executed, record=True, priority=priority))
    return charged_simulator(graph, cluster, costs, state, receive).run(executed, record=record, priority=priority)
