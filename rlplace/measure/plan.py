"""Split a placed forward program into per-device segments and a fixed message schedule.

Segments are runs of one device's nodes along a topological order of the forward nodes
(the program's, or the simulator's, see `rlplace.measure.assign.schedule_order`), numbered
as they start, so segments form a DAG (a device can own several segments); a device's run
ends right after a value another device uses is produced, and right before a node that
needs a value not yet on the device (see `_OpenSegment`), so a send never waits for unrelated later work and
local work never waits for a receive it does not need. A value produced on one
device and used on another is sent once per destination device, right after the segment
that produced it; during the backward pass its gradient travels the other way, right after
the backward of the earliest segment on the destination that used it. Every rank derives the
same schedule from the same program and assignment, so the order of messages between each
pair of devices is known in advance (what FIFO transports such as NCCL need).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def plan_segments(program: ForwardProgram, node_device: Mapping[str, int], num_devices: int, order: Sequence[str] | None = None) -> SegmentPlan:
    """Segments and messages for ``program`` with each forward node on ``node_device[name]``.

    ``node_device`` must name every ``call_function`` node; it may also name placeholders
    (parameters, buffers, inputs), which otherwise live on the device of their first user.
    ``getitem`` nodes always follow the node whose tuple they unpack. ``order`` (every forward
    node once, each after its inputs; `RlplaceError` otherwise) is the order the nodes run
    in, each device running its own in that order (default: the program's order); see
    `rlplace.measure.assign.schedule_order`.
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

    producer: dict[str, int] = dict.fromkeys(program.placeholders, PLACEHOLDER_STAGE)
    opened: list[_OpenSegment] = []  # in the order they were opened: that is the segment index
    current: dict[int, _OpenSegment] = {}  # device -> its segment still taking nodes
    received: dict[int, set[str]] = {}  # device -> values of other devices it already has
    for node in _ordered_nodes(program, node_by_name, order):
        device = devices[node.name]
        segment, has = current.get(device), received.setdefault(device, set())
        if segment is None or segment.ends_before(node, devices, has):
            segment = current[device] = _OpenSegment(len(opened), device)
            opened.append(segment)
        segment.add(node, devices, has)
        producer[node.name] = segment.index
    segments = [_segment(s.index, s.device, s.nodes, node_by_name, producer) for s in opened]
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


def _ordered_nodes(program: ForwardProgram, nodes: Mapping[str, Node], order: Sequence[str] | None) -> list[Node]:
    """The forward nodes in ``order`` (checked: a permutation in which inputs come first;
    default the program's order), each ``getitem`` moved right behind the node it unpacks."""
    names = [node.name for node in program.nodes] if order is None else list(order)
    if len(names) != len(nodes) or set(names) != set(nodes):
        raise RlplaceError(f"the node order names {len(set(names))} distinct nodes, the forward program has {len(nodes)}; give every forward node once")
    seen: set[str] = set()
    for name in names:
        missing = [inp.name for inp in nodes[name].all_input_nodes if inp.name in nodes and inp.name not in seen]
        if missing:
            raise RlplaceError(f"the node order runs {name!r} before its input {missing[0]!r}")
        seen.add(name)
    ordered: list[Node] = []

    def emit(node: Node) -> None:
        ordered.append(node)
        for user in node.users:
            if is_getitem(user) and user.name in nodes:
                emit(user)

    for name in names:
        if not is_getitem(nodes[name]):
            emit(nodes[name])
    return ordered


class _OpenSegment:
    """A segment of one device still taking nodes (`plan_segments` walks the nodes in order).

    A segment is one autograd island whose inputs all arrive before its first node runs and
    whose outputs (and, in the backward pass, its inputs' gradients) leave only when the
    whole segment is done. So a device's next node starts a new segment:

    * after a node whose value another device uses: the value leaves as soon as it exists;
    * before a node that needs a value from another device that this device has not
      received yet: the work before it does not wait for that message, and in the backward
      pass that value's gradient leaves right after the backward of its first user here.

    Never before a ``getitem``: it comes right behind the node whose tuple it unpacks (a
    tuple is not a tensor and cannot enter an island). Nodes of other
    devices in between do not end it: each device runs its own segments in index order.
    """

    def __init__(self, index: int, device: int) -> None:
        self.index = index
        self.device = device
        self.nodes: list[str] = []
        self.sends = False

    def add(self, node: Node, devices: Mapping[str, int], received: set[str]) -> None:
        self.nodes.append(node.name)
        received.update(inp.name for inp in node.all_input_nodes if devices[inp.name] != self.device)
        if any(not is_getitem(user) and devices.get(user.name, self.device) != self.device for user in node.users):  # the output node has no device
            self.sends = True

    def ends_before(self, node: Node, devices: Mapping[str, int], received: set[str]) -> bool:
        if is_getitem(node):  # `_ordered_nodes` puts it right behind the node it unpacks
            return False
        return self.sends or any(devices[inp.name] != self.device and inp.name not in received for inp in node.all_input_nodes)


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
