"""One rank per device under ``torch.distributed``: the worker, its transport, the launcher.

A measurement job (a JSON-able dict, `MeasureJob`) names the model recipe and one or more
node -> device assignments. Every rank rebuilds the model, traces it, and for each
assignment runs warm-up and timed training steps of its own segments, sending activations
forward and gradients back with point-to-point messages. The step time of a step is the
slowest rank's (ranks start each step together after a barrier); rank 0 writes the result.

Start ranks:
    * on one host: `launch_local` starts ``python -m rlplace.measure.distributed`` once per
      rank as subprocesses in their own process groups; a rank that dies or a job that runs
      past its timeout gets every rank killed and reaped, and a clear `MeasureFailure`;
    * across hosts: ``torchrun --nnodes N --nproc-per-node 1 --node-rank R --master-addr A
      --master-port P -m rlplace.measure.distributed --job JOB.json --out DIR`` on each host
      (every host needs the job file and the model's code; rank 0 writes DIR/result.json).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from rlplace.errors import RlplaceError
from rlplace.measure.awake import cores_kept_awake
from rlplace.measure.plan import Message, SegmentPlan
from rlplace.measure.program import ValueInfo

BACKENDS = ("gloo", "nccl")
RESULT_FILE = "result.json"
NICE_VARIABLE = "RLPLACE_RANK_NICE"
#: The launcher's pid, so that a rank exits when the launcher is gone (`rlplace.interrupt.die_with_parent`).
LAUNCHER_VARIABLE = "RLPLACE_LAUNCHER_PID"
#: glibc settings for the ranks: keep freed memory (up to 32 MB blocks) for reuse instead of
#: unmapping it, so an activation does not page-fault afresh every step; this is what
#: PyTorch's caching allocator does on GPUs. Variables already set are left alone.
CACHING_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30), "MALLOC_TOP_PAD_": str(64 << 20)}


class MeasureFailure(RlplaceError):
    """A measurement that crashed, hung or timed out; the message says which rank and why."""


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


# ============================================================================ rank side
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
        cpu_times: list[list[list[float]]] = [[] for _ in job.assignments]
        results: list[dict[str, Any]] = []
        rounds = max(1, job.rounds)
        for round_index in range(rounds):
            last_round = round_index == rounds - 1
            for index, assignment in enumerate(job.assignments):
                timing = time_assignment(program, assignment, rank, world_size, device, steps=job.steps, warmup=job.warmup, optimizer=job.optimizer, fault=job.fault)
                step_times[index].extend(timing.step_times)
                cpu_times[index].append(timing.cpu_times)
                if last_round:
                    results.append(_result_entry(job, timing, step_times[index], cpu_times[index], world_size, device))
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
        worker: this rank's worker after the last step.
        plan: the segment plan.
    """

    step_times: list[float]
    cpu_times: list[float]
    worker: Any
    plan: SegmentPlan


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
) -> Timing:
    """Every rank runs ``warmup`` + ``steps`` training steps of its segments (collective)."""
    from rlplace.measure.executor import DeviceWorker
    from rlplace.measure.plan import plan_segments

    plan = plan_segments(program, assignment, world_size)
    transport = DistTransport(plan, rank, program.values)
    worker = DeviceWorker(program, plan, rank, device, transport, optimizer=optimizer)
    times: list[float] = []
    cpu_times: list[float] = []
    for step in range(warmup + steps):
        if step == warmup and fault and fault.get("rank") == rank:
            _inject_fault(str(fault.get("kind", "exit")))
        dist.barrier()
        started, cpu_started = time.perf_counter(), time.thread_time()
        run_step(worker, plan)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - started)
            cpu_times.append(time.thread_time() - cpu_started)
    slowest = torch.tensor(times, dtype=torch.float64)
    busy = torch.zeros(world_size, dtype=torch.float64)
    busy[rank] = float(sorted(cpu_times)[len(cpu_times) // 2])
    if device.type == "cuda":
        slowest, busy = slowest.to(device), busy.to(device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    dist.all_reduce(busy, op=dist.ReduceOp.SUM)
    return Timing(slowest.cpu().tolist(), busy.cpu().tolist(), worker, plan)


def run_step(worker: Any, plan: SegmentPlan) -> None:
    """One training step of this rank's segments (forward, write-backs, backward, update)."""
    worker.begin()
    for segment in plan.segments:
        if segment.device == worker.index:
            worker.forward(segment)
    worker.write_back()
    for segment in reversed(plan.segments):
        if segment.device == worker.index:
            worker.backward(segment)
    worker.finish()


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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry of one rank: ``python -m rlplace.measure.distributed --job JOB --out DIR``.

    Rank, world size and the rendezvous come from the environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) as torchrun and `launch_local` set them.
    """
    parser = argparse.ArgumentParser(prog="python -m rlplace.measure.distributed", description="one rank of a distributed step-time measurement")
    parser.add_argument("--job", required=True, help="job JSON written by rlplace measure")
    parser.add_argument("--out", required=True, help="folder for result.json (rank 0) and error-<rank>.txt")
    args = parser.parse_args(argv)
    from rlplace.interrupt import die_with_parent

    launcher = os.environ.get(LAUNCHER_VARIABLE)
    die_with_parent(int(launcher) if launcher else None)  # a launcher killed by any signal leaves no orphaned rank
    _apply_priority()
    rank = int(os.environ.get("RANK", "0"))
    out = Path(args.out)
    try:
        data = json.loads(Path(args.job).read_text(encoding="utf-8"))
        world_size, local_rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
        if data.get("kind") == "calibrate":
            from rlplace.measure.calibrate import run_calibration_rank

            result = run_calibration_rank(data, rank, world_size, local_rank)
        else:
            result = run_rank(MeasureJob(**data), rank, world_size, local_rank)
        if result is not None:
            out.mkdir(parents=True, exist_ok=True)
            temporary = out / f".{RESULT_FILE}.tmp"
            temporary.write_text(json.dumps(result), encoding="utf-8")
            temporary.replace(out / RESULT_FILE)
        return 0
    except BaseException as exc:  # report any failure of this rank to the launcher, then fail
        out.mkdir(parents=True, exist_ok=True)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        (out / f"error-{rank}.txt").write_text(f"{type(exc).__name__}: {message}\n{traceback.format_exc()}", encoding="utf-8")
        return 1


def _apply_priority() -> None:
    """Raise this rank's CPU priority when the launcher asks (``RLPLACE_RANK_NICE``).

    Threads started later (torch's, gloo's) inherit it; the rank's session (its own, see
    `launch_job`) gets it too, since with autogroup scheduling the kernel shares the CPU
    between sessions first. A negative value needs root; it keeps other processes on a shared
    host from stretching measured step times, as if each rank had its core to itself (what
    the simulator assumes of a device).
    """
    value = os.environ.get(NICE_VARIABLE)
    if not value:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, int(value))
        autogroup = Path("/proc/self/autogroup")
        if autogroup.exists():  # with autogroup scheduling, nice only ranks threads inside one session
            autogroup.write_text(value, encoding="ascii")
    except (OSError, ValueError) as exc:
        print(f"rlplace: cannot set nice {value}: {exc}", file=sys.stderr)


# ============================================================================ launcher
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def launch_local(job: MeasureJob, *, nice: int | None = None, python: str | None = None, keep_awake: bool | None = None) -> dict[str, Any]:
    """Run a measurement with one local subprocess per rank; rank 0's result (`launch_job`)."""
    return launch_job(job.to_json(), job.num_devices, timeout_s=job.timeout_s, threads=job.threads, nice=nice, python=python, keep_awake=keep_awake)


def launch_job(
    job: Mapping[str, Any],
    num_ranks: int,
    *,
    timeout_s: float,
    threads: int = 1,
    nice: int | None = None,
    python: str | None = None,
    keep_awake: bool | None = None,
    module: str = "rlplace.measure.distributed",
) -> dict[str, Any]:
    """Run ``job`` (a JSON-able dict) with one local subprocess per rank; return rank 0's result.

    ``module`` is the rank entry point (``python -m MODULE --job JOB --out DIR``, with the
    ``main`` contract of this module: rank 0 writes DIR/result.json, a failing rank
    DIR/error-<rank>.txt); `rlplace.runtime.worker` runs pipelines through it.

    ``nice`` sets the ranks' CPU priority (negative values need root; see `_apply_priority`).
    ``keep_awake`` keeps the host's cores from halting while the ranks run
    (`rlplace.measure.awake`); None turns it on for gloo jobs, whose ranks are CPU devices.

    Raises:
        MeasureFailure: a rank exited with an error or a signal, or the job ran past
            ``timeout_s``. Every rank is killed (its whole process group) and reaped before
            this returns or raises.
    """
    if keep_awake is None:
        keep_awake = job.get("backend", "gloo") == "gloo"
    with tempfile.TemporaryDirectory(prefix="rlplace-measure-") as folder, cores_kept_awake(keep_awake):
        job_file = Path(folder) / "job.json"
        job_file.write_text(json.dumps(dict(job)), encoding="utf-8")
        out = Path(folder) / "out"
        port = free_port()
        processes: list[subprocess.Popen[bytes]] = []
        try:
            for rank in range(num_ranks):
                environment = {
                    **os.environ,
                    "RANK": str(rank),
                    "LOCAL_RANK": str(rank),
                    "WORLD_SIZE": str(num_ranks),
                    "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": str(port),
                    LAUNCHER_VARIABLE: str(os.getpid()),
                }
                if threads > 0:
                    environment["OMP_NUM_THREADS"] = str(threads)
                for variable, value in CACHING_MALLOC.items():
                    environment.setdefault(variable, value)
                if nice is not None:
                    environment[NICE_VARIABLE] = str(nice)
                command = [python or sys.executable, "-m", module, "--job", str(job_file), "--out", str(out)]
                with (Path(folder) / f"stderr-{rank}.txt").open("wb") as stderr:  # a file: a full pipe would block the rank
                    processes.append(subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True))
            _wait(processes, timeout_s, out)
        finally:
            stop_processes(processes)
        result_file = out / RESULT_FILE
        if not result_file.is_file():
            raise MeasureFailure("the ranks exited without a result from rank 0")
        return json.loads(result_file.read_text(encoding="utf-8"))


def _wait(processes: Sequence[subprocess.Popen[bytes]], timeout_s: float, out: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        codes = [process.poll() for process in processes]
        failed = [(rank, code) for rank, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            raise MeasureFailure(_failure_message(failed, out))
        if all(code == 0 for code in codes):
            return
        if time.monotonic() > deadline:
            running = [rank for rank, code in enumerate(codes) if code is None]
            raise MeasureFailure(f"timed out after {timeout_s:g} s (ranks {running} still running); raise --timeout or check the model and devices")
        time.sleep(0.02)


def _failure_message(failed: Sequence[tuple[int, int]], out: Path) -> str:
    """Name the rank that failed first: a rank that died without reporting (its peers then
    fail with connection errors), else the first rank's own error report."""
    silent, reported = [], []
    for rank, code in failed:
        error_file = out / f"error-{rank}.txt"
        if error_file.is_file():
            reported.append(f"rank {rank} failed: {error_file.read_text(encoding='utf-8').splitlines()[0]}")
        elif code < 0:
            silent.append(f"rank {rank} was killed by signal {signal.Signals(-code).name}{_stderr_tail(out, rank)}")
        else:
            silent.append(f"rank {rank} exited with status {code} without reporting an error{_stderr_tail(out, rank)}")
    reports = silent + reported
    return reports[0] + (f" (and {len(reports) - 1} more ranks failed)" if len(reports) > 1 else "")


def _stderr_tail(out: Path, rank: int) -> str:
    """The last non-empty line the rank wrote to stderr, as ``: <line>`` (or nothing)."""
    path = out.parent / f"stderr-{rank}.txt"
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f": {lines[-1][:300]}" if lines else ""


def stop_processes(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """Kill each process's group (the rank and anything it started) and reap it."""
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


if __name__ == "__main__":
    status = main()
    # Skip interpreter teardown: the result is on disk, and C++ destructors of torch's and
    # gloo's background threads at exit sometimes abort the process ("terminate called
    # without an active exception"), which would read as a crashed rank.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
