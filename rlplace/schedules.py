"""Pipeline schedules of the ``pipelined`` objective: the order a device runs micro-batches in.

A schedule is handed to the event loop (`rlplace._simkernel`) as an `Order`: every op is in a
*lane* (a model chunk's forward ops or its backward ops), every device runs the *slots*
(lane, micro-batch) of its lanes in a priority order, and *gates* hold a slot back until an
earlier slot of the same device has finished. Among ready instances a device starts the one
of the earliest slot (ties: the op priority, topological index by default); an instance of a
later slot may start while an earlier slot waits for its inputs (the device never idles
while it has ready, ungated work), and gates are what bound the micro-batches in flight.

Terms (n ops, k devices, M micro-batches; op ids are a topological order):

- *phase*: forward (``not is_backward``) or backward (``is_backward``: gradient and
  optimizer ops; the graph does not tell them apart, so optimizer ops run once per
  micro-batch, as the whole ``pipelined`` model does).
- *chunk*: a maximal run of consecutive forward ops (forward ops in id order, backward ops
  skipped) placed on one device; a device's chunks are numbered ``0..v_d - 1`` in that order.
  A backward op belongs to the chunk of its device that it reads a forward output from (the
  highest such chunk), else to the chunk of a backward input on its device (the highest),
  else to its device's last chunk.
- *stage* of a device: the rank of its first forward op among the devices that hold forward
  ops (``p`` of them, ``r = 0..p - 1``); a device without forward ops has no warm-up.

Schedules (a device with one chunk, ``v_d = 1``, is one pipeline stage):

- ``gpipe``: every forward slot before every backward slot, micro-batches in order,
  F0 F1 ... F(M-1) B0 ... B(M-1), no gates. This is the order the simulator has always used
  (placement-independent, one forward and one backward lane: chunks play no part).
- ``1f1b`` (PipeDream-Flush; Megatron-LM's and DeepSpeed's default): all forward ops of a
  device form one lane, all backward ops one. Stage r does ``w = min(M, p - r)`` forwards,
  then alternates one backward, one forward, then the remaining backwards:
  F0 .. F(w-1) B0 Fw B1 F(w+1) ... B(M-1). Gate: forward ``j + w`` waits until every
  backward op of micro-batch ``j`` on the device has finished, so at most ``w <= p``
  micro-batches are in flight on a stage (their forward started, their backward not done),
  whatever M is.
- ``interleaved-1f1b`` (Megatron-LM virtual stages): a device with ``v_d`` chunks runs the
  virtual micro-batches (chunk, micro-batch), forward in rounds of ``p`` micro-batches
  (round q: chunk 0 of its micro-batches, then chunk 1, ...), backward in the same rounds with
  chunks last to first; warm-up ``w = (v_d - 1) p + 2 (p - r - 1) + 1`` forwards (Megatron-LM's
  count, capped at ``v_d M``), then 1F1B over the virtual micro-batches, with the gate
  "forward k waits for backward k - w" wherever backward k - w is of an earlier micro-batch
  (a gate within one micro-batch could deadlock; it is left out). A device with one chunk
  runs exactly ``1f1b``, so on a placement where every device holds one contiguous block
  (not chunked) ``interleaved-1f1b`` equals ``1f1b``. A device whose blocks are not
  contiguous has several chunks; each is scheduled as a virtual stage.

Every gate goes from a micro-batch to a later one and data edges stay within one
micro-batch, so no schedule deadlocks. With M = 1 every schedule is the ``latency`` order
(one slot per device, no phases), so ``pipelined`` with one micro-batch equals ``latency``
whatever the schedule.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

NONE = -1


class Order(NamedTuple):
    """A schedule as the event loop takes it (see `rlplace._simkernel`). L lanes, k devices, M micro-batches.

    op_lane: (n,) int64, lane of each op (forward chunk c: c; backward chunk c: ``L / 2 + c``).
    slot_pos: (k, L, M) int64, position of slot (lane, micro-batch) in the device's order.
    slot_mb: (k, L * M) int64, micro-batch of the slot at each position.
    lane_ptr: (k * L + 1,) int64 and lane_ops: (n,) int64, the ops of lane l on device d are
        ``lane_ops[lane_ptr[d * L + l]:lane_ptr[d * L + l + 1]]`` (empty when there are no gates).
    gate_to: (k * L * M,) int64, group held back by each group until it finishes, -1 for
        none; an empty array when the schedule has no gates.
    """

    op_lane: np.ndarray
    slot_pos: np.ndarray
    slot_mb: np.ndarray
    lane_ptr: np.ndarray
    lane_ops: np.ndarray
    gate_to: np.ndarray


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def gpipe_order(is_backward: np.ndarray, microbatches: int, num_devices: int) -> Order:
    """The placement-independent GPipe order; with one micro-batch, the ``latency`` order."""
    n, k, m = is_backward.shape[0], num_devices, microbatches
    lanes = 1 if m == 1 else 2
    op_lane = np.zeros(n, dtype=np.int64) if m == 1 else is_backward.astype(np.int64)
    positions = np.arange(lanes * m, dtype=np.int64)
    slot_pos = np.ascontiguousarray(np.broadcast_to(positions.reshape(1, lanes, m), (k, lanes, m)))
    slot_mb = np.ascontiguousarray(np.broadcast_to(positions % m, (k, lanes * m)))
    empty = np.empty(0, dtype=np.int64)
    return Order(*(_readonly(a) for a in (op_lane, slot_pos, slot_mb, np.zeros(k * lanes + 1, dtype=np.int64), empty, empty.copy())))


def pipeline_order(
    schedule: str,
    placement: np.ndarray,
    is_backward: np.ndarray,
    pred_ptr: np.ndarray,
    pred_op: np.ndarray,
    microbatches: int,
    num_devices: int,
) -> Order:
    """The order of ``schedule`` for ``placement`` ((n,) int64 device per op).

    ``pred_ptr``/``pred_op``: predecessor CSR (the producers of op i are
    ``pred_op[pred_ptr[i]:pred_ptr[i + 1]]``), used to give backward ops their chunk.
    """
    if schedule == "gpipe" or microbatches == 1:
        return gpipe_order(is_backward, microbatches, num_devices)
    interleaved = schedule == "interleaved-1f1b"
    op_chunk, chunks, first_forward = _chunks(placement, is_backward, pred_ptr, pred_op, num_devices, interleaved)
    has_forward = chunks > 0
    stage = np.empty(num_devices, dtype=np.int64)
    stage[np.argsort(first_forward, kind="stable")] = np.arange(num_devices)
    chunk_max = int(max(1, chunks.max(initial=1)))
    lanes = 2 * chunk_max
    op_lane = np.where(is_backward, chunk_max + op_chunk, op_chunk).astype(np.int64)
    lane_key = placement * lanes + op_lane
    lane_ops = np.argsort(lane_key, kind="stable").astype(np.int64)
    lane_ptr = np.searchsorted(lane_key[lane_ops], np.arange(num_devices * lanes + 1)).astype(np.int64)
    slot_pos, slot_mb, gate_to = _slots(
        np.maximum(chunks, 1), has_forward, stage, int(has_forward.sum()), microbatches, chunk_max, np.diff(lane_ptr), interleaved
    )
    return Order(op_lane, slot_pos, slot_mb, lane_ptr, lane_ops, gate_to)


@njit(cache=True)
def _chunks(placement: np.ndarray, is_backward: np.ndarray, pred_ptr: np.ndarray, pred_op: np.ndarray, num_devices: int, split: bool):
    """(op_chunk (n,), chunks (k,), first_forward (k,)): device-local chunk of every op, chunks per
    device, first forward op per device (n when none). ``split=False``: one chunk per device
    that holds forward ops (the ``1f1b`` view)."""
    n = placement.shape[0]
    chunk = np.zeros(n, dtype=np.int64)
    chunks = np.zeros(num_devices, dtype=np.int64)
    first = np.full(num_devices, n, dtype=np.int64)
    last_device = NONE
    for i in range(n):
        if is_backward[i]:
            continue
        d = placement[i]
        if first[d] == n:
            first[d] = i
            chunks[d] = 1
        elif split and d != last_device:
            chunks[d] += 1
        last_device = d
        chunk[i] = chunks[d] - 1
    if not split:
        return chunk, chunks, first
    for i in range(n):
        if not is_backward[i]:
            continue
        d = placement[i]
        from_forward = NONE
        from_backward = NONE
        for e in range(pred_ptr[i], pred_ptr[i + 1]):
            u = pred_op[e]
            if placement[u] != d:
                continue
            if is_backward[u]:
                from_backward = max(from_backward, chunk[u])
            else:
                from_forward = max(from_forward, chunk[u])
        if from_forward != NONE:
            chunk[i] = from_forward
        elif from_backward != NONE:
            chunk[i] = from_backward
        else:
            chunk[i] = max(chunks[d] - 1, 0)
    return chunk, chunks, first


@njit(cache=True)
def _virtual(index: int, chunks: int, microbatches: int, round_size: int, backward: bool):
    """(chunk, micro-batch) of virtual micro-batch ``index``: rounds of ``round_size`` micro-batches,
    chunk by chunk within a round (last chunk first for the backward)."""
    round_span = chunks * round_size
    q = index // round_span
    first_mb = q * round_size
    size = min(round_size, microbatches - first_mb)
    offset = index - q * round_span
    c = offset // size
    mb = first_mb + offset - c * size
    if backward:
        c = chunks - 1 - c
    return c, mb


@njit(cache=True)
def _slots(
    chunks: np.ndarray,
    has_forward: np.ndarray,
    stage: np.ndarray,
    num_stages: int,
    microbatches: int,
    chunk_max: int,
    lane_count: np.ndarray,
    interleaved: bool,
):
    """(slot_pos (k, L, M), slot_mb (k, L * M), gate_to (k * L * M,)) of the 1F1B family (module doc)."""
    k = chunks.shape[0]
    m = microbatches
    lanes = 2 * chunk_max
    p = max(num_stages, 1)
    slot_pos = np.zeros((k, lanes, m), dtype=np.int64)
    slot_mb = np.zeros((k, lanes * m), dtype=np.int64)
    gate_to = np.full(k * lanes * m, NONE, dtype=np.int64)
    for d in range(k):
        v = chunks[d]
        total = v * m
        round_size = p if interleaved else m
        if not has_forward[d]:
            warmup = 0
        elif v == 1:
            warmup = min(total, p - stage[d])
        else:
            warmup = min(total, (v - 1) * p + 2 * (p - stage[d] - 1) + 1)
        for index in range(total):
            c, mb = _virtual(index, v, m, round_size, False)
            pos = index if index < warmup else 2 * index - warmup + 1
            slot_pos[d, c, mb] = pos
            slot_mb[d, pos] = mb
            c, mb = _virtual(index, v, m, round_size, True)
            pos = warmup + 2 * index if index < total - warmup else total + index
            slot_pos[d, chunk_max + c, mb] = pos
            slot_mb[d, pos] = mb
        for index in range(warmup, total):
            c, mb = _virtual(index, v, m, round_size, False)
            cb, mbb = _virtual(index - warmup, v, m, round_size, True)
            source_lane = d * lanes + chunk_max + cb
            target_lane = d * lanes + c
            if mbb < mb and lane_count[source_lane] > 0 and lane_count[target_lane] > 0:
                gate_to[source_lane * m + mbb] = target_lane * m + mb
    return slot_pos, slot_mb, gate_to
