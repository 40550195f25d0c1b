"""The forward pass of a real module as a list of ATen nodes that can run one by one.

`export_forward` runs ``torch.export`` (non-strict) on the module with its real example
inputs, then takes the forward half of AOTAutograd's joint graph, traced exactly as
`rlplace.capture` traces it, so the nodes carry the names of the captured forward ops.
When that trace fails it falls back to the functionalized export (``run_decompositions({})``).
Either way every node is a functional ATen op (``aten.addmm``, ``aten.relu`` ...), in-place
updates of buffers are extra outputs, and nothing mutates an activation.

That is the granularity the executor places and runs: one forward node per placed unit; the
backward of a node runs where the node ran (autograd), the optimizer update of a parameter
where the parameter lives.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.fx import Node
from torch.utils import _pytree as pytree

from rlplace.errors import RlplaceError

LossFunction = Callable[[Any], torch.Tensor]


def default_loss(outputs: Any) -> torch.Tensor:
    """The scalar a training step minimizes: the model's own ``loss`` when it returns one,
    else the sum over floating output tensors of their mean (float32)."""
    if isinstance(outputs, Mapping) and isinstance(outputs.get("loss"), torch.Tensor):
        return outputs["loss"].float()
    loss = getattr(outputs, "loss", None)
    if isinstance(loss, torch.Tensor):
        return loss.float()
    tensors = [leaf for leaf in pytree.tree_leaves(outputs) if isinstance(leaf, torch.Tensor) and leaf.is_floating_point()]
    if not tensors:
        raise RlplaceError("the model returns no floating-point tensor to train on; return a loss or a float output")
    total = tensors[0].float().mean()
    for tensor in tensors[1:]:
        total = total + tensor.float().mean().to(total.device)
    return total


def split_inputs(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional and keyword arguments from an example-inputs value (tuple, dict or tensor)."""
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


@dataclass(frozen=True)
class ValueInfo:
    """Static facts about one value of the forward graph (a node's output or a placeholder).

    Attributes:
        shape: tensor shape (static: the export specializes on the example inputs).
        dtype: tensor dtype.
        needs_grad: a floating tensor that depends on a parameter, so the backward pass sends
            a gradient for it back to its producer.
        is_tensor: False for tuples (split by ``getitem`` nodes) and other Python values.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    needs_grad: bool
    is_tensor: bool

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor (0 for non-tensors)."""
        if not self.is_tensor:
            return 0
        count = 1
        for size in self.shape:
            count *= int(size)
        return count * torch.empty((), dtype=self.dtype).element_size()


@dataclass(frozen=True, eq=False)
class ForwardProgram:
    """A module's exported forward, ready to run node by node.

    Attributes:
        module: the real module (its parameters and buffers are the ones trained).
        nodes: the ``call_function`` nodes in topological order.
        parameters: placeholder name -> parameter name (``layers.0.weight``).
        buffers: placeholder name -> buffer name.
        constants: placeholder name -> lifted constant tensor.
        user_inputs: placeholder names of the flattened example inputs, in order.
        inputs: the flattened example input tensors, in the same order.
        user_outputs: value names of the flattened outputs (None for a constant output).
        constant_outputs: the values of the constant outputs, by position.
        buffer_mutations: value name -> buffer name it is written back to after the forward.
        out_spec: pytree spec that rebuilds the module's output structure.
        values: `ValueInfo` of every placeholder and node output, by name.
        module_paths: owning module path of each node (``""`` for the root module).
        source: ``"joint"`` (forward of AOTAutograd's joint graph, capture's op names) or
            ``"export"`` (functionalized torch.export graph).
    """

    module: nn.Module
    nodes: tuple[Node, ...]
    parameters: Mapping[str, str]
    buffers: Mapping[str, str]
    constants: Mapping[str, torch.Tensor]
    user_inputs: tuple[str, ...]
    inputs: tuple[torch.Tensor, ...]
    user_outputs: tuple[str | None, ...]
    constant_outputs: Mapping[int, Any]
    buffer_mutations: Mapping[str, str]
    out_spec: Any
    values: Mapping[str, ValueInfo]
    module_paths: Mapping[str, str]
    source: str = "export"

    @property
    def placeholders(self) -> tuple[str, ...]:
        """Every placeholder name: parameters, buffers, constants, user inputs."""
        return (*self.parameters, *self.buffers, *self.constants, *self.user_inputs)

    def unflatten_outputs(self, leaves: Sequence[Any]) -> Any:
        """The module's output structure from the flat user outputs."""
        return pytree.tree_unflatten(list(leaves), self.out_spec)


def _value_info(node: Node) -> ValueInfo:
    value = node.meta.get("val")
    if isinstance(value, torch.Tensor):
        return ValueInfo(tuple(int(s) for s in value.shape), value.dtype, False, True)
    return ValueInfo((), torch.float32, False, False)


def _module_path(node: Node) -> str:
    """Dotted path of the module that ran the node (``""`` for the root), as capture writes it."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    last = list(stack.values())[-1]
    path = str(last[0] if isinstance(last, tuple) else last)
    path = re.sub(r"^L\['self'\]\.?|^L__self__\.?", "", path)
    return re.sub(r"\[(\d+)\]", r".\1", path).strip(".")


def export_forward(module: nn.Module, example_inputs: Any) -> ForwardProgram:
    """Trace ``module`` on its real example inputs into a runnable forward program.

    The forward half of AOTAutograd's joint graph is used when it can be traced: it is what
    `rlplace.capture.capture_model` turns into the forward ops of a training graph, so node
    names are the captured op names. Otherwise the functionalized export
    (``run_decompositions({})``) is used. The module must hold real tensors (`materialize`).
    """
    args, kwargs = split_inputs(example_inputs)
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_meta:
            raise RlplaceError(f"module tensor {name!r} is on the meta device; build the model with real weights to measure it")
    was_training = module.training
    module.train(True)
    try:
        try:
            exported = torch.export.export(module, args, kwargs, strict=False)
        except Exception as exc:  # torch.export raises many unrelated types; the user needs one line
            raise RlplaceError(f"torch.export could not export the model for measurement: {_first_line(exc)}") from exc
        flat_inputs = tuple(leaf for leaf in pytree.tree_leaves((args, kwargs)) if isinstance(leaf, torch.Tensor))
        try:
            parts = _joint_forward(exported, args, kwargs)
        except Exception:  # AOTAutograd fails on some models; the functional export still runs
            parts = _export_forward(exported)
    finally:
        module.train(was_training)
    graph, roles, outputs, source, attributes = parts
    return _build_program(module, graph, roles, outputs, attributes, flat_inputs, exported.call_spec.out_spec, source)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# roles: placeholder name -> ("param" | "buffer" | "input" | "ignore", fqn or input index)
# outputs: [(value node or constant, "user" | "mutation" | "ignore", user index or buffer fqn)]
_Parts = tuple[torch.fx.Graph, dict[str, tuple[str, Any]], list[tuple[Any, str, Any]], str, Any]


def _joint_forward(exported: torch.export.ExportedProgram, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Parts:
    """The joint graph of AOTAutograd traced the way capture traces it (same node names)."""
    import contextlib

    import torch.fx.traceback as fx_traceback
    from torch._functorch._aot_autograd import descriptors as d
    from torch._functorch.aot_autograd import aot_export_joint_with_descriptors

    graph_module = exported.module()
    rewrite = _capture_attention_rewrite()
    if rewrite is not None:
        rewrite(graph_module)
    with contextlib.ExitStack() as stack, fx_traceback.preserve_node_meta():
        joint = aot_export_joint_with_descriptors(stack, graph_module, args, kwargs)
    graph = joint.graph_module.graph
    roles: dict[str, tuple[str, Any]] = {}
    for node in graph.nodes:
        if node.op != "placeholder":
            continue
        desc = node.meta.get("desc")
        if isinstance(desc, d.ParamAOTInput):
            roles[node.name] = ("param", desc.target)
        elif isinstance(desc, d.BufferAOTInput):
            roles[node.name] = ("buffer", desc.target)
        elif isinstance(desc, d.PlainAOTInput):
            roles[node.name] = ("input", desc.idx)
        else:
            roles[node.name] = ("ignore", None)
    output = next(node for node in graph.nodes if node.op == "output")
    outputs: list[tuple[Any, str, Any]] = []
    for value, desc in zip(output.args[0], output.meta.get("desc") or [], strict=False):
        if isinstance(desc, d.PlainAOTOutput):
            outputs.append((value, "user", desc.idx))
        elif isinstance(desc, d.InputMutationAOTOutput) and isinstance(desc.mutated_input, d.BufferAOTInput):
            outputs.append((value, "mutation", desc.mutated_input.target))
        elif isinstance(desc, d.InputMutationAOTOutput):
            raise RlplaceError("the model writes into one of its inputs in place; measurement supports buffer updates only")
    return graph, roles, outputs, "joint", joint.graph_module


def _capture_attention_rewrite() -> Callable[[torch.fx.GraphModule], None] | None:
    """Capture's rewrite of attention to the fused memory-efficient kernel, if it has one.

    Applying the same rewrite before the joint trace keeps node names equal to the captured
    op names (the attention ops and every counter-suffixed name after them).
    """
    import importlib

    for module_name in ("rlplace.capture.training", "rlplace.capture"):
        try:
            rewrite = getattr(importlib.import_module(module_name), "_use_memory_efficient_attention", None)
        except ImportError:
            continue
        if callable(rewrite):
            return rewrite
    return None


def _export_forward(exported: torch.export.ExportedProgram) -> _Parts:
    """The functionalized export: in-place buffer updates become outputs."""
    functional = exported.run_decompositions({})
    signature = functional.graph_signature
    graph = functional.graph
    roles: dict[str, tuple[str, Any]] = {}
    for placeholder, fqn in signature.inputs_to_parameters.items():
        roles[placeholder] = ("param", fqn)
    for placeholder, fqn in signature.inputs_to_buffers.items():
        roles[placeholder] = ("buffer", fqn)
    for placeholder, target in signature.inputs_to_lifted_tensor_constants.items():
        roles[placeholder] = ("constant", functional.constants[target])
    for index, placeholder in enumerate(signature.user_inputs):
        roles[placeholder] = ("input", index)
    output = next(node for node in graph.nodes if node.op == "output")
    outputs: list[tuple[Any, str, Any]] = []
    user_index = 0
    mutation_targets = dict(signature.buffers_to_mutate)
    for spec, value in zip(signature.output_specs, output.args[0], strict=True):
        if spec.kind.name == "BUFFER_MUTATION":
            outputs.append((value, "mutation", mutation_targets.get(getattr(value, "name", ""), spec.target)))
        elif spec.kind.name == "USER_OUTPUT":
            outputs.append((value, "user", user_index))
            user_index += 1
        else:
            raise RlplaceError(f"the export has an output of kind {spec.kind.name}, which measurement does not support")
    return graph, roles, outputs, "export", functional.graph_module


def _is_backward_node(node: Node) -> bool:
    return bool(node.meta.get("autograd_backward") or node.meta.get("partitioner_tag") == "is_backward")


def _build_program(
    module: nn.Module,
    graph: torch.fx.Graph,
    roles: Mapping[str, tuple[str, Any]],
    outputs: Sequence[tuple[Any, str, Any]],
    attributes: Any,
    flat_inputs: tuple[torch.Tensor, ...],
    out_spec: Any,
    source: str,
) -> ForwardProgram:
    """Keep the forward nodes the outputs need; name every placeholder's role."""
    needed = {value.name for value, _, _ in outputs if isinstance(value, Node)}
    forward = [node for node in graph.nodes if node.op in ("call_function", "get_attr") and not _is_backward_node(node)]
    by_name = {node.name: node for node in graph.nodes}
    for node in reversed(forward):
        if node.name in needed:
            needed.update(inp.name for inp in node.all_input_nodes)
    for name in needed:
        if name in by_name and _is_backward_node(by_name[name]):
            raise RlplaceError(f"forward output depends on backward node {name!r}; this model cannot be measured")
    parameters: dict[str, str] = {}
    buffers: dict[str, str] = {}
    constants: dict[str, torch.Tensor] = {}
    inputs: dict[int, str] = {}
    for node in graph.nodes:
        if node.op != "placeholder" or node.name not in needed:
            continue
        kind, label = roles.get(node.name, ("ignore", None))
        if kind == "param":
            parameters[node.name] = str(label)
        elif kind == "buffer":
            buffers[node.name] = str(label)
        elif kind == "constant":
            constants[node.name] = label
        elif kind == "input":
            inputs[int(label)] = node.name
        else:
            raise RlplaceError(f"the forward pass reads placeholder {node.name!r}, which is neither a parameter, a buffer nor an input")
    for node in forward:
        if node.op == "get_attr" and node.name in needed:
            constants[node.name] = _attribute(attributes, str(node.target))
    nodes = _getitems_follow_sources([node for node in forward if node.op == "call_function" and node.name in needed])
    user_outputs: dict[int, str | None] = {}
    constant_outputs: dict[int, Any] = {}
    buffer_mutations: dict[str, str] = {}
    for value, kind, label in outputs:
        if kind == "user":
            user_outputs[int(label)] = value.name if isinstance(value, Node) else None
            if not isinstance(value, Node):
                constant_outputs[int(label)] = value
        elif kind == "mutation":
            if not isinstance(value, Node):
                raise RlplaceError(f"the model writes a constant into buffer {label!r}; this model cannot be measured")
            buffer_mutations[value.name] = str(label)
    if sorted(user_outputs) != list(range(len(user_outputs))):
        raise RlplaceError("the traced forward pass lost some of the model's outputs; this model cannot be measured")
    user_input_names = tuple(inputs[i] for i in sorted(inputs))
    input_tensors = tuple(flat_inputs[i] for i in sorted(inputs))
    placeholders = [by_name[name] for name in (*parameters, *buffers, *user_input_names) if name in by_name]
    placeholders += [by_name[name] for name in constants if name in by_name]
    values = {node.name: _value_info(node) for node in (*placeholders, *nodes)}
    values = _mark_needs_grad(values, placeholders, nodes, set(parameters))
    return ForwardProgram(
        module=module,
        nodes=nodes,
        parameters=parameters,
        buffers=buffers,
        constants=constants,
        user_inputs=user_input_names,
        inputs=input_tensors,
        user_outputs=tuple(user_outputs[i] for i in range(len(user_outputs))),
        constant_outputs=constant_outputs,
        buffer_mutations=buffer_mutations,
        out_spec=out_spec,
        values=values,
        module_paths={node.name: _module_path(node) for node in nodes},
        source=source,
    )


def _attribute(root: Any, target: str) -> torch.Tensor:
    value = root
    for part in target.split("."):
        value = getattr(value, part)
    if not isinstance(value, torch.Tensor):
        raise RlplaceError(f"the traced graph reads attribute {target!r}, which is not a tensor")
    return value.detach()


def _getitems_follow_sources(nodes: Sequence[Node]) -> tuple[Node, ...]:
    """Topological order with every ``getitem`` right after the node whose tuple it unpacks,
    so a tuple never crosses a segment boundary."""
    getitems: dict[str, list[Node]] = {}
    for node in nodes:
        if is_getitem(node):
            getitems.setdefault(node.args[0].name, []).append(node)
    ordered: list[Node] = []
    for node in nodes:
        if not is_getitem(node):
            ordered.append(node)
            ordered.extend(getitems.get(node.name, ()))
    if len(ordered) != len(nodes):
        raise RlplaceError("the exported graph unpacks a tuple that no node produces; it cannot be measured")
    return tuple(ordered)


def is_getitem(node: Node) -> bool:
    """A node that takes one element of another node's tuple output."""
    return getattr(node.target, "__name__", "") == "getitem" and bool(node.args) and isinstance(node.args[0], Node)


def _mark_needs_grad(values: dict[str, ValueInfo], placeholders: Sequence[Node], nodes: Sequence[Node], parameter_names: set[str]) -> dict[str, ValueInfo]:
    """A floating tensor needs a gradient when a parameter reaches it."""
    reached = {node.name for node in placeholders if node.name in parameter_names}
    for node in nodes:
        if any(inp.name in reached for inp in node.all_input_nodes):
            reached.add(node.name)
    return {
        name: ValueInfo(info.shape, info.dtype, name in reached and info.is_tensor and info.dtype.is_floating_point, info.is_tensor)
        for name, info in values.items()
    }


def materialize(module: nn.Module, example_inputs: Any, *, seed: int = 0) -> tuple[nn.Module, Any]:
    """Real tensors for a module and inputs that may live on the meta device.

    Meta parameters get fresh storage and each submodule's ``reset_parameters`` (seeded);
    meta inputs become seeded random tensors (integers in ``[0, 2)``, valid token ids).
    """
    generator = torch.Generator().manual_seed(seed)
    if any(t.is_meta for t in [*module.parameters(), *module.buffers()]):
        module = module.to_empty(device="cpu")
        torch.manual_seed(seed)
        for submodule in module.modules():
            reset = getattr(submodule, "reset_parameters", None)
            if callable(reset):
                reset()

    def real(leaf: Any) -> Any:
        if isinstance(leaf, torch.Tensor) and leaf.is_meta:
            if leaf.dtype.is_floating_point:
                return torch.randn(leaf.shape, generator=generator).to(leaf.dtype)
            if leaf.dtype == torch.bool:
                return torch.ones(leaf.shape, dtype=torch.bool)
            return torch.randint(0, 2, leaf.shape, generator=generator).to(leaf.dtype)
        return leaf

    return module, pytree.tree_map(real, example_inputs)


def node_callable(node: Node, device_type: str) -> Callable[..., Any]:
    """What runs ``node`` on a device of ``device_type``.

    Capture routes attention through ``_scaled_dot_product_efficient_attention`` (the fused
    GPU kernel); where it has no kernel (CPU) the same attention runs through
    ``scaled_dot_product_attention`` and the unused statistics come back empty.
    """
    target = node.target
    if target is torch.ops.aten._scaled_dot_product_efficient_attention.default and device_type != "cuda":
        return _efficient_attention_fallback
    return target  # type: ignore[return-value]


def _efficient_attention_fallback(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_bias: torch.Tensor | None,
    compute_log_sumexp: bool,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    *,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shapes: query (batch, heads, q_len, dim); key, value (batch, heads, kv_len, *);
    attn_bias additive, broadcastable to (batch, heads, q_len, kv_len)."""
    output = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attn_bias, dropout_p=dropout_p, is_causal=is_causal, scale=scale)
    empty = query.new_empty(0)
    return output, empty, empty, empty
