"""Traced fx graphs (exported forward or AOTAutograd joint) -> ops and edges -> `OpGraph`."""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rlplace.capture.opfacts import FlopCounter, has_tensor, is_view, nbytes, node_module_path, op_kind, target_name
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph


@dataclass
class Op:
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
class Built:
    """Ops and edges of a captured graph, plus what the training passes need.

    Attributes:
        ops: ops in a topological order.
        edges: ``(src, dst) -> bytes``, ``src < dst``.
        param_owner: parameter name -> id of the op holding it; buffer_owner likewise.
        tensor_bytes: parameter or buffer name -> bytes; tensor_elements: -> element count.
        coloc_links: pairs of op ids that must share a device.
        grads: trainable parameter name -> id of the op producing its gradient (training).
    """

    ops: list[Op] = field(default_factory=list)
    edges: dict[tuple[int, int], float] = field(default_factory=dict)
    param_owner: dict[str, int] = field(default_factory=dict)
    buffer_owner: dict[str, int] = field(default_factory=dict)
    tensor_bytes: dict[str, float] = field(default_factory=dict)
    tensor_elements: dict[str, int] = field(default_factory=dict)
    coloc_links: list[tuple[int, int]] = field(default_factory=list)
    grads: dict[str, int] = field(default_factory=dict)

    def add_op(self, op: Op) -> int:
        self.ops.append(op)
        return len(self.ops) - 1

    def add_edge(self, src: int, dst: int, num_bytes: float) -> None:
        if src == dst:
            return
        if src > dst:
            raise AssertionError(f"edge {src} -> {dst} against the build order")
        self.edges[(src, dst)] = self.edges.get((src, dst), 0.0) + float(num_bytes)

    def to_graph(self, name: str, meta: dict[str, Any], module: nn.Module) -> OpGraph:
        """Freeze into an `OpGraph`: colocation classes are the connected sets of
        ``coloc_links``; ``meta`` gains the per-op lists (in the graph's op order)."""
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
            "param_aliases": param_aliases(module),
        }
        return OpGraph(**{**{f: getattr(graph, f) for f in GRAPH_FIELDS}, "meta": meta})


GRAPH_FIELDS = tuple(f for f in OpGraph.__dataclass_fields__ if f != "meta")


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


@dataclass(frozen=True)
class _Role:
    """What a placeholder of a traced graph stands for.

    kind: ``param``, ``buffer``, ``input``, ``tangent`` (gradient of forward output number
    ``index``) or ``ignore`` (no tensor).
    """

    kind: str
    label: str = ""
    index: int = -1


def export_roles(exported: torch.export.ExportedProgram) -> dict[str, _Role]:
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


def joint_roles(joint: torch.fx.Graph, user_input_names: Sequence[str]) -> dict[str, _Role]:
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


def convert_fx(
    graph: torch.fx.Graph,
    roles: Mapping[str, _Role],
    flops: FlopCounter,
    canonical: Mapping[str, str],
    *,
    joint: bool = False,
) -> Built:
    """One op per tensor-producing call of ``graph``; see the module docstring for fields.

    ``canonical`` maps every name of a tied parameter or buffer to the one name it is
    counted under.

    In a joint graph (``joint=True``) backward nodes are flagged and linked for colocation
    with the first forward op of the same autograd ``seq_nr``; tangents resolve to the op
    producing the forward output they differentiate.
    """
    built = Built()
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
                value_bytes = float(nbytes(node.meta.get("val")))
                op_name = role.label if role.label and role.label not in fx_names else node.name
                op_id = built.add_op(Op(name=op_name, kind="input", aten="input", module_path="", output_bytes=value_bytes))
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
                source[node] = ("op", parent[1], float(nbytes(value)))
            elif parent is not None:
                source[node] = parent
            continue
        if not has_tensor(value):
            continue
        inputs = _resolve_inputs(node, source, forward_outputs)
        seq_nr = node.meta.get("seq_nr")
        is_backward = bool(joint and (node.meta.get("autograd_backward") or node.meta.get("partitioner_tag") == "is_backward"))
        view = is_view(node)
        if view and len(inputs) == 1 and inputs[0][0] in ("param", "buffer"):
            source[node] = inputs[0]  # a view of a parameter is the parameter
            if joint and not is_backward and isinstance(seq_nr, int):
                folded_seq.setdefault(seq_nr, inputs[0][1])
            continue
        out_bytes = float(nbytes(value))
        if view:
            base = max((_input_bytes(built, src) for src in inputs), default=out_bytes)
            out_bytes = min(out_bytes, base)
        op = Op(
            name=node.name,
            kind="view" if view else op_kind(node.target),
            aten=target_name(node.target),
            module_path=node_module_path(node, backward=is_backward) or _inherited_path(built, inputs, is_backward),
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


def _inherited_path(built: Built, inputs: Sequence[tuple[Any, ...]], is_backward: bool) -> str:
    """Module path of a backward op autograd made outside any module (gradient sums): its
    first producer's, so coarsening by module keeps it with the layer it belongs to."""
    if not is_backward:
        return ""
    return next((built.ops[src[1]].module_path for src in inputs if src[0] == "op" and built.ops[src[1]].module_path), "")


def _record_tensor(built: Built, tensor_name: str, value: Any) -> None:
    built.tensor_bytes[tensor_name] = float(nbytes(value))
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
            value_bytes = float(nbytes(arg.meta.get("val")))
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


def _input_bytes(built: Built, src: tuple[Any, ...]) -> float:
    return float(src[2]) if src[0] == "op" else built.tensor_bytes.get(src[1], 0.0)


def _connect(built: Built, src: tuple[Any, ...], op_id: int) -> None:
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


def attach_unused_tensors(built: Built, module: nn.Module) -> None:
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


def _nearest_op(built: Built, module_path: str) -> int:
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


def canonical_names(module: nn.Module) -> dict[str, str]:
    """Every name of a parameter or buffer -> the name it is counted under (its first name)."""
    canonical: dict[str, str] = {}
    for named in (module.named_parameters(remove_duplicate=False), module.named_buffers(remove_duplicate=False)):
        first_name: dict[int, str] = {}
        for tensor_name, tensor in named:
            canonical[tensor_name] = first_name.setdefault(id(tensor), tensor_name)
    return canonical


def param_aliases(module: nn.Module) -> dict[str, list[str]]:
    """Tied parameters: the name capture uses -> the other names of the same tensor."""
    groups: dict[int, list[str]] = {}
    for param_name, param in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(param_name)
    return {names[0]: names[1:] for names in groups.values() if len(names) > 1}
