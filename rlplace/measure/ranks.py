"""The rank side of a distributed measurement: the job, the point-to-point transport, timed steps.

A measurement job (a JSON-able dict, `MeasureJob`) names the model recipe and one or more
node -> device assignments. Every rank rebuilds the model, traces it, and for each
assignment runs warm-up and timed training steps of its own segments, sending activations
forward and gradients back with point-to-point messages. The step time of a step is the
slowest rank's (ranks start each step together after a barrier); rank 0 returns the result.
With ``trace`` set, every rank also records one more step span by span
(`rlplace.measure.timeline`) and rank 0 returns all ranks' spans.

The process entry point is `rlplace.measure.distributed`, the launcher `rlplace.measure.launch`.
"""

from __future__ import annotations

import datetime
import os
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from rlplace.errors import RlplaceError
from rlplace.measure.plan import Message, SegmentPlan
from rlplace.measure.program import ValueInfo
from rlplace.measure.timeline import Span, StepRecorder

BACKENDS = ("gloo", "nccl")


@dataclass
class MeasureJob:
    """Everything a rank needs, JSON-serializable.

    Attributes:
        model: `rlplace.measure.recipe.ModelRecipe` as a dict.
        assignments: node/placeholder name -> device, one mapping per placement to time.
        num_devices: ranks (= logical devices) taking part.
        backend: ``gloo`` (CPU tensors) or ``nccl`` (rank r on ``cuda:<local rank>``).
        steps: timed steps per assignment and round; warmup: untimed steps before them.
        rounds: passes over all assignments; each pass times every assignment again (after
            its warm-up), so slow drift of a shared host's speed spreads over all of them
            instead of favouring those timed first. Step times of all rounds are pooled.
        threads: ``torch.set_num_threads`` per rank (0 keeps torch's default).
        optimizer: adam, sgd or sgd-momentum.
        timeout_s: limit for the whole job; also the collective timeout of each rank.
        return_state: put parameters and gradients after the last step in the result
            (small models, for tests).
        fault: test hook: ``{"rank": r, "kind": "exit" | "hang"}`` makes rank r die or hang
            at its first timed step.
        trace: after the timed steps of the last round, run one more step recording its spans
            on every rank (`rlplace.measure.timeline`); rank 0's result then carries them.
        orders: per assignment, the order the forward nodes run in
            (`rlplace.measure.assign.schedule_order`; empty list or none at all: the
            program's order).
    """

    model: dict[str, Any]
    assignments: list[dict[str, int]]
    num_devices: int
    backend: str = "gloo"
    steps: int = 10
    warmup: int = 3
    rounds: int = 1
    threads: int = 1
    optimizer: str = "adam"
    timeout_s: float = 120.0
    return_state: bool = False
    fault: dict[str, Any] = field(default_factory=dict)
    kind: str = "measure"
    trace: bool = False
    orders: list[list[str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)



class DistTransport:
    """Point-to-point messages in the fixed order of `SegmentPlan.messages`.

    Sends are asynchronous (``isend``); a receive takes messages from its source in the
    order that source sends them, parking those asked for later, so the transport also works
    on backends that match messages in order (NCCL) and needs no tags.
    """

    def __init__(self, plan: SegmentPlan, rank: int, values: Mapping[str, ValueInfo]) -> None:
        self.rank = rank
        self.values = values
        self.incoming: dict[int, list[Message]] = {}
        for message in plan.messages:
            if message.dst == rank:
                self.incoming.setdefault(message.src, []).append(message)
        self.queues: dict[int, deque[Message]] = {}
        self.mailbox: dict[Message, torch.Tensor] = {}
        self.pending: list[tuple[Any, torch.Tensor]] = []
        self.reset()

    def reset(self) -> None:
        """Expect a new step's messages."""
        self.queues = {src: deque(messages) for src, messages in self.incoming.items()}
        self.mailbox = {}

    def send(self, message: Message, tensor: torch.Tensor) -> None:
        wire = tensor.contiguous()
        if wire.dtype == torch.bool:
            wire = wire.to(torch.uint8)
        self.pending.append((dist.isend(wire, dst=message.dst), wire))

    def recv(self, message: Message, info: ValueInfo, device: torch.device) -> torch.Tensor:
        queue = self.queues.get(message.src)
        while message not in self.mailbox:
            if not queue:
                raise RuntimeError(f"rank {self.rank} waits for {message}, which the schedule never sends")
            upcoming = queue.popleft()
            upcoming_info = self.values[upcoming.value]
            wire_dtype = torch.uint8 if upcoming_info.dtype == torch.bool else upcoming_info.dtype
            buffer = torch.empty(upcoming_info.shape, dtype=wire_dtype, device=device)
            dist.recv(buffer, src=upcoming.src)
            self.mailbox[upcoming] = buffer.to(torch.bool) if upcoming_info.dtype == torch.bool else buffer
        return self.mailbox.pop(message)

    def flush(self) -> None:
        for work, _ in self.pending:
            work.wait()
        self.pending.clear()
        left = sum(len(queue) for queue in self.queues.values()) + len(self.mailbox)
        if left:
            raise RuntimeError(f"rank {self.rank} ended a step with {left} messages not received")
        self.reset()


def rank_device(backend: str, local_rank: int) -> torch.device:
    """CPU for gloo; ``cuda:<local rank>`` for NCCL."""
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise RlplaceError("backend nccl needs CUDA GPUs; use --backend gloo on CPUs")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def run_rank(job: MeasureJob, rank: int, world_size: int, local_rank: int) -> dict[str, Any] | None:
    """Join the process group, time every assignment, return the result on rank 0."""
    from rlplace.measure.program import export_forward
    from rlplace.measure.recipe import ModelRecipe

    if job.threads > 0:
        torch.set_num_threads(job.threads)
    if world_size != job.num_devices:
        raise RlplaceError(f"the job places on {job.num_devices} devices but {world_size} ranks were started; start one rank per device")
    device = rank_device(job.backend, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(job.backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=max(1.0, job.timeout_s)))
    try:
        module, inputs = ModelRecipe.from_json(job.model).build()
        program = export_forward(module, inputs)
        step_times: list[list[float]] = [[] for _ in job.assignments]
        cpu_waits: list[list[float]] = [[] for _ in job.assignments]
        cpu_times: list[list[list[float]]] = [[] for _ in job.assignments]
        results: list[dict[str, Any]] = []
        rounds = max(1, job.rounds)
        for round_index in range(rounds):
            last_round = round_index == rounds - 1
            for index, assignment in enumerate(job.assignments):
                order = job.orders[index] if index < len(job.orders) and job.orders[index] else None
                timing = time_assignment(
                    program, assignment, rank, world_size, device, steps=job.steps, warmup=job.warmup, optimizer=job.optimizer, fault=job.fault, trace=job.trace and last_round,
                    order=order,
                )  # fmt: skip
                step_times[index].extend(timing.step_times)
                cpu_waits[index].extend(timing.cpu_waits)
                cpu_times[index].append(timing.cpu_times)
                if last_round:
                    results.append(_result_entry(job, timing, step_times[index], cpu_times[index], world_size, device) | {"cpu_waits": cpu_waits[index]})
                dist.barrier()
        return {"results": results, "world_size": world_size, "backend": job.backend, "program": program.source} if rank == 0 else None
    finally:
        dist.destroy_process_group()


def _result_entry(job: MeasureJob, timing: Timing, step_times: list[float], cpu_times: list[list[float]], world_size: int, device: torch.device) -> dict[str, Any]:
    """Rank 0's result for one assignment: pooled step times, per-rank CPU time (mean over
    rounds of each round's median), loss and, when asked, the state after the last step (collective)."""
    worker, plan = timing.worker, timing.plan
    loss = torch.tensor([float(worker.loss.detach()) if worker.loss is not None else float("-inf")], dtype=torch.float64)
    if job.backend == "nccl":
        loss = loss.to(device)
    dist.all_reduce(loss, op=dist.ReduceOp.MAX)
    entry: dict[str, Any] = {
        "step_times": step_times,
        "cpu_times": [sum(values) / len(values) for values in zip(*cpu_times, strict=True)],
        "loss": float(loss.item()),
        "segments": len(plan.segments),
        "messages": len(plan.messages),
    }
    if timing.spans is not None:
        gathered: list[Any] = [None] * world_size
        dist.all_gather_object(gathered, [span.to_json() for span in timing.spans])
        entry["trace"] = gathered
    if job.return_state:
        states: list[Any] = [None] * world_size
        dist.all_gather_object(states, _state_json(worker.state()))
        entry["state"] = _merge_states(states)
    return entry


@dataclass
class Timing:
    """Timed steps of one assignment, the same on every rank.

    Attributes:
        step_times: per timed step, the slowest rank's wall time (s).
        cpu_times: per rank, the median main-thread CPU time of a step (s).
        cpu_waits: per timed step, the longest time (s) any rank's main thread was ready to run
            but waited for a CPU (Linux ``schedstat`` run delay; empty elsewhere): how much
            other processes on the host stretched the step.
        worker: this rank's worker after the last step.
        plan: the segment plan.
        spans: this rank's spans of one traced step after the timed ones (None: not traced).
    """

    step_times: list[float]
    cpu_times: list[float]
    worker: Any
    plan: SegmentPlan
    spans: list[Span] | None = None
    cpu_waits: list[float] = field(default_factory=list)


def time_assignment(
    program: Any,
    assignment: Mapping[str, int],
    rank: int,
    world_size: int,
    device: torch.device,
    *,
    steps: int,
    warmup: int,
    optimizer: str = "adam",
    fault: Mapping[str, Any] | None = None,
    trace: bool = False,
    order: Sequence[str] | None = None,
) -> Timing:
    """Every rank runs ``warmup`` + ``steps`` training steps of its segments (collective);
    with ``trace``, one more step, recorded span by span and not timed. ``order``: the order
    the forward nodes run in (`rlplace.measure.plan.plan_segments`)."""
    from rlplace.measure.executor import DeviceWorker, TracingTransport
    from rlplace.measure.plan import plan_segments

    plan = plan_segments(program, assignment, world_size, order)
    transport = DistTransport(plan, rank, program.values)
    worker = DeviceWorker(program, plan, rank, device, transport, optimizer=optimizer)
    times: list[float] = []
    cpu_times: list[float] = []
    waits: list[float] = []
    for step in range(warmup + steps):
        if step == warmup and fault and fault.get("rank") == rank:
            _inject_fault(str(fault.get("kind", "exit")))
        dist.barrier()
        started, cpu_started, wait_started = time.perf_counter(), time.thread_time(), run_delay()
        run_step(worker, plan)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - started)
            cpu_times.append(time.thread_time() - cpu_started)
            waits.append(run_delay() - wait_started)
    slowest = torch.tensor(times, dtype=torch.float64)
    busy = torch.zeros(world_size, dtype=torch.float64)
    busy[rank] = float(sorted(cpu_times)[len(cpu_times) // 2])
    if device.type == "cuda":
        slowest, busy = slowest.to(device), busy.to(device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    dist.all_reduce(busy, op=dist.ReduceOp.SUM)
    waited = torch.tensor(waits, dtype=torch.float64)
    if device.type == "cuda":
        waited = waited.to(device)
    dist.all_reduce(waited, op=dist.ReduceOp.MAX)
    spans = None
    if trace:
        recorder = StepRecorder()
        worker.transport = TracingTransport(transport, recorder)
        dist.barrier()
        run_step(worker, plan, recorder)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        worker.transport = transport
        spans = recorder.spans
    return Timing(slowest.cpu().tolist(), busy.cpu().tolist(), worker, plan, spans, [w for w in waited.cpu().tolist() if w == w])


def run_delay() -> float:
    """Seconds this thread has spent ready to run but waiting for a CPU (Linux
    ``/proc/thread-self/schedstat``, second field); NaN where unavailable."""
    try:
        with open("/proc/thread-self/schedstat", encoding="ascii") as stats:
            return int(stats.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return float("nan")


def run_step(worker: Any, plan: SegmentPlan, recorder: StepRecorder | None = None) -> None:
    """One training step of this rank's segments (forward, write-backs, backward, update);
    ``recorder`` records each phase as a span (its transport records the messages)."""
    if recorder is None:
        worker.begin()
        for segment in plan.segments:
            if segment.device == worker.index:
                worker.forward(segment)
        worker.write_back()
        for segment in reversed(plan.segments):
            if segment.device == worker.index:
                worker.backward(segment)
        worker.finish()
        return
    with recorder.span("step", "step"):
        with recorder.span("begin", "compute"):
            worker.begin()
        for segment in plan.segments:
            if segment.device == worker.index:
                with recorder.span(_segment_name("forward", segment), "compute", nodes=len(segment.nodes), first=segment.nodes[0] if segment.nodes else ""):
                    worker.forward(segment)
        worker.write_back()
        for segment in reversed(plan.segments):
            if segment.device == worker.index:
                with recorder.span(_segment_name("backward", segment), "compute", nodes=len(segment.nodes)):
                    worker.backward(segment)
        with recorder.span("finish: parameter gradients, optimizer, flush", "compute"):
            worker.finish()


def _segment_name(phase: str, segment: Any) -> str:
    return f"{phase} loss" if segment.is_loss else f"{phase} segment {segment.index} ({len(segment.nodes)} nodes)"


def _inject_fault(kind: str) -> None:
    if kind == "hang":
        while True:
            time.sleep(3600)
    os._exit(3)


def _state_json(state: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, dict[str, list[Any]]]:
    return {group: {name: tensor.double().tolist() for name, tensor in tensors.items()} for group, tensors in state.items()}


def _merge_states(states: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {"parameters": {}, "grads": {}, "buffers": {}}
    for state in states:
        for group, tensors in state.items():
            merged[group].update(tensors)
    return merged
