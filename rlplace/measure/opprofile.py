"""Per-op profiling: time each distinct forward node of a model and its backward, for real.

Placement systems that learn from a simulator (Placeto, Mirhoseini et al.) profile every op
of the model being placed instead of trusting a roofline. `profile_ops` runs the executor's
forward program once on the model's real inputs, then times every distinct op signature
(ATen target, input shapes and dtypes, other arguments) in isolation: its forward, and its
forward plus its autograd backward, median over a few repeats on one thread. Its backward
time is the difference. The benchmark placements are never run.

`profiled_costs` puts those times into a `CostTable`: a captured forward op takes its node's
time, and the backward ops of a colocation class share the measured backward time of the
class's forward ops (in proportion to their modelled times). Every executed node also pays
the executor's per-node cost (the calibrated cost of a view, which does no work), since
isolated timing does not see it. Ops without a measurement keep the modelled time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.fx.node import map_arg
from torch.utils import _pytree as pytree

from rlplace.costs import CostTable
from rlplace.graph import NO_CLASS, OpGraph
from rlplace.measure.program import ForwardProgram, node_callable


@dataclass(frozen=True)
class OpProfile:
    """Measured times of the forward nodes of one program, by node name, seconds.

    Attributes:
        forward_s: node name -> forward time.
        backward_s: node name -> autograd backward time (0 when nothing needs a gradient).
        signatures: distinct signatures timed (nodes sharing one share its times).
    """

    forward_s: Mapping[str, float]
    backward_s: Mapping[str, float]
    signatures: int


def _signature(node: torch.fx.Node, args: Any, kwargs: Any) -> str:
    def describe(leaf: Any) -> str:
        if isinstance(leaf, torch.Tensor):
            return f"T{tuple(leaf.shape)}{leaf.dtype}{tuple(leaf.stride())}{leaf.requires_grad}"
        return repr(leaf)

    leaves = pytree.tree_leaves((args, kwargs))
    return f"{node.target}|" + ",".join(describe(leaf) for leaf in leaves)


def _median(run: Callable[[], Any], repeats: int) -> float:
    run()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def profile_ops(program: ForwardProgram, *, repeats: int = 7, threads: int = 1) -> OpProfile:
    """Time every forward node of ``program`` and its backward on the CPU.

    Inputs of a node that need a gradient (`ValueInfo.needs_grad`) are fresh leaves that
    require one, as in the executor's autograd islands; the backward gets the output
    gradients as ones.
    """
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _profile(program, repeats)
    finally:
        torch.set_num_threads(saved_threads)


def _profile(program: ForwardProgram, repeats: int) -> OpProfile:
    module = program.module
    env: dict[str, Any] = {}
    for placeholder, fqn in program.parameters.items():
        env[placeholder] = module.get_parameter(fqn).detach()
    for placeholder, fqn in program.buffers.items():
        env[placeholder] = module.get_buffer(fqn).detach()
    env.update(program.constants)
    env.update(zip(program.user_inputs, program.inputs, strict=True))
    with torch.no_grad():
        for node in program.nodes:
            env[node.name] = node_callable(node, "cpu")(*map_arg(node.args, lambda n: env[n.name]), **map_arg(node.kwargs, lambda n: env[n.name]))
    forward: dict[str, float] = {}
    backward: dict[str, float] = {}
    by_signature: dict[str, tuple[float, float]] = {}
    for node in program.nodes:
        leaves: dict[str, torch.Tensor] = {}
        for inp in node.all_input_nodes:
            info = program.values.get(inp.name)
            value = env[inp.name]
            if info is not None and info.needs_grad and isinstance(value, torch.Tensor):
                leaves[inp.name] = value.detach().requires_grad_(True)

        def value_of(inp: torch.fx.Node, leaves: dict[str, torch.Tensor] = leaves) -> Any:
            return leaves.get(inp.name, env[inp.name])

        args = map_arg(node.args, value_of)
        kwargs = map_arg(node.kwargs, value_of)
        key = _signature(node, args, kwargs)
        if key not in by_signature:
            by_signature[key] = _time_node(node_callable(node, "cpu"), args, kwargs, list(leaves.values()), repeats)
        forward[node.name], backward[node.name] = by_signature[key]
    return OpProfile(forward, backward, len(by_signature))


def _time_node(function: Callable[..., Any], args: Any, kwargs: Any, leaves: list[torch.Tensor], repeats: int) -> tuple[float, float]:
    with torch.enable_grad():
        forward_s = _median(lambda: function(*args, **kwargs), repeats)
        if not leaves:
            return forward_s, 0.0
        sample = function(*args, **kwargs)
        outputs = [leaf for leaf in pytree.tree_leaves(sample) if isinstance(leaf, torch.Tensor) and leaf.requires_grad]
        if not outputs:
            return forward_s, 0.0
        grads = [torch.ones_like(out) for out in outputs]
        positions = [i for i, leaf in enumerate(pytree.tree_leaves(sample)) if isinstance(leaf, torch.Tensor) and leaf.requires_grad]

        def step() -> None:
            for leaf in leaves:
                leaf.grad = None
            result = pytree.tree_leaves(function(*args, **kwargs))
            torch.autograd.backward([result[i] for i in positions], grads)

        both_s = _median(step, repeats)
    return forward_s, max(both_s - forward_s, 0.0)


def profiled_costs(graph: OpGraph, costs: CostTable, profile: OpProfile, *, node_overhead_s: tuple[float, float] = (0.0, 0.0)) -> CostTable:
    """``costs`` with the measured times of ``profile`` where the graph has a matching op.

    ``node_overhead_s`` (forward, backward) is what the executor adds per node it runs.

    Shapes: costs.op_time (n, k) -> (n, k); edge_time unchanged. Every device gets the same
    measured time (the profile runs on one local CPU).
    """
    op_time = np.array(costs.op_time, dtype=np.float64)
    forward_overhead, backward_overhead = node_overhead_s
    measured_backward: dict[int, float] = {}
    for op in range(graph.num_ops):
        name = graph.names[op]
        if graph.is_backward[op] or name not in profile.forward_s or graph.kinds[op] == "input":
            continue
        op_time[op, :] = profile.forward_s[name] + forward_overhead
        if graph.coloc[op] != NO_CLASS:
            label = int(graph.coloc[op])
            measured_backward[label] = measured_backward.get(label, 0.0) + profile.backward_s.get(name, 0.0)
    backward_ops = graph.is_backward & (np.array(graph.kinds) != "optimizer")
    for label, measured in measured_backward.items():
        members = np.flatnonzero(backward_ops & (graph.coloc == label))
        if not len(members):
            continue
        modelled = op_time[members, :]
        totals = modelled.sum(axis=0)
        share = np.where(totals > 0, modelled / np.where(totals > 0, totals, 1.0), 1.0 / len(members))
        op_time[members, :] = share * measured + backward_overhead
    op_time.setflags(write=False)
    return CostTable(op_time=op_time, edge_time=costs.edge_time, time_unit=costs.time_unit)
