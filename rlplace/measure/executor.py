"""Run one training step of a placed model for real: forward, backward, optimizer update.

Granularity: the nodes of the module's exported, functionalized forward graph
(`rlplace.measure.program`). Each node runs on its assigned device; parameters live on the
device of the op that owns them; activations move forward and their gradients move back
between devices as explicit messages (`rlplace.measure.plan`). Every segment is its own
autograd island: its inputs enter as fresh leaves, and its backward is one
``torch.autograd.backward`` call whose gradients for those leaves go back to the producers.
The backward of a node therefore runs on the node's device, and the optimizer update of a
parameter on the parameter's device.

The same `DeviceWorker` runs in two modes:
    * one process over several torch devices (`LocalExecutor`): segments run in global
      order, a message is a copy onto the destination device (``clone`` when two logical
      devices share one torch device, as CPU stand-ins do);
    * one process per device under ``torch.distributed`` (`rlplace.measure.distributed`),
      where a message is a point-to-point send.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import nn
from torch.fx.node import map_arg

from rlplace.errors import RlplaceError
from rlplace.measure.plan import PLACEHOLDER_STAGE, Message, Segment, SegmentPlan
from rlplace.measure.program import ForwardProgram, LossFunction, ValueInfo, default_loss, node_callable
from rlplace.measure.timeline import StepRecorder

OPTIMIZERS = ("adam", "sgd", "sgd-momentum")


class Transport(Protocol):
    """Moves tensors between devices in the order of `SegmentPlan.messages`."""

    def send(self, message: Message, tensor: torch.Tensor) -> None:
        """Send ``tensor`` (already detached) to ``message.dst``."""

    def recv(self, message: Message, info: ValueInfo, device: torch.device) -> torch.Tensor:
        """The tensor of ``message``, on ``device``."""

    def flush(self) -> None:
        """Wait until every send of this step has left."""


class LocalTransport:
    """Messages inside one process: a copy onto the destination's torch device."""

    def __init__(self, devices: Sequence[torch.device]) -> None:
        self.devices = list(devices)
        self.mailbox: dict[Message, torch.Tensor] = {}

    def send(self, message: Message, tensor: torch.Tensor) -> None:
        self.mailbox[message] = tensor.to(self.devices[message.dst], copy=True)

    def recv(self, message: Message, info: ValueInfo, device: torch.device) -> torch.Tensor:
        try:
            return self.mailbox.pop(message)
        except KeyError:
            raise RuntimeError(f"message {message} was never sent; the segment schedule is inconsistent") from None

    def flush(self) -> None:
        """Nothing to wait for: `LocalExecutor` checks the mailbox is empty after the step."""


class TracingTransport:
    """Wraps a transport and records each receive (``wait``), send and flush as a span
    (`rlplace.measure.timeline.StepRecorder`)."""

    def __init__(self, inner: Transport, recorder: StepRecorder) -> None:
        self.inner = inner
        self.recorder = recorder

    def send(self, message: Message, tensor: torch.Tensor) -> None:
        with self.recorder.span(f"send {message.kind} {message.value} to {message.dst}", "send", bytes=tensor.numel() * tensor.element_size()):
            self.inner.send(message, tensor)

    def recv(self, message: Message, info: ValueInfo, device: torch.device) -> torch.Tensor:
        with self.recorder.span(f"recv {message.kind} {message.value} from {message.src}", "wait", bytes=info.nbytes):
            return self.inner.recv(message, info, device)

    def flush(self) -> None:
        with self.recorder.span("flush sends", "send"):
            self.inner.flush()


def make_optimizer(name: str, parameters: Sequence[nn.Parameter], lr: float = 1e-3) -> torch.optim.Optimizer | None:
    """The optimizer of the training step (None when there is nothing to update)."""
    if not parameters:
        return None
    if name not in OPTIMIZERS:
        raise RlplaceError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")
    # Fused kernels: one pass over parameter, gradient and states per tensor, which is the
    # update capture models (and what GPU training uses); the per-tensor loop is the fallback.
    for options in ({"fused": True}, {"foreach": False}):
        try:
            if name == "adam":
                return torch.optim.Adam(parameters, lr=lr, **options)
            return torch.optim.SGD(parameters, lr=lr, momentum=0.9 if name == "sgd-momentum" else 0.0, **options)
        except (RuntimeError, ValueError):  # fused kernels are missing for some devices and dtypes
            continue
    raise AssertionError("unreachable: the per-tensor optimizer always builds")


class DeviceWorker:
    """The state and work of one logical device during training steps.

    Holds copies of the parameters and buffers that live on this device (the module itself is
    never modified), the values present on the device during a step, and the gradients
    flowing back to them.
    """

    def __init__(
        self,
        program: ForwardProgram,
        plan: SegmentPlan,
        device_index: int,
        torch_device: torch.device,
        transport: Transport,
        *,
        optimizer: str = "adam",
        loss_fn: LossFunction = default_loss,
    ) -> None:
        self.program = program
        self.plan = plan
        self.index = device_index
        self.device = torch.device(torch_device)
        self.transport = transport
        self.loss_fn = loss_fn
        self.segments = [s for s in plan.segments if s.device == device_index]
        module_tensors = dict(program.module.named_parameters())
        module_buffers = dict(program.module.named_buffers())
        self.parameters: dict[str, nn.Parameter] = {}
        self.buffers: dict[str, torch.Tensor] = {}
        self.placeholder_values: dict[str, Any] = {}
        for placeholder, fqn in program.parameters.items():
            if plan.home[placeholder] == device_index:
                source = module_tensors[fqn]
                parameter = nn.Parameter(source.detach().to(self.device, copy=True), requires_grad=source.requires_grad)
                self.parameters[fqn] = parameter
                self.placeholder_values[placeholder] = parameter
        for placeholder, fqn in program.buffers.items():
            if plan.home[placeholder] == device_index:
                self.buffers[fqn] = module_buffers[fqn].detach().to(self.device, copy=True)
                self.placeholder_values[placeholder] = self.buffers[fqn]
        for placeholder, tensor in program.constants.items():
            if plan.home[placeholder] == device_index:
                self.placeholder_values[placeholder] = tensor.to(self.device, copy=True)
        for placeholder, tensor in zip(program.user_inputs, program.inputs, strict=True):
            if plan.home[placeholder] == device_index:
                self.placeholder_values[placeholder] = tensor.detach().to(self.device, copy=True)
        self.update = make_optimizer(optimizer, [p for p in self.parameters.values() if p.requires_grad])
        self.nodes = {node.name: node for node in program.nodes}
        self.callables = {node.name: node_callable(node, self.device.type) for node in program.nodes}
        # What this device sends after each forward stage / each segment's backward, and
        # which gradients it receives before a segment's backward (all in schedule order).
        self._value_sends: dict[int, list[Message]] = {}
        self._grad_sends: dict[int, list[Message]] = {}
        self._grad_recvs: dict[int, list[Message]] = {}
        for message in plan.messages:
            if message.kind == "value" and message.src == device_index:
                self._value_sends.setdefault(plan.producer[message.value], []).append(message)
            elif message.kind == "grad" and message.src == device_index:
                self._grad_sends.setdefault(plan.first_use[(message.value, device_index)], []).append(message)
            elif message.kind == "grad" and message.dst == device_index:
                self._grad_recvs.setdefault(plan.producer[message.value], []).append(message)
        self.local: dict[str, Any] = {}
        self.grads: dict[str, torch.Tensor] = {}
        self.islands: dict[int, tuple[dict[str, torch.Tensor], dict[str, Any]]] = {}
        self.loss: torch.Tensor | None = None

    # ------------------------------------------------------------------ step phases
    def begin(self) -> None:
        """Clear the previous step, put the placeholders in place and send those used elsewhere."""
        for parameter in self.parameters.values():
            parameter.grad = None
        self.local = dict(self.placeholder_values)
        self.grads = {}
        self.islands = {}
        self.loss = None
        self._send_values(PLACEHOLDER_STAGE)

    def forward(self, segment: Segment) -> None:
        """Run one segment of this device: receive its inputs, run its nodes, send its outputs."""
        leaves: dict[str, torch.Tensor] = {}
        env: dict[str, Any] = {}
        for value in segment.inputs:
            tensor = self._value(value)
            if self.program.values[value].needs_grad and not isinstance(tensor, nn.Parameter):
                leaf = tensor.detach().requires_grad_(True)
                leaves[value] = leaf
                env[value] = leaf
            else:
                env[value] = tensor
        produced: dict[str, Any] = {}
        if segment.is_loss:
            leaves_out = [env[name] if name is not None else self.program.constant_outputs[i] for i, name in enumerate(self.program.user_outputs)]
            self.loss = self.loss_fn(self.program.unflatten_outputs(leaves_out))
        else:
            for name in segment.nodes:
                node = self.nodes[name]
                args = map_arg(node.args, lambda inp: env[inp.name])
                kwargs = map_arg(node.kwargs, lambda inp: env[inp.name])
                result = self.callables[name](*args, **kwargs)
                env[name] = result
                produced[name] = result
            self.local.update(produced)
        self.islands[segment.index] = (leaves, produced)
        self._send_values(segment.index)

    def write_back(self) -> None:
        """Copy the buffers' new values (batch-norm running statistics ...) into them."""
        placeholder_of = {fqn: placeholder for placeholder, fqn in self.program.buffers.items()}
        for buffer, (value, device) in self.plan.write_backs.items():
            if device == self.index:
                # A new tensor, not copy_(): autograd may have saved the old one for backward.
                fresh = self._value(value).detach().to(self.buffers[buffer].dtype)
                self.buffers[buffer] = fresh
                self.placeholder_values[placeholder_of[buffer]] = fresh

    def backward(self, segment: Segment) -> None:
        """Backward of one segment: gather its outputs' gradients, run autograd, pass gradients on."""
        leaves, produced = self.islands.pop(segment.index)
        for message in self._grad_recvs.get(segment.index, ()):
            self._add_grad(message.value, self.transport.recv(message, self.program.values[message.value], self.device))
        roots: list[torch.Tensor] = []
        root_grads: list[torch.Tensor | None] = []
        if segment.is_loss:
            if self.loss is not None and self.loss.requires_grad:
                roots.append(self.loss)
                root_grads.append(None)
        else:
            for name, tensor in produced.items():
                grad = self.grads.pop(name, None)
                if grad is not None and isinstance(tensor, torch.Tensor) and tensor.requires_grad:
                    roots.append(tensor)
                    root_grads.append(grad)
        if roots:
            torch.autograd.backward(roots, root_grads)
        for value, leaf in leaves.items():
            grad = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
            self._add_grad(value, grad)
        self._send_grads(segment.index)

    def finish(self) -> None:
        """Collect gradients of parameters used on other devices, then update the parameters.

        One optimizer step per device at the end (updating each segment's parameters right
        after its backward would let updates fill idle time, as the simulator allows, but
        every extra ``Optimizer.step`` costs ~0.1-0.3 ms of Python on a CPU).
        """
        for message in self._grad_recvs.get(PLACEHOLDER_STAGE, ()):
            grad = self.transport.recv(message, self.program.values[message.value], self.device)
            fqn = self.program.parameters.get(message.value)
            if fqn is None:
                continue
            parameter = self.parameters[fqn]
            parameter.grad = grad if parameter.grad is None else parameter.grad + grad
        if self.update is not None:
            self.update.step()
        self.transport.flush()

    # ------------------------------------------------------------------ helpers
    def _value(self, value: str) -> Any:
        if value not in self.local:
            home = self.plan.home[value]
            if home == self.index:
                raise RuntimeError(f"value {value!r} should be on device {self.index} but was never produced")
            self.local[value] = self.transport.recv(Message("value", value, home, self.index), self.program.values[value], self.device)
        return self.local[value]

    def _add_grad(self, value: str, grad: torch.Tensor) -> None:
        existing = self.grads.get(value)
        self.grads[value] = grad if existing is None else existing + grad

    def _send_values(self, stage: int) -> None:
        """Send the values produced by forward ``stage`` that other devices use."""
        for message in self._value_sends.get(stage, ()):
            self.transport.send(message, self.local[message.value].detach())

    def _send_grads(self, segment_index: int) -> None:
        """Send the gradients of received values whose earliest user here is this segment."""
        for message in self._grad_sends.get(segment_index, ()):
            grad = self.grads.pop(message.value, None)
            if grad is None:
                info = self.program.values[message.value]
                grad = torch.zeros(info.shape, dtype=info.dtype, device=self.device)
            self.transport.send(message, grad)

    def state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Parameters, their gradients and buffers held by this device, on the CPU."""
        return {
            "parameters": {k: v.detach().cpu() for k, v in self.parameters.items()},
            "grads": {k: v.grad.detach().cpu() for k, v in self.parameters.items() if v.grad is not None},
            "buffers": {k: v.detach().cpu() for k, v in self.buffers.items()},
        }


def _synchronize(devices: Sequence[torch.device]) -> None:
    for device in {d for d in devices if d.type == "cuda"}:
        torch.cuda.synchronize(device)


class LocalExecutor:
    """All devices in one process; the step runs the segments in global order.

    ``devices`` gives the torch device of each logical device; logical devices may share a
    torch device (several ``"cpu"`` stand-ins), messages then are explicit copies.
    """

    def __init__(
        self,
        program: ForwardProgram,
        plan: SegmentPlan,
        devices: Sequence[torch.device | str],
        *,
        optimizer: str = "adam",
        loss_fn: LossFunction = default_loss,
    ) -> None:
        if len(devices) != plan.num_devices:
            raise RlplaceError(f"the plan spans {plan.num_devices} devices but {len(devices)} torch devices were given")
        self.plan = plan
        self.devices = [torch.device(d) for d in devices]
        self.transport = LocalTransport(self.devices)
        self.workers = [
            DeviceWorker(program, plan, index, device, self.transport, optimizer=optimizer, loss_fn=loss_fn) for index, device in enumerate(self.devices)
        ]

    def step(self) -> float:
        """One training step; returns the loss."""
        for worker in self.workers:
            worker.begin()
        for segment in self.plan.segments:
            self.workers[segment.device].forward(segment)
        for worker in self.workers:
            worker.write_back()
        for segment in reversed(self.plan.segments):
            self.workers[segment.device].backward(segment)
        for worker in self.workers:
            worker.finish()
        if self.transport.mailbox:
            raise RuntimeError(f"{len(self.transport.mailbox)} messages were sent but never received; the segment schedule is inconsistent")
        loss = self.workers[self.plan.loss_segment.device].loss
        assert loss is not None
        return float(loss.detach())

    def timed_steps(self, steps: int, warmup: int) -> tuple[list[float], float]:
        """Run ``warmup`` then ``steps`` steps; the wall time of each timed step (s) and the last loss."""
        loss = float("nan")
        times: list[float] = []
        for index in range(warmup + steps):
            _synchronize(self.devices)
            started = time.perf_counter()
            loss = self.step()
            _synchronize(self.devices)
            if index >= warmup:
                times.append(time.perf_counter() - started)
        return times, loss

    def state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Parameters, gradients and buffers of every device, merged, on the CPU."""
        merged: dict[str, dict[str, torch.Tensor]] = {"parameters": {}, "grads": {}, "buffers": {}}
        for worker in self.workers:
            for key, values in worker.state().items():
                merged[key].update(values)
        return merged


def reference_step(module: nn.Module, example_inputs: Any, *, optimizer: str = "adam", loss_fn: LossFunction = default_loss) -> tuple[float, dict[str, dict[str, torch.Tensor]]]:
    """One eager, unplaced training step on a copy of ``module``: the loss and the state after it."""
    import copy

    from rlplace.measure.program import split_inputs

    model = copy.deepcopy(module)
    args, kwargs = split_inputs(example_inputs)
    parameters = [p for p in model.parameters() if p.requires_grad]
    update = make_optimizer(optimizer, parameters)
    loss = loss_fn(model(*args, **kwargs))
    loss.backward()
    if update is not None:
        update.step()
    state = {
        "parameters": {k: v.detach().clone() for k, v in model.named_parameters()},
        "grads": {k: v.grad.detach().clone() for k, v in model.named_parameters() if v.grad is not None},
        "buffers": {k: v.detach().clone() for k, v in model.named_buffers()},
    }
    return float(loss.detach()), state


def assignment_state(workers: Sequence[DeviceWorker]) -> Mapping[str, int]:
    """Parameter name -> device holding it (for reports)."""
    return {fqn: worker.index for worker in workers for fqn in worker.parameters}
