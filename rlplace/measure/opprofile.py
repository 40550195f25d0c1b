"""Per-op profiling: time each distinct forward node of a model and its backward, for real.

Placement systems that learn from a simulator (Placeto, Mirhoseini et al.) profile every op
of the model being placed instead of trusting a roofline. `profile_ops` runs the executor's
forward program once on the model's real inputs, then times every distinct op signature
(ATen target, input shapes and dtypes, other arguments) in isolation: its forward, and its
forward plus its autograd backward, on one thread (thread CPU time, see
`rlplace.measure.calibrate.op_clock`), the fastest of a few interleaved passes of the median
of calls the thread ran through unpreempted. Its backward time is the difference. The
benchmark placements are never run.

`profiled_costs` puts those times into a `CostTable`: a captured forward op takes its node's
time, and the backward ops of a colocation class share the measured backward time of the
class's forward ops (in proportion to their modelled times). Ops without a measurement keep
the modelled time.

An op timed alone is not the op inside a training step: alone it pays a whole
``torch.autograd.backward`` call (~18 us here) where a step pays one per segment, it finds
its inputs in cache, and it skips the executor's per-node bookkeeping. `fit_isolation_correction`
measures that difference instead of guessing it: it times whole one-device training steps
of the calibration models (`rlplace.measure.models.CALIBRATION_MODELS`, never the models
being placed) through the executor, profiles their ops in isolation, and fits
``step op time = scale * isolated time + per-node cost`` (one cost for forward nodes, one
for backward ops) by least squares on relative error. `IsolationCorrection` carries it.
"""

from __future__ import annotations

import dataclasses
import resource
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.fx.node import map_arg
from torch.utils import _pytree as pytree

from rlplace.costs import CostTable
from rlplace.graph import NO_CLASS, OpGraph
from rlplace.measure.allocator import steady_allocator
from rlplace.measure.calibrate import op_clock
from rlplace.measure.models import CALIBRATION_MODELS
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


def _preemptions() -> int:
    """Involuntary context switches of the calling thread so far (Linux; 0 where unknown)."""
    try:
        return resource.getrusage(resource.RUSAGE_THREAD).ru_nivcsw  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return 0


def robust_time(samples: Sequence[tuple[float, bool]]) -> float:
    """One pass's estimate from ``samples`` of (seconds, preempted): the median of the samples
    the thread ran through without being preempted, or of all of them when fewer than half
    ran clean (a preempted sample also pays the other process's cache footprint)."""
    clean = [seconds for seconds, preempted in samples if not preempted]
    return statistics.median(clean if 2 * len(clean) >= len(samples) else [seconds for seconds, _ in samples])


def _sample(run: Callable[[], Any], repeats: int) -> float:
    """``robust_time`` of ``repeats`` timed calls of ``run`` after one untimed call."""
    clock = op_clock(torch.device("cpu"))
    run()
    samples = []
    for _ in range(repeats):
        switches = _preemptions()
        started = clock()
        run()
        elapsed = clock() - started
        samples.append((elapsed, _preemptions() != switches))
    return robust_time(samples)


def profile_ops(program: ForwardProgram, *, repeats: int = 9, passes: int = 5, threads: int = 1) -> OpProfile:
    """Time every forward node of ``program`` and its backward on the CPU.

    Inputs of a node that need a gradient (`ValueInfo.needs_grad`) are fresh leaves that
    require one, as in the executor's autograd islands; the backward gets the output
    gradients as ones.

    Every distinct signature is timed in ``passes`` passes over all of them, ``repeats``
    calls each per pass (`robust_time`: preempted calls left out), and keeps its fastest pass:
    a whole profile takes well under a second per pass, so a burst of another process on a
    shared host can inflate every op of one pass (a one-pass profile was seen 1.9x too slow)
    but rarely all passes alike.
    """
    steady_allocator()
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _profile(program, repeats, passes)
    finally:
        torch.set_num_threads(saved_threads)


@dataclass
class _Timer:
    """How to time one signature: its forward call and, when it has a backward, forward plus
    backward; the fastest pass of each so far (seconds, inf before the first pass)."""

    forward: Callable[[], Any]
    both: Callable[[], Any] | None
    forward_s: float = float("inf")
    both_s: float = float("inf")

    def sample(self, repeats: int) -> None:
        with torch.enable_grad():
            self.forward_s = min(self.forward_s, _sample(self.forward, repeats))
            if self.both is not None:
                self.both_s = min(self.both_s, _sample(self.both, repeats))

    @property
    def times(self) -> tuple[float, float]:
        """(forward s, backward s) from the fastest passes."""
        return self.forward_s, (max(self.both_s - self.forward_s, 0.0) if self.both is not None else 0.0)


def _profile(program: ForwardProgram, repeats: int, passes: int) -> OpProfile:
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
    signature_of: dict[str, str] = {}
    timers: dict[str, _Timer] = {}
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
        signature_of[node.name] = key
        if key not in timers:
            timers[key] = _timer(node_callable(node, "cpu"), args, kwargs, list(leaves.values()))
    for _ in range(max(passes, 1)):
        for timer in timers.values():
            timer.sample(repeats)
    forward: dict[str, float] = {}
    backward: dict[str, float] = {}
    for name, key in signature_of.items():
        forward[name], backward[name] = timers[key].times
    return OpProfile(forward, backward, len(timers))


def _timer(function: Callable[..., Any], args: Any, kwargs: Any, leaves: list[torch.Tensor]) -> _Timer:
    def forward() -> Any:
        return function(*args, **kwargs)

    if not leaves:
        return _Timer(forward, None)
    with torch.enable_grad():
        sample = pytree.tree_leaves(forward())
    positions = [i for i, leaf in enumerate(sample) if isinstance(leaf, torch.Tensor) and leaf.requires_grad]
    if not positions:
        return _Timer(forward, None)
    grads = [torch.ones_like(sample[i]) for i in positions]

    def both() -> None:
        for leaf in leaves:
            leaf.grad = None
        result = pytree.tree_leaves(forward())
        torch.autograd.backward([result[i] for i in positions], grads)

    return _Timer(forward, both)


@dataclass(frozen=True)
class IsolationCorrection:
    """How an op timed alone maps to its time inside a training step (`fit_isolation_correction`).

    Attributes:
        scale: multiplies every isolated time (cache and allocation effects).
        forward_s: seconds added per profiled forward node (negative: isolation costs more).
        backward_s: seconds added per backward op that takes a measured share.
        fit: calibration model -> (measured, corrected prediction, uncorrected prediction) of
            its one-device step, seconds.
    """

    scale: float = 1.0
    forward_s: float = 0.0
    backward_s: float = 0.0
    fit: Mapping[str, tuple[float, float, float]] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class _Parts:
    """A profile laid over a captured graph. Shapes (n ops): isolated (n,) seconds (0 where not
    measured); forward, backward (n,) bool: ops taking a measured forward time / backward share."""

    isolated: np.ndarray
    forward: np.ndarray
    backward: np.ndarray


def _parts(graph: OpGraph, costs: CostTable, profile: OpProfile, device: int = 0) -> _Parts:
    isolated = np.zeros(graph.num_ops)
    forward = np.zeros(graph.num_ops, dtype=bool)
    backward = np.zeros(graph.num_ops, dtype=bool)
    measured_backward: dict[int, float] = {}
    for op in range(graph.num_ops):
        name = graph.names[op]
        if graph.is_backward[op] or name not in profile.forward_s or graph.kinds[op] == "input":
            continue
        isolated[op], forward[op] = profile.forward_s[name], True
        if graph.coloc[op] != NO_CLASS:
            label = int(graph.coloc[op])
            measured_backward[label] = measured_backward.get(label, 0.0) + profile.backward_s.get(name, 0.0)
    backward_ops = graph.is_backward & (np.array(graph.kinds) != "optimizer")
    for label, measured in measured_backward.items():
        members = np.flatnonzero(backward_ops & (graph.coloc == label))
        if not len(members):
            continue
        modelled = costs.op_time[members, device]
        total = modelled.sum()
        isolated[members] = measured * (modelled / total if total > 0 else np.full(len(members), 1.0 / len(members)))
        backward[members] = True
    return _Parts(isolated, forward, backward)


def profiled_costs(graph: OpGraph, costs: CostTable, profile: OpProfile, *, correction: IsolationCorrection | None = None) -> CostTable:
    """``costs`` with the measured times of ``profile`` where the graph has a matching op,
    corrected from isolation to a training step by ``correction`` (none: taken as they are).

    Shapes: costs.op_time (n, k) -> (n, k); edge_time unchanged. Every device gets the same
    measured time (the profile runs on one local CPU); a corrected time is never negative.
    """
    correction = correction or IsolationCorrection()
    parts = _parts(graph, costs, profile)
    op_time = np.array(costs.op_time, dtype=np.float64)
    step = correction.scale * parts.isolated + np.where(parts.forward, correction.forward_s, 0.0) + np.where(parts.backward, correction.backward_s, 0.0)
    measured = parts.forward | parts.backward
    op_time[measured, :] = np.maximum(step[measured], 0.0)[:, None]
    # The per-node part of the correction is paid by every micro-batch; the scaled part shrinks with it.
    per_node = np.where(parts.forward, correction.forward_s, 0.0) + np.where(parts.backward, correction.backward_s, 0.0)
    op_fixed = np.zeros_like(op_time) if costs.op_fixed is None else np.array(costs.op_fixed, dtype=np.float64)
    op_fixed[measured, :] = np.clip(per_node[measured], 0.0, None)[:, None]
    op_fixed = np.minimum(op_fixed, op_time)
    for array in (op_time, op_fixed):
        array.setflags(write=False)
    return costs.with_op_times(op_time, op_fixed)


def solve_isolation_correction(rows: Sequence[tuple[float, float, float, float, float]], names: Sequence[str]) -> IsolationCorrection:
    """Least squares on relative error of ``measured - rest = scale * isolated + forward_s * n_forward
    + backward_s * n_backward``.

    Shapes: rows (c,) of (measured s, rest s = modelled time of unprofiled ops, isolated s,
    n_forward, n_backward), one per calibration model.
    """
    from scipy.optimize import lsq_linear

    data = np.array(rows, dtype=np.float64).reshape(-1, 5)
    measured, rest, isolated, n_forward, n_backward = data.T
    weight = 1.0 / measured
    matrix = np.column_stack([isolated, n_forward, n_backward]) * weight[:, None]
    target = (measured - rest) * weight
    scale_columns = np.where(np.abs(matrix).max(axis=0) > 0, np.abs(matrix).max(axis=0), 1.0)
    bounds = (np.array([0.1, -np.inf, -np.inf]) * scale_columns, np.array([10.0, np.inf, np.inf]) * scale_columns)
    solution = lsq_linear(matrix / scale_columns, target, bounds=bounds).x / scale_columns
    scale, forward_s, backward_s = (float(v) for v in solution)
    fitted = rest + scale * isolated + forward_s * n_forward + backward_s * n_backward
    uncorrected = rest + isolated
    fit = {name: (float(m), float(f), float(u)) for name, m, f, u in zip(names, measured, fitted, uncorrected, strict=True)}
    return IsolationCorrection(scale, forward_s, backward_s, fit)


def fit_isolation_correction(cluster: Any, *, models: Sequence[str] | None = None, repeats: int = 9, passes: int = 5, rounds: int = 2, threads: int = 1) -> IsolationCorrection:
    """Fit `IsolationCorrection` in this process: per calibration model, one-device training
    steps through the executor (`rlplace.measure.calibrate.time_executor_step`, the fastest of
    ``rounds`` rounds over all models, for the reason `profile_ops` keeps its fastest pass)
    against its isolated op profile, with unprofiled ops (optimizer updates) priced by
    ``cluster``'s cost model (calibrated; device 0). Tens of seconds."""
    from rlplace.measure.calibrate import time_executor_step

    names = list(models or CALIBRATION_MODELS)
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        measured: dict[str, float] = {}
        captured: dict[str, tuple[Any, Any]] = {}
        for _ in range(max(rounds, 1)):
            for name in names:
                graph, program, seconds = time_executor_step(name, torch.device("cpu"))
                captured.setdefault(name, (graph, program))
                measured[name] = min(measured.get(name, float("inf")), seconds)
        rows = []
        for name in names:
            graph, program = captured[name]
            profile = profile_ops(program, repeats=repeats, passes=passes, threads=threads)
            costs = CostTable.build(graph, cluster)
            parts = _parts(graph, costs, profile)
            rest = float(costs.op_time[~(parts.forward | parts.backward), 0].sum())
            rows.append((measured[name], rest, float(parts.isolated.sum()), float(parts.forward.sum()), float(parts.backward.sum())))
    finally:
        torch.set_num_threads(saved_threads)
    return solve_isolation_correction(rows, names)
