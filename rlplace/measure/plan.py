"""Split a placed forward program into per-device segments and a fixed message schedule.

A new segment starts wherever the device changes along the topological order of the forward
nodes, so segments form a DAG (a device can own several segments); on one device also right
after a value another device uses is produced, and right before a node that needs a value
not yet on the device (see `_Boundaries`), so a send never waits for unrelated later work and
local work never waits for a receive it does not need. A value produced on one
device and used on another is sent once per destination device, right after the segment
that produced it; during the backward pass its gradient travels the other way, right after
the backward of the earliest segment on the destination that used it. Every rank derives the
same schedule from the same program and assignment, so the order of messages between each
pair of devices is known in advance (what FIFO transports such as NCCL need).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from torch.fx import Node

from rlplace.errors import RlplaceError
from rlplace.measure.program import ForwardProgram, is_getitem

#: Index of the pseudo-segment holding the placeholders (parameters, buffers, inputs).
PLACEHOLDER_STAGE = -1


@dataclass(frozen=True)
class Segment:
    """Consecutive forward nodes on one device (or the loss, for the last segment).

    Attributes:
        index: position in the global order of segments.
        device: logical device index.
        nodes: names of the nodes it runs, in order (empty for the loss segment).
        inputs: values it uses that other segments or placeholders produce, sorted by name.
        is_loss: the loss segment (computes the loss from the model's outputs).
    """

    index: int
    device: int
    nodes: tuple[str, ...]
    inputs: tuple[str, ...]
    is_loss: bool = False


@dataclass(frozen=True)
class Message:
    """One tensor sent between two devices in a step.

    Attributes:
        kind: ``"value"`` (forward activation, parameter or input) or ``"grad"`` (its gradient).
        value: name of the value.
        src: sending device.
        dst: receiving device.
    """

    kind: Literal["value", "grad"]
    value: str
    src: int
    dst: int


@dataclass(frozen=True, eq=False)
class SegmentPlan:
    """Where every value lives, the segments, and what crosses devices.

    Attributes:
        num_devices: logical devices taking part (ranks in distributed mode).
        segments: forward segments in topological order, then the loss segment.
        home: value name -> device that produces (or holds) it.
        producer: value name -> index of its segment (`PLACEHOLDER_STAGE` for placeholders).
        node_device: node name -> device (placeholders included).
        first_use: (value, device) -> index of the earliest segment on ``device`` that uses
            the value when ``device`` is not its home.
        write_backs: buffer name -> (value name, device holding the buffer).
        messages: every message of one step, in the order each sender sends them
            (forward values first, then gradients).
    """

    num_devices: int
    segments: tuple[Segment, ...]
    home: Mapping[str, int]
    producer: Mapping[str, int]
    node_device: Mapping[str, int]
    first_use: Mapping[tuple[str, int], int]
    write_backs: Mapping[str, tuple[str, int]]
    messages: tuple[Message, ...]

    @property
    def loss_segment(self) -> Segment:
        return self.segments[-1]

    def devices_used(self) -> list[int]:
        """Devices that run at least one segment, sorted."""
        return sorted({segment.device for segment in self.segments})

    def bytes_moved(self, program: ForwardProgram) -> int:
        """Bytes of every message of one step."""
        return sum(program.values[m.value].nbytes for m in self.messages)


def plan_segments(program: ForwardProgram, node_device: Mapping[str, int], num_devices: int) -> SegmentPlan:
    """Segments and messages for ``program`` with each forward node on ``node_device[name]``.

    ``node_device`` must name every ``call_function`` node; it may also name placeholders
    (parameters, buffers, inputs), which otherwise live on the device of their first user.
    ``getitem`` nodes always follow the node whose tuple they unpack.
    """
    devices: dict[str, int] = {}
    node_by_name: dict[str, Node] = {node.name: node for node in program.nodes}
    for node in program.nodes:
        if is_getitem(node):
            source = node.args[0]
            devices[node.name] = devices[source.name]
            continue
        if node.name not in node_device:
            raise RlplaceError(f"the executor's assignment gives no device to forward node {node.name!r}")
        devices[node.name] = _check_device(node_device[node.name], num_devices, node.name)
    for name in program.placeholders:
        if name in node_device:
            devices[name] = _check_device(node_device[name], num_devices, name)
            continue
        users = [node for node in program.nodes if any(inp.name == name for inp in node.all_input_nodes)]
        devices[name] = devices[users[0].name] if users else 0

    segments: list[Segment] = []
    producer: dict[str, int] = dict.fromkeys(program.placeholders, PLACEHOLDER_STAGE)
    current: list[str] = []
    boundaries = _Boundaries(devices)
    for node in program.nodes:
        if current and boundaries.starts_segment(node):
            segments.append(_segment(len(segments), devices[current[-1]], current, node_by_name, producer))
            current = []
            boundaries.reset()
        current.append(node.name)
        boundaries.add(node)
        producer[node.name] = len(segments)
    if current:
        segments.append(_segment(len(segments), devices[current[-1]], current, node_by_name, producer))
    for value in program.values:
        if not program.values[value].is_tensor and value not in producer:
            producer[value] = PLACEHOLDER_STAGE

    outputs = [name for name in program.user_outputs if name is not None]
    if not outputs:
        raise RlplaceError("the model has no tensor output to compute a loss from")
    last_output = max(outputs, key=lambda name: producer[name])
    loss_device = devices[last_output]
    segments.append(Segment(len(segments), loss_device, (), tuple(sorted(set(outputs))), is_loss=True))

    write_backs: dict[str, tuple[str, int]] = {}
    for value, buffer in program.buffer_mutations.items():
        placeholder = next((p for p, b in program.buffers.items() if b == buffer), None)
        if placeholder is None:
            raise RlplaceError(f"the export writes buffer {buffer!r}, which it never reads")
        write_backs[buffer] = (value, devices[placeholder])

    for segment in segments:
        for value in segment.inputs:
            if not program.values[value].is_tensor and devices[value] != segment.device:
                raise RlplaceError(f"value {value!r} is not a tensor and cannot move between devices; keep its producer and users together")

    first_use: dict[tuple[str, int], int] = {}
    for segment in segments:
        for value in segment.inputs:
            if devices[value] != segment.device:
                first_use.setdefault((value, segment.device), segment.index)
    messages = _schedule(program, segments, devices, producer, first_use, write_backs)
    return SegmentPlan(
        num_devices=num_devices,
        segments=tuple(segments),
        home={name: devices[name] for name in producer},
        producer=producer,
        node_device=devices,
        first_use=first_use,
        write_backs=write_backs,
        messages=messages,
    )


class _Boundaries:
    """Where segments start, walking the forward nodes in order (`plan_segments`).

    A segment is one autograd island whose inputs are all received before its first node
    runs and whose outputs (and, in the backward pass, input gradients) are sent only when
    the whole segment is done. So besides at device changes a segment ends:

    * after a node whose value another device uses: the value leaves as soon as it exists;
    * before a node that needs a value another device sends and this device has not yet
      received: the work before it does not wait for that message, and in the backward pass
      the gradient of that value leaves right after the backward of its first user here.

    Never between a node and the ``getitem`` nodes unpacking its tuple (a tuple is not a
    tensor and cannot enter an island), and never before a ``getitem``.
    """

    def __init__(self, devices: Mapping[str, int]) -> None:
        self.devices = devices
        self.received: dict[int, set[str]] = {}
        self.reset()

    def reset(self) -> None:
        self.last_device = -1
        self.sends = False
        self.unpacked: set[str] = set()  # getitem users of the segment's nodes still to come

    def add(self, node: Node) -> None:
        device = self.devices[node.name]
        self.last_device = device
        self.unpacked.discard(node.name)
        received = self.received.setdefault(device, set())
        for inp in node.all_input_nodes:
            if self.devices[inp.name] != device:
                received.add(inp.name)
        for user in node.users:
            if is_getitem(user):
                self.unpacked.add(user.name)
            elif self.devices.get(user.name, device) != device:  # the output node has no device
                self.sends = True

    def starts_segment(self, node: Node) -> bool:
        device = self.devices[node.name]
        if device != self.last_device:
            return True
        if is_getitem(node) or self.unpacked:
            return False
        if self.sends:
            return True
        received = self.received.get(device, set())
        return any(self.devices[inp.name] != device and inp.name not in received for inp in node.all_input_nodes)


def _check_device(device: int, num_devices: int, name: str) -> int:
    if not 0 <= int(device) < num_devices:
        raise RlplaceError(f"{name!r} is assigned to device {device}, but only devices 0..{num_devices - 1} take part")
    return int(device)


def _segment(index: int, device: int, names: list[str], nodes: Mapping[str, Node], producer: Mapping[str, int]) -> Segment:
    inside = set(names)
    inputs = sorted({inp.name for name in names for inp in nodes[name].all_input_nodes if inp.name not in inside})
    for value in inputs:
        if value not in producer:
            raise RlplaceError(f"node {names[0]!r} uses {value!r} before it is produced; the forward graph is not in topological order")
    return Segment(index, device, tuple(names), tuple(inputs))


def _schedule(
    program: ForwardProgram,
    segments: list[Segment],
    devices: Mapping[str, int],
    producer: Mapping[str, int],
    first_use: Mapping[tuple[str, int], int],
    write_backs: Mapping[str, tuple[str, int]],
) -> tuple[Message, ...]:
    """Every message in sender order: values by producing stage, then gradients by backward order."""
    consumers: dict[str, set[int]] = {}
    for (value, device) in first_use:
        consumers.setdefault(value, set()).add(device)
    for value, device in write_backs.values():
        if devices[value] != device:
            consumers.setdefault(value, set()).add(device)
    forward: list[tuple[int, str, int]] = []
    for value, dsts in consumers.items():
        for dst in dsts:
            forward.append((producer[value], value, dst))
    forward.sort()
    messages = [Message("value", value, devices[value], dst) for _, value, dst in forward]
    backward: list[tuple[int, str, int]] = []
    for (value, device), index in first_use.items():
        if program.values[value].needs_grad:
            backward.append((-index, value, device))
    backward.sort()
    messages += [Message("grad", value, device, devices[value]) for _, value, device in backward]
    return tuple(messages)
