"""Numba kernels of the step-time simulator: flat arrays in, flat arrays out.

Nothing here knows about `OpGraph` or `Cluster`; `rlplace.simulate` precomputes the graph
structure once and calls these kernels per placement. Every kernel is ``njit(cache=True)``,
so the first compile (a few seconds) is paid once per machine, not per process.

Vocabulary shared by the kernels (n ops, m edges, k devices, M micro-batches):

- *instance* ``g = mb * n + i``: micro-batch ``mb`` of op ``i`` (``M = 1`` for one step).
- successor CSR: the consumers of op ``i`` are ``succ_op[succ_ptr[i]:succ_ptr[i + 1]]``, the
  edge ids (rows of ``edge_time``) ``succ_edge[...]`` alongside.
- edge times are factored by link class: edge ``e`` takes ``edge_time[e, link_class[a, b]]``
  from device ``a`` to device ``b`` (``edge_time`` (m, L), ``link_class`` (k, k); see
  `rlplace.costs.CostTable`).
- *order* (the pipeline schedule, built by `rlplace.schedules`): op ``i`` is in *lane*
  ``op_lane[i]`` (``L`` lanes: a model chunk's forward or backward ops); on device ``d`` the
  instances of lane ``l`` and micro-batch ``mb`` form the *slot* at position
  ``slot_pos[d, l, mb]`` of the device's schedule (``slot_mb[d, pos]`` inverts it). The
  priority *key* of instance ``g`` on its device is ``(slot_pos << s) | op_rank[i]`` with ``s``
  the bits of ``n`` (the order of ``slot_pos * n + op_rank[i]``, without a division to take it
  apart; lower runs first among ready instances on one device; unique per device);
  ``rank_op`` inverts ``op_rank``.
- *group* ``(d * L + l) * M + mb``: the instances of one slot. A *gate* ``gate_to[G] = H``
  holds the instances of group ``H`` back until every instance of group ``G`` has finished
  (1F1B: a device's forward of micro-batch ``j + w`` waits for its backward of ``j``); the
  ops of lane ``l`` on device ``d`` are ``lane_ops[lane_ptr[d * L + l]:lane_ptr[d * L + l + 1]]``.
  An empty ``gate_to`` means no gates.
- *transfer* ``x``: instance ``x_instance[x]``'s output sent once to device ``x_dst[x]``;
  link ``a * k + b`` is the ordered device pair ``a -> b``.
- event ids: ``g`` for "instance g finished", ``M * n + x`` for "transfer x arrived".
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numba import njit

NONE = -1


# ----------------------------------------------------------------------------- heaps
@njit(cache=True)
def _int_heap_push(heap: np.ndarray, base: int, size: int, key: int) -> None:
    """Push ``key`` onto the min-heap ``heap[base:base + size]`` (the caller grows size)."""
    i = size
    while i > 0:
        parent = (i - 1) >> 1
        if heap[base + parent] <= key:
            break
        heap[base + i] = heap[base + parent]
        i = parent
    heap[base + i] = key


@njit(cache=True)
def _int_heap_pop(heap: np.ndarray, base: int, size: int) -> int:
    """Pop the smallest key of ``heap[base:base + size]`` (the caller shrinks size)."""
    top = heap[base]
    size -= 1
    last = heap[base + size]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and heap[base + child + 1] < heap[base + child]:
            child += 1
        if heap[base + child] >= last:
            break
        heap[base + i] = heap[base + child]
        i = child
    heap[base + i] = last
    return top


@njit(cache=True)
def _event_push(times: np.ndarray, ids: np.ndarray, size: int, time: float, event: int) -> None:
    """Push (time, event) onto the lexicographic min-heap ``times/ids[:size]``."""
    i = size
    while i > 0:
        parent = (i - 1) >> 1
        if times[parent] < time or (times[parent] == time and ids[parent] <= event):
            break
        times[i] = times[parent]
        ids[i] = ids[parent]
        i = parent
    times[i] = time
    ids[i] = event


@njit(cache=True)
def _event_pop(times: np.ndarray, ids: np.ndarray, size: int) -> int:
    """Pop the earliest event of ``times/ids[:size]`` and return its id."""
    top = ids[0]
    size -= 1
    last_time = times[size]
    last_id = ids[size]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        right = child + 1
        if right < size and (times[right] < times[child] or (times[right] == times[child] and ids[right] < ids[child])):
            child = right
        if times[child] > last_time or (times[child] == last_time and ids[child] >= last_id):
            break
        times[i] = times[child]
        ids[i] = ids[child]
        i = child
    times[i] = last_time
    ids[i] = last_id
    return top


# ------------------------------------------------------------------- event simulation
@njit(cache=True)
def _schedule(
    num_ops: int,
    microbatches: int,
    num_devices: int,
    succ_ptr: np.ndarray,
    succ_op: np.ndarray,
    succ_edge: np.ndarray,
    indegree: np.ndarray,
    op_time: np.ndarray,
    edge_time: np.ndarray,
    link_class: np.ndarray,
    placement: np.ndarray,
    op_rank: np.ndarray,
    rank_op: np.ndarray,
    op_lane: np.ndarray,
    slot_pos: np.ndarray,
    slot_mb: np.ndarray,
    lane_ptr: np.ndarray,
    lane_ops: np.ndarray,
    gate_to: np.ndarray,
    cutoff: float,
    record: bool,
):
    """List-schedule every instance; return the schedule and its transfers.

    Rules: a device runs one instance at a time and, whenever it is idle, starts the ready
    instance of lowest key; an instance is ready when all its inputs are on its device and
    the gate on its group, if any, has opened. A
    finished instance sends its output once per remote device that holds a consumer, taking
    the largest ``edge_time`` of the edges to that device; a link carries one transfer at a
    time, first come first served (ties in the order the producers finished). All events of
    one instant are applied before any device or link picks its next work, so priorities are
    honoured among instances that become ready together. Times of ops and transfers are the
    step's divided by ``microbatches``.

    ``cutoff`` (the graph's time unit; ``inf`` to simulate in full): the simulation stops and
    the makespan is ``inf`` as soon as a lower bound on it passes ``cutoff`` (by a relative
    1e-9, so float rounding of the running sums never stops a schedule that ends at or below
    it). Two bounds are checked: an idle device's instant plus the time of every instance it
    has not started, and a finished instance's instant plus its *tail*, the heaviest path of
    op times from its successors to the end of its micro-batch, with each edge between two
    devices adding its ``edge_time`` (a transfer carries the largest of its edges' times, and
    waits for its link, so takes at least that long; ops are in topological order). Both are
    true lower bounds on the makespan, so a finite makespan is always exact and ``inf`` means
    "above ``cutoff``"; the arrays are then partial.

    ``record``: fill the per-instance and per-transfer times (start, finish, ready, the
    previous instance or transfer of each device and link); False leaves them as 1-element
    placeholders, for the makespan-only hot path (the makespan is the same either way).
    """
    n = num_ops
    k = num_devices
    total = n * microbatches
    divisor = float(microbatches)

    rec = total if record else 1  # only the recording caller reads these
    start = np.empty(rec)
    finish = np.empty(rec)
    ready_time = np.zeros(rec)
    ready_via = np.full(rec, NONE, dtype=np.int64)
    device_prev = np.full(rec, NONE, dtype=np.int64)
    pending = np.empty(total, dtype=np.int64)
    # No integer division in the event loop (it cost 3-6 % of a schedule): the op and
    # micro-batch of an instance come from two tables, and a key packs (slot, rank) into bits.
    inst_op = np.empty(total, dtype=np.int64)
    inst_mb = np.empty(total, dtype=np.int64)
    for mb in range(microbatches):
        pending[mb * n : (mb + 1) * n] = indegree
        for i in range(n):
            inst_op[mb * n + i] = i
            inst_mb[mb * n + i] = mb
    shift = 1
    while (1 << shift) <= n:
        shift += 1
    rank_mask = (1 << shift) - 1
    num_lanes = slot_pos.shape[1]
    gated = gate_to.shape[0] > 0
    remaining = np.empty(gate_to.shape[0], dtype=np.int64)
    if gated:
        for group in range(gate_to.shape[0]):
            lane_group = group // microbatches
            remaining[group] = lane_ptr[lane_group + 1] - lane_ptr[lane_group]
            target = gate_to[group]
            if target != NONE:
                target_lane = target // microbatches
                base = (target % microbatches) * n
                for j in range(lane_ptr[target_lane], lane_ptr[target_lane + 1]):
                    pending[base + lane_ops[j]] += 1

    capacity = max(1, microbatches * succ_op.shape[0])
    x_instance = np.empty(capacity, dtype=np.int64)
    x_dst = np.empty(capacity, dtype=np.int64)
    x_duration = np.empty(capacity)
    xrec = capacity if record else 1
    x_ready = np.empty(xrec)
    x_start = np.empty(xrec)
    x_finish = np.empty(xrec)
    x_link_prev = np.empty(xrec, dtype=np.int64)
    x_next = np.empty(capacity, dtype=np.int64)
    num_x = 0

    num_links = k * k
    link_head = np.full(num_links, NONE, dtype=np.int64)
    link_tail = np.full(num_links, NONE, dtype=np.int64)
    link_last = np.full(num_links, NONE, dtype=np.int64)
    link_busy = np.zeros(num_links, dtype=np.bool_)
    link_dirty = np.zeros(num_links, dtype=np.bool_)
    dirty_links = np.empty(num_links, dtype=np.int64)
    num_dirty_links = 0

    # one ready heap per device, each as long as the instances placed there: O(n * M) in all
    heap_base = np.zeros(k + 1, dtype=np.int64)
    for i in range(n):
        heap_base[placement[i] + 1] += microbatches
    for d in range(k):
        heap_base[d + 1] += heap_base[d]
    ready_heap = np.empty(max(1, total), dtype=np.int64)
    ready_size = np.zeros(k, dtype=np.int64)
    device_last = np.full(k, NONE, dtype=np.int64)
    device_busy = np.zeros(k, dtype=np.bool_)
    device_dirty = np.zeros(k, dtype=np.bool_)
    dirty_devices = np.empty(k, dtype=np.int64)
    num_dirty_devices = 0

    event_capacity = k + num_links + 1
    event_time = np.empty(event_capacity)
    event_id = np.empty(event_capacity, dtype=np.int64)
    num_events = 0

    best = np.full(k, -1.0)

    limit = cutoff * (1.0 + 1e-9)
    bounded = limit < np.inf
    left = np.zeros(k)  # time of the instances each device has not started
    tail = np.zeros(n)  # heaviest path of instance and transfer times after op i, to the end of its micro-batch
    aborted = False
    if bounded:
        for i in range(n):
            d = placement[i]
            left[d] += microbatches * (op_time[i, d] / divisor)
        for d in range(k):
            if left[d] > limit:
                aborted = True
        for i in range(n - 1, -1, -1):
            a = placement[i]
            for e in range(succ_ptr[i], succ_ptr[i + 1]):
                j = succ_op[e]
                b = placement[j]
                path = op_time[j, b] / divisor + tail[j]
                if b != a:  # the transfer to j's device takes at least this edge's time
                    path += edge_time[succ_edge[e], link_class[a, b]] / divisor
                if path > tail[i]:
                    tail[i] = path

    for g in range(total):
        if pending[g] == 0:
            i = inst_op[g]
            d = placement[i]
            _int_heap_push(ready_heap, heap_base[d], ready_size[d], (slot_pos[d, op_lane[i], inst_mb[g]] << shift) | op_rank[i])
            ready_size[d] += 1
            if not device_dirty[d]:
                device_dirty[d] = True
                dirty_devices[num_dirty_devices] = d
                num_dirty_devices += 1

    now = 0.0
    makespan = 0.0
    done = 0
    while not aborted:
        # ---- every idle device and link touched at this instant picks its next work
        for j in range(num_dirty_devices):
            d = dirty_devices[j]
            device_dirty[d] = False
            if device_busy[d]:
                continue
            if bounded and now + left[d] > limit:
                aborted = True
                break
            if ready_size[d] == 0:
                continue
            key = _int_heap_pop(ready_heap, heap_base[d], ready_size[d])
            ready_size[d] -= 1
            i = rank_op[key & rank_mask]
            g = slot_mb[d, key >> shift] * n + i
            duration = op_time[i, d] / divisor
            if bounded:
                left[d] -= duration
            end = now + duration
            if record:
                start[g] = now
                finish[g] = end
                device_prev[g] = device_last[d]
                device_last[d] = g
            device_busy[d] = True
            _event_push(event_time, event_id, num_events, end, g)
            num_events += 1
        num_dirty_devices = 0
        if aborted:
            break
        for j in range(num_dirty_links):
            link = dirty_links[j]
            link_dirty[link] = False
            if link_busy[link] or link_head[link] == NONE:
                continue
            x = link_head[link]
            link_head[link] = x_next[x]
            if link_head[link] == NONE:
                link_tail[link] = NONE
            end = now + x_duration[x]
            if record:
                x_start[x] = now
                x_finish[x] = end
                x_link_prev[x] = link_last[link]
                link_last[link] = x
            link_busy[link] = True
            _event_push(event_time, event_id, num_events, end, total + x)
            num_events += 1
        num_dirty_links = 0

        if num_events == 0:
            break
        now = event_time[0]
        # ---- apply every event of this instant
        while num_events > 0 and event_time[0] == now:
            event = _event_pop(event_time, event_id, num_events)
            num_events -= 1
            if event < total:
                g = event
                i = inst_op[g]
                mb = inst_mb[g]
                base = g - i
                a = placement[i]
                device_busy[a] = False
                if bounded and now + tail[i] > limit:
                    aborted = True
                    break
                if not device_dirty[a]:
                    device_dirty[a] = True
                    dirty_devices[num_dirty_devices] = a
                    num_dirty_devices += 1
                if now > makespan:
                    makespan = now
                done += 1
                if gated:
                    group = (a * num_lanes + op_lane[i]) * microbatches + mb
                    remaining[group] -= 1
                    target = gate_to[group]
                    if remaining[group] == 0 and target != NONE:
                        target_mb = target % microbatches
                        target_lane = target // microbatches
                        for j in range(lane_ptr[target_lane], lane_ptr[target_lane + 1]):
                            op = lane_ops[j]
                            c = target_mb * n + op
                            pending[c] -= 1
                            if pending[c] == 0:
                                if record:
                                    ready_time[c] = now
                                    ready_via[c] = g
                                _int_heap_push(ready_heap, heap_base[a], ready_size[a], (slot_pos[a, op_lane[op], target_mb] << shift) | op_rank[op])
                                ready_size[a] += 1
                remote = False
                for e in range(succ_ptr[i], succ_ptr[i + 1]):
                    consumer = succ_op[e]
                    d = placement[consumer]
                    if d == a:
                        c = base + consumer
                        pending[c] -= 1
                        if pending[c] == 0:
                            if record:
                                ready_time[c] = now
                                ready_via[c] = g
                            _int_heap_push(ready_heap, heap_base[a], ready_size[a], (slot_pos[a, op_lane[consumer], mb] << shift) | op_rank[consumer])
                            ready_size[a] += 1
                    else:
                        cost = edge_time[succ_edge[e], link_class[a, d]] / divisor
                        if cost > best[d]:
                            best[d] = cost
                        remote = True
                if remote:
                    for d in range(k):
                        if best[d] < 0.0:
                            continue
                        x = num_x
                        num_x += 1
                        x_instance[x] = g
                        x_dst[x] = d
                        x_duration[x] = best[d]
                        if record:
                            x_ready[x] = now
                        x_next[x] = NONE
                        best[d] = -1.0
                        link = a * k + d
                        if link_tail[link] == NONE:
                            link_head[link] = x
                        else:
                            x_next[link_tail[link]] = x
                        link_tail[link] = x
                        if not link_busy[link] and not link_dirty[link]:
                            link_dirty[link] = True
                            dirty_links[num_dirty_links] = link
                            num_dirty_links += 1
            else:
                x = event - total
                g = x_instance[x]
                i = inst_op[g]
                mb = inst_mb[g]
                base = g - i
                d = x_dst[x]
                link = placement[i] * k + d
                link_busy[link] = False
                if not link_dirty[link]:
                    link_dirty[link] = True
                    dirty_links[num_dirty_links] = link
                    num_dirty_links += 1
                for e in range(succ_ptr[i], succ_ptr[i + 1]):
                    consumer = succ_op[e]
                    if placement[consumer] != d:
                        continue
                    c = base + consumer
                    pending[c] -= 1
                    if pending[c] == 0:
                        if record:
                            ready_time[c] = now
                            ready_via[c] = event
                        _int_heap_push(ready_heap, heap_base[d], ready_size[d], (slot_pos[d, op_lane[consumer], mb] << shift) | op_rank[consumer])
                        ready_size[d] += 1
                        if not device_dirty[d]:
                            device_dirty[d] = True
                            dirty_devices[num_dirty_devices] = d
                            num_dirty_devices += 1
    if done < total:  # a deadlock (not reachable with the orders of rlplace.schedules): never a finite step time
        makespan = np.inf
    return (
        makespan,
        start,
        finish,
        ready_time,
        ready_via,
        device_prev,
        num_x,
        x_instance,
        x_dst,
        x_ready,
        x_start,
        x_finish,
        x_link_prev,
    )


@njit(cache=True)
def schedule_makespan(
    num_ops: int,
    microbatches: int,
    num_devices: int,
    succ_ptr: np.ndarray,
    succ_op: np.ndarray,
    succ_edge: np.ndarray,
    indegree: np.ndarray,
    op_time: np.ndarray,
    edge_time: np.ndarray,
    link_class: np.ndarray,
    placement: np.ndarray,
    op_rank: np.ndarray,
    rank_op: np.ndarray,
    op_lane: np.ndarray,
    slot_pos: np.ndarray,
    slot_mb: np.ndarray,
    lane_ptr: np.ndarray,
    lane_ops: np.ndarray,
    gate_to: np.ndarray,
    cutoff: float = np.inf,
) -> float:
    """The hot path: only the finish time of the last instance crosses back to Python;
    ``inf`` when the makespan surely exceeds ``cutoff`` (`_schedule`)."""
    result = _schedule(
        num_ops, microbatches, num_devices, succ_ptr, succ_op, succ_edge, indegree, op_time, edge_time, link_class, placement,
        op_rank, rank_op, op_lane, slot_pos, slot_mb, lane_ptr, lane_ops, gate_to, cutoff, False,
    )  # fmt: skip
    return result[0]


@njit(cache=True)
def _schedule_full(
    num_ops: int,
    microbatches: int,
    num_devices: int,
    succ_ptr: np.ndarray,
    succ_op: np.ndarray,
    succ_edge: np.ndarray,
    indegree: np.ndarray,
    op_time: np.ndarray,
    edge_time: np.ndarray,
    link_class: np.ndarray,
    placement: np.ndarray,
    op_rank: np.ndarray,
    rank_op: np.ndarray,
    op_lane: np.ndarray,
    slot_pos: np.ndarray,
    slot_mb: np.ndarray,
    lane_ptr: np.ndarray,
    lane_ops: np.ndarray,
    gate_to: np.ndarray,
):
    """`_schedule` with the transfer arrays trimmed to the transfers made (``Schedule``'s fields, in order)."""
    (makespan, start, finish, ready_time, ready_via, device_prev, num_x, x_instance, x_dst, x_ready, x_start, x_finish, x_link_prev) = _schedule(
        num_ops, microbatches, num_devices, succ_ptr, succ_op, succ_edge, indegree, op_time, edge_time, link_class, placement,
        op_rank, rank_op, op_lane, slot_pos, slot_mb, lane_ptr, lane_ops, gate_to, np.inf, True,
    )  # fmt: skip
    return (
        makespan,
        start,
        finish,
        ready_time,
        ready_via,
        device_prev,
        x_instance[:num_x].copy(),
        x_dst[:num_x].copy(),
        x_ready[:num_x].copy(),
        x_start[:num_x].copy(),
        x_finish[:num_x].copy(),
        x_link_prev[:num_x].copy(),
    )


class Schedule(NamedTuple):
    """A recorded schedule (`schedule_full`). Shapes: T = M * n instances, x transfers; times in the graph's unit.

    makespan: finish of the last instance.
    start, finish: (T,) float64 per instance ``g = mb * n + i``.
    ready_time: (T,) float64, when the instance became ready (inputs arrived, gate open).
    ready_via: (T,) int64, the event that made it ready (an instance id ``< T`` or ``T + x``
        for transfer x), -1 when ready at time 0.
    device_prev: (T,) int64, the instance its device ran before it, -1 for the first.
    x_instance, x_dst: (x,) int64, the producer instance and the receiving device.
    x_ready, x_start, x_finish: (x,) float64, when transfer x was issued, took its link, arrived.
    x_link_prev: (x,) int64, the transfer its link carried before it, -1 for the first.
    """

    makespan: float
    start: np.ndarray
    finish: np.ndarray
    ready_time: np.ndarray
    ready_via: np.ndarray
    device_prev: np.ndarray
    x_instance: np.ndarray
    x_dst: np.ndarray
    x_ready: np.ndarray
    x_start: np.ndarray
    x_finish: np.ndarray
    x_link_prev: np.ndarray


def schedule_full(*args: Any) -> Schedule:
    """The whole schedule as a `Schedule`; takes `schedule_makespan`'s arguments."""
    return Schedule._make(_schedule_full(*args))


@njit(cache=True)
def critical_path(
    start: np.ndarray,
    finish: np.ndarray,
    ready_time: np.ndarray,
    ready_via: np.ndarray,
    device_prev: np.ndarray,
    x_instance: np.ndarray,
    x_ready: np.ndarray,
    x_start: np.ndarray,
    x_link_prev: np.ndarray,
) -> np.ndarray:
    """Instances on the critical path, first to last.

    Walks back from the instance that finishes last. An instance's start was set either by
    its last input's arrival (``ready_time == start``: follow that input, a local producer or
    a transfer) or by its device finishing the previous instance (follow that one). A
    transfer's start was set by its producer's finish or, when the link was busy, by the
    previous transfer on the link. Data arrival wins ties. Start times are copies of event
    times, so the equalities are exact.
    """
    total = start.shape[0]
    path = np.empty(total, dtype=np.int64)
    if total == 0:
        return path
    length = 0
    g = int(np.argmax(finish))
    while length < total:
        path[length] = g
        length += 1
        s = start[g]
        via = ready_via[g]
        if via != NONE and ready_time[g] == s:
            if via < total:
                g = via
                continue
            x = via - total
            while x_start[x] > x_ready[x] and x_link_prev[x] != NONE:
                x = x_link_prev[x]
            g = x_instance[x]
            continue
        previous = device_prev[g]
        if previous != NONE and finish[previous] == s:
            g = previous
            continue
        break
    return path[:length][::-1].copy()


# -------------------------------------------------------------------------- memory
@njit(cache=True)
def peak_dynamic_memory(
    num_ops: int,
    microbatches: int,
    num_devices: int,
    succ_ptr: np.ndarray,
    succ_op: np.ndarray,
    placement: np.ndarray,
    output_bytes: np.ndarray,
    work_bytes: np.ndarray,
    start: np.ndarray,
    finish: np.ndarray,
    x_instance: np.ndarray,
    x_dst: np.ndarray,
    x_finish: np.ndarray,
) -> np.ndarray:
    """(k,) peak bytes of activations and working memory per device over the schedule.

    Buffers (sizes of one micro-batch = the step's divided by ``microbatches``):
    working memory ``[start, finish)`` of each instance; its output on its own device from
    its start until its last local consumer finishes and every transfer of it has left (its
    own finish when nothing reads it); a received copy from the transfer's arrival until the
    last consumer on the receiving device finishes. At one instant, buffers that end are
    released before buffers that begin are allocated; a buffer of zero duration still counts
    at its instant.
    """
    n = num_ops
    total = n * microbatches
    divisor = float(microbatches)
    num_x = x_instance.shape[0]

    local_end = finish.copy()
    for g in range(total):
        i = g % n
        base = g - i
        a = placement[i]
        for e in range(succ_ptr[i], succ_ptr[i + 1]):
            consumer = succ_op[e]
            if placement[consumer] == a and finish[base + consumer] > local_end[g]:
                local_end[g] = finish[base + consumer]
    remote_end = x_finish.copy()
    for x in range(num_x):
        g = x_instance[x]
        if x_finish[x] > local_end[g]:
            local_end[g] = x_finish[x]
        i = g % n
        base = g - i
        for e in range(succ_ptr[i], succ_ptr[i + 1]):
            consumer = succ_op[e]
            if placement[consumer] == x_dst[x] and finish[base + consumer] > remote_end[x]:
                remote_end[x] = finish[base + consumer]

    num_buffers = 2 * total + num_x
    lo = np.empty(num_buffers)
    hi = np.empty(num_buffers)
    size = np.empty(num_buffers)
    device = np.empty(num_buffers, dtype=np.int64)
    count = 0
    for g in range(total):
        i = g % n
        if work_bytes[i] > 0.0:
            lo[count] = start[g]
            hi[count] = finish[g]
            size[count] = work_bytes[i] / divisor
            device[count] = placement[i]
            count += 1
        if output_bytes[i] > 0.0:
            lo[count] = start[g]
            hi[count] = local_end[g]
            size[count] = output_bytes[i] / divisor
            device[count] = placement[i]
            count += 1
    for x in range(num_x):
        i = x_instance[x] % n
        if output_bytes[i] > 0.0:
            lo[count] = x_finish[x]
            hi[count] = remote_end[x]
            size[count] = output_bytes[i] / divisor
            device[count] = x_dst[x]
            count += 1

    # Events in tie order (releases of lasting buffers, allocations, releases of instants);
    # a stable sort by time keeps that order within one instant.
    event_time = np.empty(2 * count)
    event_delta = np.empty(2 * count)
    event_device = np.empty(2 * count, dtype=np.int64)
    num_events = 0
    for phase in range(3):
        for b in range(count):
            lasting = hi[b] > lo[b]
            if phase == 1:
                event_time[num_events] = lo[b]
                event_delta[num_events] = size[b]
            elif (phase == 0) == lasting:
                event_time[num_events] = hi[b]
                event_delta[num_events] = -size[b]
            else:
                continue
            event_device[num_events] = device[b]
            num_events += 1
    order = np.argsort(event_time, kind="mergesort")
    current = np.zeros(num_devices)
    peak = np.zeros(num_devices)
    for j in range(num_events):
        e = order[j]
        d = event_device[e]
        current[d] += event_delta[e]
        if current[d] > peak[d]:
            peak[d] = current[d]
    return peak


# ---------------------------------------------------------------------- throughput
@njit(cache=True)
def max_load_contribution(
    i: int, placement: np.ndarray, sign: float, load: np.ndarray, best: np.ndarray,
    succ_ptr: np.ndarray, succ_op: np.ndarray, succ_edge: np.ndarray, op_time: np.ndarray, edge_time: np.ndarray, link_class: np.ndarray, is_cpu: np.ndarray,
) -> None:  # fmt: skip
    """Add (``sign`` = 1) or take out (-1) op ``i``'s share of `max_load` under the (n,)
    ``placement`` to the (k,) ``load``: its time on its device and, when it has consumers on
    other devices, each such device's largest edge time from it and the largest of those on its
    own device (CPUs pay no transfer cost). ``best`` is (k,) scratch, all -1 on entry and return."""
    a = placement[i]
    load[a] += sign * op_time[i, a]
    remote = False
    for e in range(succ_ptr[i], succ_ptr[i + 1]):
        d = placement[succ_op[e]]
        if d != a:
            cost = edge_time[succ_edge[e], link_class[a, d]]
            if cost > best[d]:
                best[d] = cost
            remote = True
    if remote:
        send = 0.0
        for d in range(best.shape[0]):
            if best[d] < 0.0:
                continue
            if not is_cpu[d]:
                load[d] += sign * best[d]
            if best[d] > send:
                send = best[d]
            best[d] = -1.0
        if not is_cpu[a]:
            load[a] += sign * send


@njit(cache=True)
def max_load(
    num_ops: int,
    num_devices: int,
    succ_ptr: np.ndarray,
    succ_op: np.ndarray,
    succ_edge: np.ndarray,
    op_time: np.ndarray,
    edge_time: np.ndarray,
    link_class: np.ndarray,
    placement: np.ndarray,
    is_cpu: np.ndarray,
):
    """(load (k,), compute (k,)) of the max-load model (Tarnawski et al., NeurIPS 2020).

    Load of a device = time of its ops + transfer costs: for every op u with consumers on
    other devices, each such device pays the largest edge time of u's edges to it on the link
    from u's device, and u's device pays the largest of those; CPUs pay no transfer cost
    (`max_load_contribution` is one op's share). The loop is written out here rather than
    calling `max_load_contribution` per op: that call, inlined or not, made this 2-3x slower
    (10 -> 20-28 us on 256 ops, 12-02).
    """
    k = num_devices
    load = np.zeros(k)
    compute = np.zeros(k)
    best = np.full(k, -1.0)
    for i in range(num_ops):
        a = placement[i]
        t = op_time[i, a]
        load[a] += t
        compute[a] += t
        remote = False
        for e in range(succ_ptr[i], succ_ptr[i + 1]):
            d = placement[succ_op[e]]
            if d != a:
                cost = edge_time[succ_edge[e], link_class[a, d]]
                if cost > best[d]:
                    best[d] = cost
                remote = True
        if remote:
            send = 0.0
            for d in range(k):
                if best[d] < 0.0:
                    continue
                if not is_cpu[d]:
                    load[d] += best[d]
                if best[d] > send:
                    send = best[d]
                best[d] = -1.0
            if not is_cpu[a]:
                load[a] += send
    return load, compute


# ---------------------------------------------------------------------------- bounds
@njit(cache=True)
def heads_and_tails(succ_ptr: np.ndarray, succ_op: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(head, tail), both (n,): per op of a DAG whose ids are in topological order, the
    heaviest path of ``weight`` that ends just before it and the one that starts just after it
    (the op's own weight in neither)."""
    n = weight.shape[0]
    head = np.zeros(n)
    tail = np.zeros(n)
    for i in range(n):
        end = head[i] + weight[i]
        for e in range(succ_ptr[i], succ_ptr[i + 1]):
            consumer = succ_op[e]
            if end > head[consumer]:
                head[consumer] = end
    for i in range(n - 1, -1, -1):
        for e in range(succ_ptr[i], succ_ptr[i + 1]):
            consumer = succ_op[e]
            after = weight[consumer] + tail[consumer]
            if after > tail[i]:
                tail[i] = after
    return head, tail


@njit(cache=True)
def first_out_of_range(placement: np.ndarray, num_devices: int) -> int:
    """Index of the first entry outside ``0..num_devices-1``, or -1."""
    for i in range(placement.shape[0]):
        if placement[i] < 0 or placement[i] >= num_devices:
            return i
    return NONE


@njit(cache=True)
def holds_every_buffer(
    placement: np.ndarray,
    num_devices: int,
    resident: np.ndarray,
    held: np.ndarray,
    edge_src: np.ndarray,
    edge_dst: np.ndarray,
    output_bytes: np.ndarray,
    capacity: np.ndarray,
) -> bool:
    """Whether every device can hold at once its ops' resident bytes, their ``held`` bytes
    (working memory and output) and a received copy of each cross-device edge's output.

    Shapes: placement, resident, held, output_bytes (n,); edge_src, edge_dst (m,); capacity
    (k,). The three sums are formed per device in op and edge order and added in that order,
    as `rlplace.simulate.Simulator._surely_fits` defines them.
    """
    on_device = np.zeros(num_devices)
    buffers = np.zeros(num_devices)
    received = np.zeros(num_devices)
    for i in range(placement.shape[0]):
        on_device[placement[i]] += resident[i]
        buffers[placement[i]] += held[i]
    for e in range(edge_src.shape[0]):
        a = placement[edge_src[e]]
        b = placement[edge_dst[e]]
        if a != b:
            received[b] += output_bytes[edge_src[e]]
    for d in range(num_devices):  # noqa: SIM110 (numba compiles the loop, not all() over a generator)
        if on_device[d] + buffers[d] + received[d] > capacity[d]:
            return False
    return True
