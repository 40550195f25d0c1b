"""What one traced fx node is and costs: kind, FLOPs, bytes, view or not, owning module."""

from __future__ import annotations

import logging
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

logger = logging.getLogger(__name__)


class FlopCounter:
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
            logger.debug("capture: cannot count FLOPs of %s (%s)", node.name, first_line(exc))
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


def target_name(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    module = getattr(target, "__module__", "") or ""
    return f"{module}.{_op_name(target)}" if module else _op_name(target)


_ALIAS_OPS = frozenset({"_unsafe_view", "alias", "detach", "lift_fresh", "view_as", "expand_as", "_reshape_alias"})


_SOMETIMES_COPY = frozenset({"to", "contiguous", "reshape", "flatten", "type_as"})


def is_view(node: torch.fx.Node) -> bool:
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


def nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return int(value.numel()) * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(nbytes(item) for item in value)
    return 0


def has_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    return isinstance(value, (list, tuple)) and any(has_tensor(item) for item in value)


def node_module_path(node: torch.fx.Node, *, backward: bool) -> str:
    """Dotted path of the module that ran the node ('' for the root)."""
    stack = (node.meta.get("fwd_nn_module_stack") if backward else None) or node.meta.get("nn_module_stack")
    if not stack:
        return ""
    last = list(stack.values())[-1]
    path = str(last[0] if isinstance(last, tuple) else last)
    path = re.sub(r"^L\['self'\]\.?|^L__self__\.?", "", path)
    return re.sub(r"\[(\d+)\]", r".\1", path).strip(".")


def first_line(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        line = line.strip()
        if line and not line.startswith(("def ", "#")):
            line = line.split(".  ")[0]  # torch appends details after two spaces
            return f"{type(exc).__name__}: {line}"
    return type(exc).__name__
