"""`capture_model`: export the model, build the graph, explain failures."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from rlplace.capture.builder import attach_unused_tensors, canonical_names, convert_fx, export_roles
from rlplace.capture.opfacts import FlopCounter, first_line
from rlplace.capture.training import OPTIMIZERS, capture_by_rule, capture_joint
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph

logger = logging.getLogger(__name__)


BACKWARD_MODES = ("auto", "joint", "rule")


_PRECISIONS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


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
            (`add_backward_by_rule`), or ``"auto"``: joint, falling back to the rule.

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

    canonical = canonical_names(module)
    trainable = [canonical[param_name] for param_name, param in module.named_parameters() if param.requires_grad]
    started = (time.perf_counter(), time.process_time())
    was_training = module.training
    module.train(training)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode(False))
            stack.enter_context(torch.enable_grad() if training else torch.no_grad())
            exported = _export(module, args, kwargs, graph_name)
            _log_phase(graph_name, "export", started)
            flops = FlopCounter()
            backward_used, note = "none", ""
            if not training:
                built = convert_fx(exported.graph, export_roles(exported), flops, canonical)
            elif backward == "rule":
                built, backward_used = capture_by_rule(exported, flops, canonical, optimizer, trainable), "rule"
            else:
                try:
                    built, backward_used = capture_joint(exported, args, kwargs, flops, canonical, optimizer, trainable, stack), "joint"
                except Exception as exc:  # AOTAutograd can fail on any op; the rule still gives a graph
                    if backward == "joint":
                        raise RlplaceError(f"{graph_name}: tracing the backward pass failed ({first_line(exc)}); retry with backward='rule'") from exc
                    logger.warning("capture %s: joint forward/backward trace failed (%s); deriving the backward pass by rule", graph_name, first_line(exc))
                    built, backward_used = capture_by_rule(exported, flops, canonical, optimizer, trainable), "rule"
                    note = f"joint trace failed: {first_line(exc)}"
            _log_phase(graph_name, f"ops ({backward_used} backward)", started)
    finally:
        module.train(was_training)

    attach_unused_tensors(built, module)
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


def _log_phase(graph_name: str, phase: str, started: tuple[float, float]) -> None:
    """Log how long capture has run so far: wall seconds and this process's CPU seconds."""
    wall, cpu = time.perf_counter() - started[0], time.process_time() - started[1]
    logger.info("capture %s: %s done at %.2f s wall, %.2f s CPU", graph_name, phase, wall, cpu)


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
            f"torch.export cannot capture {name}: data-dependent control flow{where} ({first_line(exc)}); "
            "rewrite data-dependent control flow with torch.cond (or move it out of forward), or pass inputs of a fixed shape"
        )
    return (
        f"torch.export cannot capture {name}{where}: {first_line(exc)}; "
        "make forward traceable by torch.export (non-strict): fixed-shape tensor inputs, no data-dependent Python branches, no tensor.item() driving control flow"
    )


def _user_location(exc: BaseException) -> str:
    """``file:line in function`` of the model code that raised, when torch reports it."""
    match = re.search(r'The following call raised this error:\s*\n\s*File "([^"]+)", line (\d+), in (\S+)', str(exc))
    if match:
        return f"{match.group(1)}:{match.group(2)} in {match.group(3)}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/torch/" not in f.filename and "/rlplace/" not in f.filename]
    if frames:
        return f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}"
    return ""


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
