"""The training step: the joint forward/backward trace, the 2x backward rule, optimizer ops."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rlplace.capture.builder import Built, Op, convert_fx, export_roles, joint_roles
from rlplace.capture.opfacts import FlopCounter

logger = logging.getLogger(__name__)


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


def capture_by_rule(
    exported: torch.export.ExportedProgram, flops: FlopCounter, canonical: Mapping[str, str], optimizer: str, trainable: Sequence[str]
) -> Built:
    """Forward ops from the exported program, backward and optimizer by `add_backward_by_rule`."""
    return add_backward_by_rule(convert_fx(exported.graph, export_roles(exported), flops, canonical), optimizer, trainable)


def capture_joint(
    exported: torch.export.ExportedProgram,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    flops: FlopCounter,
    canonical: Mapping[str, str],
    optimizer: str,
    trainable: Sequence[str],
    stack: contextlib.ExitStack,
) -> Built:
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
    built = convert_fx(graph, joint_roles(graph, user_inputs), flops, canonical, joint=True)
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


def _add_optimizer_ops(built: Built, optimizer: str) -> None:
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
        update = Op(
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


def add_backward_by_rule(forward: Built, optimizer: str, trainable: Iterable[str]) -> Built:
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
    built = Built(
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
        grad = Op(
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
