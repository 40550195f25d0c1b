"""Capture a PyTorch model into an `OpGraph`: one op per ATen call of one training step.

The model is traced with ``torch.export.export(..., strict=False)``; parameters and inputs on
the ``meta`` device (or real ones, which export turns into fake tensors) mean a 7B-parameter
model costs no weight memory. For a training graph the exported program is traced again by
AOTAutograd (``aot_export_joint_with_descriptors``) into the *joint* graph: the real forward
and backward ATen ops, linked by the tensors the backward pass reads (saved activations).
If that trace fails, the backward pass is derived from the forward ops by the rule of
`_add_backward_by_rule` and ``graph.meta["backward"]`` says so.

Per op:

- ``kind``: a cost category of `rlplace.costs.COMPUTE_EFFICIENCY` (matmul, conv, attention,
  embedding, norm, elementwise, reduction, optimizer, other), ``view`` for ops that only
  reinterpret memory (cost 0), ``input`` for the model's input tensors;
  ``graph.meta["aten_targets"]`` keeps the exact ATen overload of every op.
- ``flops``: what ``torch.utils.flop_counter.FlopCounterMode`` counts for the op (matmuls,
  convolutions, attention; element-wise ops count 0, they are bandwidth bound), so the sum
  over forward ops equals FlopCounterMode over the module's forward.
- ``bytes_accessed``: bytes of the distinct tensors read plus bytes written (0 for views).
- ``output_bytes``: bytes of the op's output tensors; for a view, at most its base's bytes.
- ``param_bytes``: each parameter counted once, on its first user (views of a parameter are
  folded into the parameter); later users get an edge from that owner carrying the
  parameter's bytes. ``graph.meta["op_params"]``/``["op_buffers"]`` name them per op.
- ``resident_bytes``: parameters and buffers, plus for training the gradient (parameter's
  dtype) and the optimizer state (`OPTIMIZERS`, fp32) of every trainable parameter.
- ``graph.meta["module_paths"]``: the owning module of every op (``nn_module_stack``; for
  backward ops the forward op's module).

Training graphs put every backward op in the colocation class of the forward op it
differentiates (autograd's ``seq_nr``), and add one ``optimizer`` op per trainable parameter,
fed by the parameter's gradient and colocated with the parameter's owner.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import operator
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph


@dataclass(frozen=True)
class OptimizerSpec:
    """Memory and work of one optimizer per parameter element.

    Attributes:
        states: fp32 state tensors kept per parameter (Adam: exp_avg and exp_avg_sq).
        flops_per_element: floating-point operations of one update per parameter element.
    """

    states: int
    flops_per_element: float


#: Optimizers a training graph can model. Adam's update (moments, bias correction, sqrt,
#: division, weight decay) is about a dozen FLOPs per element; SGD is a multiply-add.
OPTIMIZERS: dict[str, OptimizerSpec] = {
    "adam": OptimizerSpec(states=2, flops_per_element=12.0),
    "adamw": OptimizerSpec(states=2, flops_per_element=14.0),
    "sgd-momentum": OptimizerSpec(states=1, flops_per_element=4.0),
    "sgd": OptimizerSpec(states=0, flops_per_element=2.0),
}
OPTIMIZER_STATE_BYTES = 4  # optimizer states are kept in fp32 whatever the parameter dtype
BACKWARD_MODES = ("auto", "joint", "rule")

logger = logging.getLogger(__name__)

_PRECISIONS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


# ============================================================================ public API
def capture_model(
    module: nn.Module,
    example_inputs: Sequence[Any] | Mapping[str, Any],
    *,
    training: bool = True,
    optimizer: str = "adam",
    batch_size: int | None = None,
    name: str | None = None,
    backward: str = "auto",
) -> OpGraph:
    """Trace ``module`` on ``example_inputs`` into an `OpGraph` without real compute.

    Args:
        module: the model; build it under ``torch.device("meta")`` to use no weight memory.
        example_inputs: positional inputs (a tuple or list) or keyword inputs (a dict);
            tensors may be real or on ``meta`` (moved to the module's device), ``None`` is
            allowed.
        training: forward + backward + optimizer update (True) or the forward pass alone.
        optimizer: a key of `OPTIMIZERS`; sets optimizer state memory and update ops.
        batch_size: recorded in ``graph.meta["batch_size"]`` (default: dim 0 of the first
            tensor input).
        name: the graph's name (default: the module's class name).
        backward: ``"joint"`` (the real derivative graph from AOTAutograd), ``"rule"``
            (`_add_backward_by_rule`), or ``"auto"``: joint, falling back to the rule.

    Returns:
        The graph, with ``meta`` keys ``source``, ``model``, ``training``, ``optimizer``,
        ``batch_size``, ``precision``, ``backward``, ``aten_targets``, ``module_paths``,
        ``op_params``, ``op_buffers``, ``param_aliases``.

    Raises:
        RlplaceError: bad arguments, or a model that torch.export cannot trace (the message
            names the construct and what to try).
    """
    if optimizer not in OPTIMIZERS:
        raise RlplaceError(f"unknown optimizer {optimizer!r}; choose one of {sorted(OPTIMIZERS)}")
    if backward not in BACKWARD_MODES:
        raise RlplaceError(f"unknown backward mode {backward!r}; choose one of {list(BACKWARD_MODES)}")
    if not isinstance(module, nn.Module):
        raise RlplaceError(f"capture needs a torch.nn.Module, got {type(module).__name__}")
    graph_name = name or type(module).__name__
    args, kwargs = _split_inputs(example_inputs, graph_name)
    device = _module_device(module)
    args, kwargs = _move_inputs(args, device), _move_inputs(kwargs, device)

    canonical = _canonical_names(module)
    trainable = [canonical[name] for name, param in module.named_parameters() if param.requires_grad]
    started = (time.perf_counter(), time.process_time())
    was_training = module.training
    module.train(training)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode(False))
            stack.enter_context(torch.enable_grad() if training else torch.no_grad())
            exported = _export(module, args, kwargs, graph_name)
            _log_phase(graph_name, "export", started)
            flops = _FlopCounter()
            backward_used, note = "none", ""
            if not training:
                built = _convert_fx(exported.graph, _export_roles(exported), flops, canonical)
            elif backward == "rule":
                built, backward_used = _capture_by_rule(exported, flops, canonical, optimizer, trainable), "rule"
            else:
                try:
                    built, backward_used = _capture_joint(exported, args, kwargs, flops, canonical, optimizer, trainable, stack), "joint"
                except Exception as exc:  # AOTAutograd can fail on any op; the rule still gives a graph
                    if backward == "joint":
                        raise RlplaceError(f"{graph_name}: tracing the backward pass failed ({_first_line(exc)}); retry with backward='rule'") from exc
                    logger.warning("capture %s: joint forward/backward trace failed (%s); deriving the backward pass by rule", graph_name, _first_line(exc))
                    built, backward_used = _capture_by_rule(exported, flops, canonical, optimizer, trainable), "rule"
                    note = f"joint trace failed: {_first_line(exc)}"
            _log_phase(graph_name, f"ops ({backward_used} backward)", started)
    finally:
        module.train(was_training)

    _attach_unused_tensors(built, module)
    meta = {
        "source": "capture",
        "model": graph_name,
        "training": training,
        "optimizer": optimizer if training else None,
        "batch_size": batch_size if batch_size is not None else _infer_batch_size(args, kwargs),
        "precision": _precision(module),
        "backward": backward_used,
    }
    if note:
        meta["backward_note"] = note
    graph = built.to_graph(graph_name, meta, module)
    _log_phase(graph_name, f"OpGraph ({graph.num_ops} ops, {graph.num_edges} edges)", started)
    return graph


def capture_spec(
    spec: str,
    *,
    training: bool = True,
    optimizer: str = "adam",
    batch_size: int | None = None,
    backward: str = "auto",
) -> OpGraph:
    """Capture the model a MODEL spec names (``path/to/file.py:function`` or ``zoo:NAME``).

    The spec's function (or the zoo) is asked for ``batch_size`` when one is given; see
    `rlplace.modelspec.load_model_spec`. ``graph.meta["spec"]`` keeps the spec.
    """
    from rlplace.modelspec import load_model_spec

    loaded = load_model_spec(spec, batch_size=batch_size)
    graph = capture_model(
        loaded.module, loaded.example_inputs, training=training, optimizer=optimizer, batch_size=batch_size, name=loaded.name, backward=backward
    )
    return OpGraph(**{**{f: getattr(graph, f) for f in _GRAPH_FIELDS}, "meta": {**graph.meta, "spec": spec}})


def _log_phase(graph_name: str, phase: str, started: tuple[float, float]) -> None:
    """Log how long capture has run so far: wall seconds and this process's CPU seconds."""
    wall, cpu = time.perf_counter() - started[0], time.process_time() - started[1]
    logger.info("capture %s: %s done at %.2f s wall, %.2f s CPU", graph_name, phase, wall, cpu)


# ============================================================================ building
@dataclass
class _Op:
    """One op while the graph is being built (mutable; `OpGraph` is the frozen result)."""

    name: str
    kind: str
    aten: str
    module_path: str
    flops: float = 0.0
    bytes_accessed: float = 0.0
    output_bytes: float = 0.0
    param_bytes: float = 0.0
    resident_bytes: float = 0.0
    is_backward: bool = False
    params: list[str] = field(default_factory=list)
    buffers: list[str] = field(default_factory=list)


@dataclass
class _Built:
    """Ops and edges of a captured graph, plus what the training passes need.

    Attributes:
        ops: ops in a topological order.
        edges: ``(src, dst) -> bytes``, ``src < dst``.
        param_owner: parameter name -> id of the op holding it; buffer_owner likewise.
        tensor_bytes: parameter or buffer name -> bytes; tensor_elements: -> element count.
        coloc_links: pairs of op ids that must share a device.
        grads: trainable parameter name -> id of the op producing its gradient (training).
    """

    ops: list[_Op] = field(default_factory=list)
    edges: dict[tuple[int, int], float] = field(default_factory=dict)
    param_owner: dict[str, int] = field(default_factory=dict)
    buffer_owner: dict[str, int] = field(default_factory=dict)
    tensor_bytes: dict[str, float] = field(default_factory=dict)
    tensor_elements: dict[str, int] = field(default_factory=dict)
    coloc_links: list[tuple[int, int]] = field(default_factory=list)
    grads: dict[str, int] = field(default_factory=dict)

    def add_op(self, op: _Op) -> int:
        self.ops.append(op)
        return len(self.ops) - 1

    def add_edge(self, src: int, dst: int, num_bytes: float) -> None:
        if src == dst:
            return
        if src > dst:
            raise AssertionError(f"edge {src} -> {dst} against the build order")
        self.edges[(src, dst)] = self.edges.get((src, dst), 0.0) + float(num_bytes)

    def to_graph(self, name: str, meta: dict[str, Any], module: nn.Module) -> OpGraph:
        coloc = _union_classes(len(self.ops), self.coloc_links)
        op_dicts = [
            {
                "name": op.name,
                "kind": op.kind,
                "flops": op.flops,
                "bytes_accessed": op.bytes_accessed,
                "output_bytes": op.output_bytes,
                "param_bytes": op.param_bytes,
                "resident_bytes": max(op.resident_bytes, op.param_bytes),
                "is_backward": op.is_backward,
                "coloc": coloc[i],
            }
            for i, op in enumerate(self.ops)
        ]
        edge_dicts = [{"src": self.ops[s].name, "dst": self.ops[d].name, "bytes": b} for (s, d), b in self.edges.items()]
        graph = OpGraph.build(op_dicts, edge_dicts, name=name)
        position = {op_name: i for i, op_name in enumerate(graph.names)}
        order = sorted(range(len(self.ops)), key=lambda i: position[self.ops[i].name])
        meta = {
            **meta,
            "aten_targets": [self.ops[i].aten for i in order],
            "module_paths": [self.ops[i].module_path for i in order],
            "op_params": [list(self.ops[i].params) for i in order],
            "op_buffers": [list(self.ops[i].buffers) for i in order],
            "param_aliases": _param_aliases(module),
        }
        return OpGraph(**{**{f: getattr(graph, f) for f in _GRAPH_FIELDS}, "meta": meta})


_GRAPH_FIELDS = tuple(f for f in OpGraph.__dataclass_fields__ if f != "meta")


def _union_classes(n: int, links: Iterable[tuple[int, int]]) -> list[int | None]:
    """Colocation label per op: the root of its union-find set, None for singletons."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in links:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = [find(i) for i in range(n)]
    sizes: dict[int, int] = {}
    for root in roots:
        sizes[root] = sizes.get(root, 0) + 1
    return [root if sizes[root] > 1 else None for root in roots]


# ============================================================================ export
def _split_inputs(example_inputs: Any, name: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    raise RlplaceError(f"{name}: example inputs must be a tuple of positional inputs or a dict of keyword inputs, got {type(example_inputs).__name__}")


def _module_device(module: nn.Module) -> torch.device | None:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return None


def _move_inputs(value: Any, device: torch.device | None) -> Any:
    """Tensors onto the module's device; meta tensors bound for a real device become zeros."""
    if device is None:
        return value

    def move(leaf: Any) -> Any:
        if not isinstance(leaf, torch.Tensor) or leaf.device == device:
            return leaf
        if leaf.device.type == "meta":
            return torch.zeros(leaf.shape, dtype=leaf.dtype, device=device)
        return leaf.to(device)

    return torch.utils._pytree.tree_map(move, value)


def _export(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], name: str) -> torch.export.ExportedProgram:
    # On failure torch prints the partial graph to stderr; our one-line error replaces it.
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed), _quiet_loggers(_NOISY_TORCH_LOGGERS):
            exported = torch.export.export(module, args, kwargs, strict=False)
    except Exception as exc:  # export raises many types; all mean "this model cannot be traced"
        logger.debug("torch.export of %s printed:\n%s", name, printed.getvalue())
        raise RlplaceError(_explain_export_failure(exc, name)) from exc
    sys.stderr.write(printed.getvalue())
    return exported


#: Loggers that print the traced graph as a warning before export raises; our error says it in one line.
_NOISY_TORCH_LOGGERS = ("torch.fx.experimental.symbolic_shapes", "torch._export.non_strict_utils")


@contextlib.contextmanager
def _quiet_loggers(names: Sequence[str]) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for each, level in zip(loggers, levels, strict=True):
            each.setLevel(level)


_DATA_DEPENDENT = ("data-dependent", "GuardOnDataDependentSymNode", "Could not guard on", "Could not extract specialized integer")


def _explain_export_failure(exc: BaseException, name: str) -> str:
    text = f"{type(exc).__name__}: {exc}"
    location = _user_location(exc)
    where = f" at {location}" if location else ""
    if any(marker in text for marker in _DATA_DEPENDENT):
        return (
            f"torch.export cannot capture {name}: data-dependent control flow{where} ({_first_line(exc)}); "
            "rewrite data-dependent control flow with torch.cond (or move it out of forward), or pass inputs of a fixed shape"
        )
    return (
        f"torch.export cannot capture {name}{where}: {_first_line(exc)}; "
        "make forward traceable by torch.export (non-strict): fixed-shape tensor inputs, no data-dependent Python branches, no tensor.item() driving control flow"
    )


def _first_line(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        line = line.strip()
        if line and not line.startswith(("def ", "#")):
            line = line.split(".  ")[0]  # torch appends details after two spaces
            return f"{type(exc).__name__}: {line}"
    return type(exc).__name__


def _user_location(exc: BaseException) -> str:
    """``file:line in function`` of the model code that raised, when torch reports it."""
    match = re.search(r'The following call raised this error:\s*\n\s*File "([^"]+)", line (\d+), in (\S+)', str(exc))
    if match:
        return f"{match.group(1)}:{match.group(2)} in {match.group(3)}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/torch/" not in f.filename and "/rlplace/" not in f.filename]
    if frames:
        return f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}"
    return ""


# ============================================================================ roles
@dataclass(frozen=True)
class _Role:
    """What a placeholder of a traced graph stands for.

    kind: ``param``, ``buffer``, ``input``, ``tangent`` (gradient of forward output number
    ``index``) or ``ignore`` (no tensor).
    """

    kind: str
    label: str = ""
    index: int = -1


def _export_roles(exported: torch.export.ExportedProgram) -> dict[str, _Role]:
    from torch.export.graph_signature import InputKind, TensorArgument

    roles: dict[str, _Role] = {}
    for spec in exported.graph_signature.input_specs:
        if not isinstance(spec.arg, TensorArgument):
            continue
        if spec.kind == InputKind.PARAMETER:
            roles[spec.arg.name] = _Role("param", str(spec.target))
        elif spec.kind in (InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            roles[spec.arg.name] = _Role("buffer", str(spec.target))
        elif spec.kind == InputKind.USER_INPUT:
            roles[spec.arg.name] = _Role("input", spec.arg.name)
        else:
            roles[spec.arg.name] = _Role("ignore")
    return roles


def _joint_roles(joint: torch.fx.Graph, user_input_names: Sequence[str]) -> dict[str, _Role]:
    from torch._functorch._aot_autograd import descriptors as d

    roles: dict[str, _Role] = {}
    tensor_inputs = 0
    for node in joint.nodes:
        if node.op != "placeholder":
            continue
        desc = node.meta.get("desc")
        if not isinstance(node.meta.get("val"), torch.Tensor):
            roles[node.name] = _Role("ignore")
        elif isinstance(desc, d.ParamAOTInput):
            roles[node.name] = _Role("param", desc.target)
        elif isinstance(desc, d.BufferAOTInput):
            roles[node.name] = _Role("buffer", desc.target)
        elif isinstance(desc, d.TangentAOTInput) and isinstance(desc.output, d.PlainAOTOutput):
            roles[node.name] = _Role("tangent", index=desc.output.idx)
        elif isinstance(desc, d.PlainAOTInput):
            label = user_input_names[tensor_inputs] if tensor_inputs < len(user_input_names) else node.name
            tensor_inputs += 1
            roles[node.name] = _Role("input", label)
        else:
            roles[node.name] = _Role("ignore")
    return roles


# ============================================================================ fx -> ops
def _convert_fx(
    graph: torch.fx.Graph,
    roles: Mapping[str, _Role],
    flops: _FlopCounter,
    canonical: Mapping[str, str],
    *,
    joint: bool = False,
) -> _Built:
    """One op per tensor-producing call of ``graph``; see the module docstring for fields.

    ``canonical`` maps every name of a tied parameter or buffer to the one name it is
    counted under.

    In a joint graph (``joint=True``) backward nodes are flagged and linked for colocation
    with the first forward op of the same autograd ``seq_nr``; tangents resolve to the op
    producing the forward output they differentiate.
    """
    built = _Built()
    # source of every fx value: ("op", op id, bytes) | ("param", name) | ("buffer", name) | ("tangent", output index)
    source: dict[torch.fx.Node, tuple[Any, ...]] = {}
    forward_outputs: dict[int, torch.fx.Node] = {}
    seq_anchor: dict[int, int] = {}  # autograd seq_nr -> first forward op created under it
    folded_seq: dict[int, str] = {}  # seq_nr of a folded view of a parameter -> parameter
    backward_seq: list[tuple[int, int]] = []  # (op id, seq_nr) of backward ops
    if joint:
        forward_outputs = _joint_forward_outputs(graph)
    fx_names = {node.name for node in graph.nodes if node.op != "placeholder"}

    for node in graph.nodes:
        if node.op == "placeholder":
            role = roles.get(node.name, _Role("ignore"))
            if role.kind in ("param", "buffer"):
                tensor_name = canonical.get(role.label, role.label)
                source[node] = (role.kind, tensor_name)
                _record_tensor(built, tensor_name, node.meta.get("val"))
            elif role.kind == "input":
                value_bytes = float(_nbytes(node.meta.get("val")))
                op_name = role.label if role.label and role.label not in fx_names else node.name
                op_id = built.add_op(_Op(name=op_name, kind="input", aten="input", module_path="", output_bytes=value_bytes))
                source[node] = ("op", op_id, value_bytes)
            elif role.kind == "tangent":
                source[node] = ("tangent", role.index)
            continue
        if node.op == "get_attr":
            value = node.meta.get("val")
            if isinstance(value, torch.Tensor):
                source[node] = ("buffer", str(node.target))
                _record_tensor(built, str(node.target), value)
            continue
        if node.op != "call_function":
            continue
        value = node.meta.get("val")
        if node.target is operator.getitem:
            parent = source.get(node.args[0])  # type: ignore[arg-type]
            if parent is not None and parent[0] == "op":
                source[node] = ("op", parent[1], float(_nbytes(value)))
            elif parent is not None:
                source[node] = parent
            continue
        if not _has_tensor(value):
            continue
        inputs = _resolve_inputs(node, source, forward_outputs)
        seq_nr = node.meta.get("seq_nr")
        is_backward = bool(joint and (node.meta.get("autograd_backward") or node.meta.get("partitioner_tag") == "is_backward"))
        view = _is_view(node)
        if view and len(inputs) == 1 and inputs[0][0] in ("param", "buffer"):
            source[node] = inputs[0]  # a view of a parameter is the parameter
            if joint and not is_backward and isinstance(seq_nr, int):
                folded_seq.setdefault(seq_nr, inputs[0][1])
            continue
        out_bytes = float(_nbytes(value))
        if view:
            base = max((_input_bytes(built, src) for src in inputs), default=out_bytes)
            out_bytes = min(out_bytes, base)
        op = _Op(
            name=node.name,
            kind="view" if view else op_kind(node.target),
            aten=_target_name(node.target),
            module_path=_module_path(node, backward=is_backward) or _inherited_path(built, inputs, is_backward),
            flops=0.0 if view else flops.count(node),
            output_bytes=out_bytes,
            is_backward=is_backward,
        )
        if not view:
            op.bytes_accessed = sum(_input_bytes(built, src) for src in inputs) + out_bytes
        op_id = built.add_op(op)
        for src in inputs:
            _connect(built, src, op_id)
        source[node] = ("op", op_id, out_bytes)
        if joint and isinstance(seq_nr, int):
            if is_backward and not node.meta.get("is_gradient_acc"):
                backward_seq.append((op_id, seq_nr))
            elif not is_backward:
                seq_anchor.setdefault(seq_nr, op_id)

    if joint:
        for seq_nr, param in folded_seq.items():
            if param in built.param_owner and seq_nr not in seq_anchor:
                seq_anchor[seq_nr] = built.param_owner[param]
        built.coloc_links.extend((seq_anchor[seq], op_id) for op_id, seq in backward_seq if seq in seq_anchor)
        built.grads = _joint_gradients(graph, source, canonical)
    return built


def _inherited_path(built: _Built, inputs: Sequence[tuple[Any, ...]], is_backward: bool) -> str:
    """Module path of a backward op autograd made outside any module (gradient sums): its
    first producer's, so coarsening by module keeps it with the layer it belongs to."""
    if not is_backward:
        return ""
    return next((built.ops[src[1]].module_path for src in inputs if src[0] == "op" and built.ops[src[1]].module_path), "")


def _record_tensor(built: _Built, tensor_name: str, value: Any) -> None:
    built.tensor_bytes[tensor_name] = float(_nbytes(value))
    built.tensor_elements[tensor_name] = int(value.numel()) if isinstance(value, torch.Tensor) else 0


def _resolve_inputs(
    node: torch.fx.Node, source: Mapping[torch.fx.Node, tuple[Any, ...]], forward_outputs: Mapping[int, torch.fx.Node]
) -> list[tuple[Any, ...]]:
    """Distinct sources of the tensors ``node`` reads (op values, parameters, buffers)."""
    seen: set[Any] = set()
    resolved: list[tuple[Any, ...]] = []
    for arg in node.all_input_nodes:
        src = source.get(arg)
        if src is not None and src[0] == "tangent":
            output = forward_outputs.get(src[1])
            value_bytes = float(_nbytes(arg.meta.get("val")))
            producer = source.get(output) if output is not None else None
            src = ("op", producer[1], value_bytes) if producer is not None and producer[0] == "op" else None
            key: Any = ("tangent", arg)
        else:
            key = (src[0], src[1]) if src is not None and src[0] in ("param", "buffer") else arg
        if src is None or key in seen:
            continue
        seen.add(key)
        resolved.append(src)
    return resolved


def _input_bytes(built: _Built, src: tuple[Any, ...]) -> float:
    return float(src[2]) if src[0] == "op" else built.tensor_bytes.get(src[1], 0.0)


def _connect(built: _Built, src: tuple[Any, ...], op_id: int) -> None:
    """Edge from a value's producer to ``op_id``; the first user of a parameter owns it."""
    if src[0] == "op":
        built.add_edge(src[1], op_id, src[2])
        return
    kind, tensor_name = src
    owners = built.param_owner if kind == "param" else built.buffer_owner
    owner = owners.get(tensor_name)
    size = built.tensor_bytes.get(tensor_name, 0.0)
    if owner is None:
        owners[tensor_name] = op_id
        op = built.ops[op_id]
        if kind == "param":
            op.param_bytes += size
            op.params.append(tensor_name)
        else:
            op.buffers.append(tensor_name)
        op.resident_bytes += size
    else:
        built.add_edge(owner, op_id, size)


def _joint_forward_outputs(graph: torch.fx.Graph) -> dict[int, torch.fx.Node]:
    from torch._functorch._aot_autograd import descriptors as d

    output = next(node for node in reversed(graph.nodes) if node.op == "output")
    values = output.args[0]
    descs = output.meta.get("desc") or []
    found: dict[int, torch.fx.Node] = {}
    for value, desc in zip(values, descs, strict=False):
        if isinstance(desc, d.PlainAOTOutput) and isinstance(value, torch.fx.Node):
            found[desc.idx] = value
    return found


def _joint_gradients(graph: torch.fx.Graph, source: Mapping[torch.fx.Node, tuple[Any, ...]], canonical: Mapping[str, str]) -> dict[str, int]:
    """Trainable parameter name -> id of the op producing its gradient."""
    from torch._functorch._aot_autograd import descriptors as d

    output = next(node for node in reversed(graph.nodes) if node.op == "output")
    grads: dict[str, int] = {}
    for value, desc in zip(output.args[0], output.meta.get("desc") or [], strict=False):
        if isinstance(desc, d.GradAOTOutput) and isinstance(desc.grad_of, d.ParamAOTInput) and isinstance(value, torch.fx.Node):
            src = source.get(value)
            if src is not None and src[0] == "op":
                grads[canonical.get(desc.grad_of.target, desc.grad_of.target)] = src[1]
    return grads


# ============================================================================ training
def _capture_by_rule(
    exported: torch.export.ExportedProgram, flops: _FlopCounter, canonical: Mapping[str, str], optimizer: str, trainable: Sequence[str]
) -> _Built:
    """Forward ops from the exported program, backward and optimizer by `_add_backward_by_rule`."""
    return _add_backward_by_rule(_convert_fx(exported.graph, _export_roles(exported), flops, canonical), optimizer, trainable)


def _capture_joint(
    exported: torch.export.ExportedProgram,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    flops: _FlopCounter,
    canonical: Mapping[str, str],
    optimizer: str,
    trainable: Sequence[str],
    stack: contextlib.ExitStack,
) -> _Built:
    """Forward + backward ATen graph from AOTAutograd, plus optimizer ops.

    Raises `_IncompleteBackward` when no trainable parameter the forward reads gets a
    gradient (the caller then falls back to the rule).
    """
    import torch.fx.traceback as fx_traceback
    from torch._functorch.aot_autograd import aot_export_joint_with_descriptors
    from torch.export.graph_signature import TensorArgument

    graph_module = exported.module()
    _use_memory_efficient_attention(graph_module)
    fake_args, fake_kwargs = _on_fake_cpu(graph_module, args, kwargs)
    with fx_traceback.preserve_node_meta():
        joint = aot_export_joint_with_descriptors(stack, graph_module, fake_args, fake_kwargs)
    user_inputs = [spec.arg.name for spec in exported.graph_signature.input_specs if spec.kind.name == "USER_INPUT" and isinstance(spec.arg, TensorArgument)]
    graph = joint.graph_module.graph
    built = _convert_fx(graph, _joint_roles(graph, user_inputs), flops, canonical, joint=True)
    used = [name for name in trainable if name in built.param_owner]
    missing = [name for name in used if name not in built.grads]
    if used and len(missing) == len(used):
        raise _IncompleteBackward(f"the traced backward pass computes none of the {len(used)} parameter gradients")
    if missing:
        logger.warning("capture: no gradient reaches %d of %d trainable parameters (first: %s)", len(missing), len(used), missing[0])
    _add_optimizer_ops(built, optimizer)
    return built


class _IncompleteBackward(RuntimeError):
    """The joint trace lost the backward pass (no parameter gets a gradient)."""


def _on_fake_cpu(graph_module: torch.fx.GraphModule, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Move ``graph_module`` (our private copy) and the inputs onto fake CPU tensors.

    AOTAutograd traces some composite ops wrongly on the meta device (in torch 2.13 the
    backward of ``cross_entropy`` silently disappears: ``nll_loss`` is treated as having no
    derivative), while fake CPU tensors trace them like real ones and still allocate
    nothing. Parameters and buffers are replaced by fake tensors of the same shape, dtype
    and ``requires_grad``; tensors the graph creates on another device (meta, cuda) are
    created on CPU instead.

    Returns:
        The inputs as fake CPU tensors (non-tensors unchanged).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    cpu = torch.device("cpu")
    mode = FakeTensorMode(shape_env=ShapeEnv(), static_shapes=True)

    def fake(tensor: torch.Tensor) -> torch.Tensor:
        with mode:
            return torch.empty_strided(tuple(tensor.shape), tuple(tensor.stride()), dtype=tensor.dtype, device=cpu)

    for qualified_name, param in list(graph_module.named_parameters(remove_duplicate=False)):
        owner_name, _, attribute = qualified_name.rpartition(".")
        owner = graph_module.get_submodule(owner_name)
        setattr(owner, attribute, nn.Parameter(fake(param), requires_grad=param.requires_grad))
    for qualified_name, buffer in list(graph_module.named_buffers(remove_duplicate=False)):
        owner_name, _, attribute = qualified_name.rpartition(".")
        graph_module.get_submodule(owner_name)._buffers[attribute] = fake(buffer)
    for name, value in list(vars(graph_module).items()):
        if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
            setattr(graph_module, name, fake(value))  # lifted constants
    _retarget_devices(graph_module, cpu)
    fake_inputs = torch.utils._pytree.tree_map(lambda leaf: fake(leaf) if isinstance(leaf, torch.Tensor) else leaf, (args, kwargs))
    return fake_inputs[0], fake_inputs[1]


def _retarget_devices(graph_module: torch.fx.GraphModule, device: torch.device) -> None:
    """Rewrite device arguments of calls (``arange(device=meta)``, ``to("cuda")`` ...) to
    ``device``, in every subgraph, so the graph runs on the fake tensors of `_on_fake_cpu`."""

    def retarget(value: Any) -> Any:
        if isinstance(value, torch.device) and value != device:
            return device
        if isinstance(value, str) and (value == "meta" or value.split(":")[0] in ("cuda", "xpu", "mps")):
            return str(device)
        return value

    for submodule in graph_module.modules():  # higher-order ops keep their bodies in submodules
        if not isinstance(submodule, torch.fx.GraphModule):
            continue
        changed = False
        for node in submodule.graph.nodes:
            if node.op != "call_function":
                continue
            new_args, new_kwargs = torch.utils._pytree.tree_map(retarget, (node.args, node.kwargs))
            if new_args != node.args or new_kwargs != node.kwargs:
                node.args, node.kwargs = new_args, new_kwargs
                changed = True
        if changed:
            submodule.recompile()


def _add_optimizer_ops(built: _Built, optimizer: str) -> None:
    """One update op per trainable parameter, after its gradient, colocated with its owner.

    The owner's ``resident_bytes`` grows by the gradient (parameter dtype) and the optimizer
    states (fp32). The update reads parameter, gradient and states and writes parameter and
    states: ``bytes_accessed = 2 * param + grad + 2 * states``.
    """
    spec = OPTIMIZERS[optimizer]
    for param, grad_op in sorted(built.grads.items(), key=lambda item: item[1]):
        owner = built.param_owner.get(param)
        if owner is None:
            continue
        size = built.tensor_bytes[param]
        elements = built.tensor_elements.get(param, 0)
        state_bytes = spec.states * OPTIMIZER_STATE_BYTES * elements
        built.ops[owner].resident_bytes += size + state_bytes
        update = _Op(
            name=f"{optimizer}.{param}",
            kind="optimizer",
            aten=f"optimizer.{optimizer}",
            module_path=param.rpartition(".")[0],
            flops=spec.flops_per_element * elements,
            bytes_accessed=2 * size + size + 2 * state_bytes,
            is_backward=True,
        )
        op_id = built.add_op(update)
        built.add_edge(grad_op, op_id, size)
        built.coloc_links.append((owner, op_id))


def _add_backward_by_rule(forward: _Built, optimizer: str, trainable: Iterable[str]) -> _Built:
    """Training graph from forward ops alone (used when the joint trace fails).

    For every forward op ``f`` (inputs excepted) an op ``f.grad`` of the same kind with

    - FLOPs: 2 x f's FLOPs for ops that do any (matmul, conv, attention: the gradients of
      both operands, e.g. dX = dY W^T and dW = X^T dY), 0 otherwise;
    - bytes accessed: f's bytes accessed plus its output bytes (reads the output gradient
      and the saved inputs, writes the input gradients);
    - output bytes: the bytes of f's inputs (their gradients).

    Every forward edge ``u -> v`` (b bytes) gets a reversed edge ``v.grad -> u.grad`` (b bytes,
    the gradient has the tensor's size), and ``f -> f.grad`` carries f's output (the saved
    activation, alive until the backward op). ``f`` and ``f.grad`` share a colocation class.
    Gradients of parameters come from the owner's grad op; optimizer ops follow
    `_add_optimizer_ops`.
    """
    built = _Built(
        ops=list(forward.ops),
        edges=dict(forward.edges),
        param_owner=dict(forward.param_owner),
        buffer_owner=dict(forward.buffer_owner),
        tensor_bytes=dict(forward.tensor_bytes),
        tensor_elements=dict(forward.tensor_elements),
    )
    trainable = set(trainable)
    n = len(forward.ops)
    in_bytes = [0.0] * n
    for (_, dst), num_bytes in forward.edges.items():
        in_bytes[dst] += num_bytes
    grad_of: dict[int, int] = {}
    for f in reversed(range(n)):
        op = forward.ops[f]
        if op.kind == "input":
            continue
        grad = _Op(
            name=f"{op.name}.grad",
            kind=op.kind,
            aten=f"{op.aten}.grad",
            module_path=op.module_path,
            flops=2.0 * op.flops,
            bytes_accessed=0.0 if op.kind == "view" else op.bytes_accessed + op.output_bytes,
            output_bytes=in_bytes[f] + op.param_bytes,
            is_backward=True,
        )
        grad_of[f] = built.add_op(grad)
        built.add_edge(f, grad_of[f], op.output_bytes)
        built.coloc_links.append((f, grad_of[f]))
    for (src, dst), num_bytes in forward.edges.items():
        if src in grad_of and dst in grad_of:
            built.add_edge(grad_of[dst], grad_of[src], num_bytes)
    built.grads = {param: grad_of[owner] for param, owner in forward.param_owner.items() if owner in grad_of and param in trainable}
    _add_optimizer_ops(built, optimizer)
    return built


# ============================================================================ per-op facts
class _FlopCounter:
    """FLOPs of one fx node exactly as ``FlopCounterMode`` counts them.

    Ops in FlopCounterMode's registry (mm, addmm, bmm, convolution, attention ...) are
    counted by the registry's formula on the node's shapes; composite ops (linear, matmul,
    einsum, scaled_dot_product_attention ...) are run on meta tensors under FlopCounterMode,
    which decomposes them the way it would inside the whole model; the result is cached per
    call signature. Every other op counts 0.
    """

    def __init__(self) -> None:
        from torch.utils.flop_counter import flop_registry

        self._registry = flop_registry
        self._cache: dict[tuple[Any, str], float] = {}

    def count(self, node: torch.fx.Node) -> float:
        target = node.target
        if isinstance(target, torch._ops.HigherOrderOperator):
            return self._count_higher_order(node)
        if not isinstance(target, torch._ops.OpOverload):
            return 0.0
        args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda arg: arg.meta.get("val"))
        formula = self._registry.get(target._overloadpacket)
        if target._overloadpacket is torch.ops.aten.convolution_backward:
            return _conv_backward_flops(formula, args, kwargs, node.meta.get("val"))
        if formula is not None:
            return float(formula(*args, out_val=node.meta.get("val"), **kwargs))
        if not target.has_kernel_for_dispatch_key(torch._C.DispatchKey.CompositeImplicitAutograd):
            return 0.0
        key = (target, _signature((args, kwargs)))
        if key not in self._cache:
            from torch.utils.flop_counter import FlopCounterMode

            meta_args, meta_kwargs = torch.utils._pytree.tree_map(_as_meta, (args, kwargs))
            with FlopCounterMode(display=False) as counter:
                target(*meta_args, **meta_kwargs)
            self._cache[key] = float(counter.get_total_flops())
        return self._cache[key]

    def _count_higher_order(self, node: torch.fx.Node) -> float:
        """Run a higher-order op (``wrap_with_set_grad_enabled``, ``cond`` ...) on meta
        tensors under FlopCounterMode; its body graph comes from the owning module."""
        from torch.utils.flop_counter import FlopCounterMode

        owner = node.graph.owning_module

        def resolve(arg: torch.fx.Node) -> Any:
            if arg.op == "get_attr" and owner is not None:
                return operator.attrgetter(str(arg.target))(owner)
            return _as_meta(arg.meta.get("val"))

        args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), resolve)
        try:
            with FlopCounterMode(display=False) as counter:
                node.target(*args, **kwargs)  # type: ignore[operator]
        except Exception as exc:  # a body that cannot run on meta: count it as 0, say so
            logger.debug("capture: cannot count FLOPs of %s (%s)", node.name, _first_line(exc))
            return 0.0
        return float(counter.get_total_flops())


def _conv_backward_flops(formula: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any], out_val: Any) -> float:
    """FlopCounterMode's ``convolution_backward`` count with the weight gradient of a grouped
    convolution divided by ``groups``.

    torch 2.13 counts that term as a dense convolution (``C_in * C_out`` channel pairs instead
    of ``C_in * C_out / groups``), so a depthwise convolution's backward would read ``C``
    times too many FLOPs; the input gradient term is right and kept as is.
    """
    groups = int(args[9]) if len(args) > 9 else int(kwargs.get("groups", 1))
    mask = list(args[10] if len(args) > 10 else kwargs["output_mask"])
    head = list(args[:10])

    def count(output_mask: list[bool]) -> float:
        return float(formula(*head, output_mask, *args[11:], out_val=out_val, **kwargs))

    grad_input = count([mask[0], False, False]) if mask[0] else 0.0
    grad_weight = count([False, mask[1], False]) if mask[1] else 0.0
    return grad_input + grad_weight / max(groups, 1)


def _as_meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return torch.empty_strided(tuple(value.shape), tuple(value.stride()), dtype=value.dtype, device="meta")
    return value


def _signature(value: Any) -> str:
    def describe(leaf: Any) -> Any:
        if isinstance(leaf, torch.Tensor):
            return ("T", tuple(leaf.shape), tuple(leaf.stride()), str(leaf.dtype))
        return leaf

    return repr(torch.utils._pytree.tree_map(describe, value))


_KIND_BY_NAME: dict[str, frozenset[str]] = {
    "matmul": frozenset(
        {
            "mm",
            "addmm",
            "bmm",
            "baddbmm",
            "addbmm",
            "matmul",
            "linear",
            "_scaled_mm",
            "_int_mm",
            "addmv",
            "mv",
            "dot",
            "vdot",
            "einsum",
            "outer",
            "tensordot",
            "bilinear",
        }
    ),
    "conv": frozenset(
        {
            "convolution",
            "_convolution",
            "conv1d",
            "conv2d",
            "conv3d",
            "conv_transpose1d",
            "conv_transpose2d",
            "conv_transpose3d",
            "convolution_backward",
            "cudnn_convolution",
            "mkldnn_convolution",
            "_slow_conv2d_forward",
            "convolution_overrideable",
        }
    ),
    "embedding": frozenset({"embedding", "embedding_dense_backward", "embedding_backward", "embedding_bag", "_embedding_bag", "_embedding_bag_backward"}),
    "reduction": frozenset(
        {
            "binary_cross_entropy",
            "binary_cross_entropy_with_logits",
            "binary_cross_entropy_backward",
            "sum",
            "mean",
            "amax",
            "amin",
            "max",
            "min",
            "argmax",
            "argmin",
            "var",
            "std",
            "var_mean",
            "std_mean",
            "prod",
            "logsumexp",
            "cumsum",
            "cumprod",
            "norm",
            "linalg_vector_norm",
            "_softmax",
            "softmax",
            "_log_softmax",
            "log_softmax",
            "_safe_softmax",
            "_softmax_backward_data",
            "_log_softmax_backward_data",
            "any",
            "all",
            "count_nonzero",
            "nll_loss_forward",
            "nll_loss_backward",
            "nll_loss",
            "cross_entropy_loss",
            "mse_loss",
            "mse_loss_backward",
        }
    ),
    "elementwise": frozenset(
        {"clone", "_to_copy", "to", "copy", "copy_", "contiguous", "fill", "fill_", "native_dropout", "dropout", "bernoulli", "reshape", "flatten"}
    ),
}
_NORM_REDUCTIONS = frozenset({"norm", "linalg_vector_norm", "frobenius_norm", "nuclear_norm", "renorm"})


def op_kind(target: Any) -> str:
    """Cost category of an fx call target (see `rlplace.costs.COMPUTE_EFFICIENCY`).

    ``matmul``, ``conv``, ``attention``, ``embedding``, ``norm``, ``reduction``,
    ``elementwise`` (ops tagged pointwise and plain copies) or ``other``; views are decided
    per node by the caller because some ops copy only sometimes.
    """
    name = _op_name(target)
    for kind, names in _KIND_BY_NAME.items():
        if name in names:
            return kind
    if "attention" in name:
        return "attention"
    if "norm" in name and not name.startswith("normal") and name not in _NORM_REDUCTIONS:
        return "norm"
    if "pool" in name:
        return "reduction"
    if _is_pointwise(name, target):
        return "elementwise"
    return "other"


def _is_pointwise(name: str, target: Any) -> bool:
    """Tagged pointwise, or the backward of a pointwise op (``hardtanh_backward`` ...)."""
    if isinstance(target, torch._ops.OpOverload) and torch.Tag.pointwise in target.tags:
        return True
    if not name.endswith("_backward"):
        return False
    forward = getattr(torch.ops.aten, name.removesuffix("_backward"), None)
    overload = getattr(forward, "default", None) if forward is not None else None
    return isinstance(overload, torch._ops.OpOverload) and torch.Tag.pointwise in overload.tags


def _op_name(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return target._overloadpacket.__name__
    return str(getattr(target, "__name__", target))


def _target_name(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    module = getattr(target, "__module__", "") or ""
    return f"{module}.{_op_name(target)}" if module else _op_name(target)


_ALIAS_OPS = frozenset({"_unsafe_view", "alias", "detach", "lift_fresh", "view_as", "expand_as", "_reshape_alias"})
_SOMETIMES_COPY = frozenset({"to", "contiguous", "reshape", "flatten", "type_as"})


def _is_view(node: torch.fx.Node) -> bool:
    """True when the node only reinterprets its input's memory (no kernel, no new tensor).

    ``to``/``contiguous``/``reshape``/``flatten`` alias their input only when it already has
    the target dtype, device and (for the reshapes) a contiguous layout; otherwise they copy.
    """
    target = node.target
    if not isinstance(target, torch._ops.OpOverload):
        return False
    name = _op_name(target)
    if name in _SOMETIMES_COPY:
        source = next((arg.meta.get("val") for arg in node.all_input_nodes if isinstance(arg.meta.get("val"), torch.Tensor)), None)
        result = node.meta.get("val")
        if not isinstance(source, torch.Tensor) or not isinstance(result, torch.Tensor):
            return False
        same_storage_kind = source.dtype == result.dtype and source.device == result.device
        return same_storage_kind and (name in ("to", "type_as") or source.is_contiguous())
    return name in _ALIAS_OPS or bool(target.is_view)


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return int(value.numel()) * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(item) for item in value)
    return 0


def _has_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    return isinstance(value, (list, tuple)) and any(_has_tensor(item) for item in value)


def _module_path(node: torch.fx.Node, *, backward: bool) -> str:
    """Dotted path of the module that ran the node ('' for the root)."""
    stack = (node.meta.get("fwd_nn_module_stack") if backward else None) or node.meta.get("nn_module_stack")
    if not stack:
        return ""
    last = list(stack.values())[-1]
    path = str(last[0] if isinstance(last, tuple) else last)
    path = re.sub(r"^L\['self'\]\.?|^L__self__\.?", "", path)
    return re.sub(r"\[(\d+)\]", r".\1", path).strip(".")


# ============================================================================ attention
def _use_memory_efficient_attention(graph_module: torch.fx.GraphModule) -> None:
    """Route ``scaled_dot_product_attention`` to the memory-efficient attention kernel.

    On the meta device SDPA would decompose into the math path (bmm, softmax, bmm), whose
    backward saves the (batch, heads, seq, seq) score matrix; GPU training uses a fused kernel
    that saves only the output and a log-sum-exp. ``_scaled_dot_product_efficient_attention``
    has meta kernels and a derivative, so the joint graph gets one fused forward and one fused
    backward op with the same FLOPs as the math path.
    """
    sdpa = torch.ops.aten.scaled_dot_product_attention.default
    changed = False
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and node.target is sdpa:
            node.target = _memory_efficient_sdpa
            changed = True
    if changed:
        graph_module.recompile()


def _memory_efficient_sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    *,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` through the fused memory-efficient kernel.

    Shapes:
        query: (batch, heads, q_len, head_dim); key, value: (batch, kv_heads, kv_len, *).
        attn_mask: bool (True = attend) or additive float, broadcastable to
            (batch, heads, q_len, kv_len).
        output: (batch, heads, q_len, value_dim).
    """
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        return torch.ops.aten.scaled_dot_product_attention.default(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
    if key.shape[1] != query.shape[1]:
        repeats = query.shape[1] // key.shape[1]
        key = key.repeat_interleave(repeats, dim=1)
        value = value.repeat_interleave(repeats, dim=1)
    bias = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            bias = torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device).masked_fill(attn_mask.logical_not(), -math.inf)
        else:
            bias = attn_mask.to(query.dtype)
        bias = bias.expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
    output = torch.ops.aten._scaled_dot_product_efficient_attention.default(query, key, value, bias, True, dropout_p, is_causal, scale=scale)
    return output[0]


# ============================================================================ module facts
def _attach_unused_tensors(built: _Built, module: nn.Module) -> None:
    """Give parameters and buffers no op reads to the op of the nearest module, so memory adds up."""
    if not built.ops:
        raise RlplaceError(f"{type(module).__name__}: the traced forward contains no tensor operations; nothing to place")
    for param_name, tensor, is_param in _named_tensors(module):
        owners = built.param_owner if is_param else built.buffer_owner
        if param_name in owners or param_name in built.param_owner:
            continue
        owner = _nearest_op(built, param_name.rpartition(".")[0])
        size = float(tensor.numel() * tensor.element_size())
        op = built.ops[owner]
        owners[param_name] = owner
        built.tensor_bytes[param_name] = size
        built.tensor_elements[param_name] = int(tensor.numel())
        op.resident_bytes += size
        if is_param:
            op.param_bytes += size
            op.params.append(param_name)
        else:
            op.buffers.append(param_name)


def _named_tensors(module: nn.Module) -> Iterable[tuple[str, torch.Tensor, bool]]:
    for param_name, param in module.named_parameters():
        yield param_name, param, True
    for buffer_name, buffer in module.named_buffers():
        yield buffer_name, buffer, False


def _nearest_op(built: _Built, module_path: str) -> int:
    """First forward op whose module path shares the longest dotted prefix with ``module_path``."""
    target = module_path.split(".") if module_path else []
    best, best_length = 0, -1
    for op_id, op in enumerate(built.ops):
        if op.is_backward or op.kind == "input":
            continue
        parts = op.module_path.split(".") if op.module_path else []
        length = 0
        for a, b in zip(parts, target, strict=False):
            if a != b:
                break
            length += 1
        if length > best_length:
            best, best_length = op_id, length
    return best


def _canonical_names(module: nn.Module) -> dict[str, str]:
    """Every name of a parameter or buffer -> the name it is counted under (its first name)."""
    canonical: dict[str, str] = {}
    for named in (module.named_parameters(remove_duplicate=False), module.named_buffers(remove_duplicate=False)):
        first_name: dict[int, str] = {}
        for tensor_name, tensor in named:
            canonical[tensor_name] = first_name.setdefault(id(tensor), tensor_name)
    return canonical


def _param_aliases(module: nn.Module) -> dict[str, list[str]]:
    """Tied parameters: the name capture uses -> the other names of the same tensor."""
    groups: dict[int, list[str]] = {}
    for param_name, param in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(param_name)
    return {names[0]: names[1:] for names in groups.values() if len(names) > 1}


def _precision(module: nn.Module) -> str:
    """fp32, fp16 or bf16: the dtype holding most parameter bytes (fp64 reported as fp32)."""
    by_dtype: dict[torch.dtype, int] = {}
    for param in module.parameters():
        if param.is_floating_point():
            by_dtype[param.dtype] = by_dtype.get(param.dtype, 0) + param.numel() * param.element_size()
    if not by_dtype:
        return "fp32"
    dominant = max(by_dtype, key=lambda dtype: by_dtype[dtype])
    return _PRECISIONS.get(dominant, "fp32")


def _infer_batch_size(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
    for leaf in torch.utils._pytree.tree_leaves((args, kwargs)):
        if isinstance(leaf, torch.Tensor) and leaf.dim() >= 1:
            return int(leaf.shape[0])
    return None
