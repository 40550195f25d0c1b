"""What a message costs the rank that receives it, depending on what that rank was doing.

On CPU ranks talking over gloo, the wall time a message adds to a step is not a constant.
On the 2-core development VM a message seemed to cost its receiver little after a short idle wait,
several times more after an idle wait of milliseconds, and most when the receiver was
computing when it arrived (the communication thread that takes the message in then waits
for a core both ranks keep busy). A constant cost per endpoint (``message_cpu_s``) splits
the difference: it over-predicts chains of placements where one rank waits for the other and
under-predicts parallel splits.

`rlplace.profile.ReceiveCost` prices one receive this way; `receive_state` finds, in a
recorded simulation, which op receives each transfer and what its device was doing when the
message arrived, and `charge` turns that into extra compute per op, for
`rlplace.measure.assign.simulate_as_executed` to simulate the step once more with it (the
constant ``message_cpu_s`` then dropped). `rlplace.measure.receive_fit` fits the three
numbers to measured split steps of models: ``benchmarks/fidelity.py`` on its development half
in every run (``--no-receive-fit`` keeps the constant cost), ``rlplace calibrate
--receive-cost`` on `rlplace.measure.receive_fit.RECEIVE_CALIBRATION_MODELS` (opt-in).
Search keeps the constant cost.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from rlplace.errors import RlplaceError
from rlplace.profile import ReceiveCost


@dataclasses.dataclass(frozen=True)
class ReceiveState:
    """Who receives each transfer of a schedule and what its device was doing then.

    Shapes (x transfers): receiver (x,) int64 op ids; busy (x,) bool, the receiving device
    was computing when the message arrived; waited (x,) seconds it had been idle (0 if busy).
    """

    receiver: np.ndarray
    busy: np.ndarray
    waited: np.ndarray


def receivers(edge_src: np.ndarray, edge_dst: np.ndarray, placement: np.ndarray, num_devices: int, op: np.ndarray, device: np.ndarray) -> np.ndarray:
    """The op that receives each transfer (producer ``op[i]`` to ``device[i]``), as
    `rlplace.simulate.transfer_endpoints` defines it: the producer's consumer of lowest id
    on that device.

    Shapes: edge_src, edge_dst (m,) int64; placement (n,) int64 in [0, num_devices); op,
    device (x,) int64; returns (x,) int64.
    """
    from rlplace.simulate import transfer_endpoints

    keys, _, lowest = transfer_endpoints(edge_src, edge_dst, placement, num_devices)
    wanted = np.asarray(op, dtype=np.int64) * num_devices + np.asarray(device, dtype=np.int64)
    at = np.minimum(np.searchsorted(keys, wanted), max(len(keys) - 1, 0))
    if len(wanted) and (not len(keys) or np.any(keys[at] != wanted)):
        raise RlplaceError("a transfer of the schedule has no consumer on its destination device; the schedule does not belong to this placement")
    return lowest[at] if len(keys) else np.zeros(0, dtype=np.int64)


def receiver_states(placement: np.ndarray, start: np.ndarray, finish: np.ndarray, device: np.ndarray, arrival: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Whether each receiving device is computing when its message arrives, and else how
    long it has been idle: since its last op finished, or since the step began (time 0).

    Shapes: placement, start, finish (n,) (one micro-batch's schedule, seconds); device,
    arrival (x,); returns busy (x,) bool and waited (x,) seconds (0 where busy).
    """
    busy = np.zeros(len(arrival), dtype=bool)
    waited = np.zeros(len(arrival))
    for d in np.unique(device):
        on = np.flatnonzero(placement == d)
        order = on[np.argsort(start[on], kind="stable")]
        starts = start[order]
        finishes = np.maximum.accumulate(finish[order]) if len(order) else finish[order]
        mine = np.flatnonzero(device == d)
        t = arrival[mine]
        before = np.searchsorted(starts, t, side="left") - 1  # the last op started strictly before t
        last_finish = np.where(before >= 0, finishes[np.maximum(before, 0)], 0.0) if len(order) else np.zeros(len(t))
        computing = (before >= 0) & (last_finish > t)
        busy[mine] = computing
        waited[mine] = np.where(computing, 0.0, t - last_finish)
    return busy, np.maximum(waited, 0.0)


def receive_state(graph: Any, placement: np.ndarray, result: Any) -> ReceiveState:
    """`ReceiveState` of a recorded simulation ``result`` (``record=True``, latency objective)
    of ``placement`` ((n,) int64) of ``graph``."""
    transfers = result.transfers
    if transfers is None:
        raise RlplaceError("receive_state needs a simulation recorded with record=True")
    p = np.asarray(placement, dtype=np.int64)
    if transfers.num_transfers == 0:
        return ReceiveState(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool), np.zeros(0))
    num_devices = int(max(p.max(), transfers.dst.max())) + 1
    receiver = receivers(np.asarray(graph.edge_src, dtype=np.int64), np.asarray(graph.edge_dst, dtype=np.int64), p, num_devices, transfers.op, transfers.dst)
    busy, waited = receiver_states(p, np.asarray(result.op_start), np.asarray(result.op_finish), transfers.dst, transfers.finish)
    return ReceiveState(receiver, busy, waited)


def charge(num_ops: int, state: ReceiveState, cost: ReceiveCost) -> np.ndarray:
    """(num_ops,) seconds of compute each op adds for the messages it receives under ``cost``."""
    extra = np.zeros(num_ops)
    np.add.at(extra, state.receiver, np.where(state.busy, cost.busy_s, cost.idle(state.waited)))
    return extra


def charged_simulator(graph: Any, cluster: Any, costs: Any, state: ReceiveState, cost: ReceiveCost) -> Any:
    """A latency `rlplace.simulate.Simulator` of ``graph`` whose ops pay what their receives
    cost under ``cost`` (`charge`) on top of ``costs``, on ``cluster`` without its constant
    message cost (`without_message_costs`)."""
    from rlplace.simulate import Simulator

    charged = costs.with_op_times(np.asarray(costs.op_time) + charge(graph.num_ops, state, cost)[:, None], costs.op_fixed)
    return Simulator(graph, without_message_costs(cluster), charged, objective="latency")


def without_message_costs(cluster: Any) -> Any:
    """``cluster`` without the constant message cost and the receive cost in its ``meta``."""
    from rlplace.costs import MESSAGE_CPU_META_KEY
    from rlplace.profile import RECEIVE_COST_META_KEY

    return dataclasses.replace(cluster, meta={k: v for k, v in cluster.meta.items() if k not in (MESSAGE_CPU_META_KEY, RECEIVE_COST_META_KEY)})
