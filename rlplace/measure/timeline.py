"""What one rank did during one training step, and that beside the simulated schedule.

A rank records spans (name, category, start and end in seconds of ``time.perf_counter``, a
clock shared by every process of one host) while it runs a traced step: ``compute`` (a
forward or backward segment, the loss, the optimizer update), ``wait`` (a receive, from the
call until the tensor is there) and ``send`` (posting an asynchronous send, and at the end
``flush``, waiting until every send has left). Spans nest: a forward segment contains the
receives of its inputs.

`merged_trace` puts the ranks' spans beside a simulated Chrome trace (`rlplace.trace`) in one
Perfetto file: one process per simulated device (named ``simulated ...``) and one process per
rank (``measured rank<r>``), both starting at time 0 (for the ranks: the earliest step start
over all ranks, after the barrier every step begins with). Torch-free.

Spans are host times: on CUDA devices (NCCL) a compute span ends when its kernels are
queued, not done (the step as a whole is synchronized); across hosts the ranks' clocks are
not aligned. Both caveats leave gloo ranks on one host, the case this was built for, exact.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rlplace.io import write_text_atomic

#: Span categories a rank records.
CATEGORIES = ("compute", "wait", "send", "step")
#: pid of rank r's process in a merged trace is MEASURED_PID_BASE + r (simulated devices keep
#: the small pids `rlplace.trace` gives them).
MEASURED_PID_BASE = 1000


@dataclass(frozen=True)
class Span:
    """One interval of a rank's step.

    Attributes:
        name: what ran (``forward 3``, ``recv value linear_1 from 1`` ...).
        category: one of `CATEGORIES`.
        start, end: seconds on the host's monotonic clock (``time.perf_counter``).
        args: extra JSON-able details (nodes of a segment, bytes of a message).
    """

    name: str
    category: str
    start: float
    end: float
    args: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"args": dict(self.args)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Span:
        return cls(str(data["name"]), str(data["category"]), float(data["start"]), float(data["end"]), dict(data.get("args") or {}))


class StepRecorder:
    """Collects the spans of one rank (``clock`` returns seconds)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.spans: list[Span] = []

    @contextlib.contextmanager
    def span(self, name: str, category: str, **args: Any) -> Iterator[None]:
        started = self.clock()
        try:
            yield
        finally:
            self.spans.append(Span(name, category, started, self.clock(), args))


def measured_events(ranks: Sequence[Sequence[Span]], *, origin: float | None = None) -> list[dict[str, Any]]:
    """Chrome trace events (``ph: "X"``, microseconds) of every rank's spans, one process per rank.

    ``origin`` (s) is time 0; by default the earliest span start over all ranks.
    """
    starts = [span.start for spans in ranks for span in spans]
    zero = origin if origin is not None else (min(starts) if starts else 0.0)
    events: list[dict[str, Any]] = []
    for rank, spans in enumerate(ranks):
        pid = MEASURED_PID_BASE + rank
        events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": f"measured rank{rank}"}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "args": {"sort_index": MEASURED_PID_BASE + rank}})
        events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": 0, "args": {"name": "main thread"}})
        # Outer spans first at equal start, so viewers nest them correctly.
        for span in sorted(spans, key=lambda s: (s.start, -s.end)):
            events.append(
                {
                    "ph": "X",
                    "name": span.name,
                    "cat": span.category,
                    "pid": pid,
                    "tid": 0,
                    "ts": (span.start - zero) * 1e6,
                    "dur": max(span.end - span.start, 0.0) * 1e6,
                    "args": dict(span.args),
                }
            )
    return events


def merged_trace(simulated: Mapping[str, Any], ranks: Sequence[Sequence[Span]], *, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One Chrome trace: the simulated schedule (``simulated``, as `rlplace.trace.chrome_trace`
    returns it; its process names get the prefix ``simulated``) and the measured ranks."""
    events = []
    for event in simulated.get("traceEvents", []):
        event = dict(event)
        if event.get("ph") == "M" and event.get("name") == "process_name":
            event["args"] = {"name": f"simulated {event['args']['name']}"}
        events.append(event)
    events.extend(measured_events(ranks))
    other = dict(simulated.get("otherData") or {})
    other.update(meta or {})
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": other}


def write_merged_trace(path: str | Path, simulated: Mapping[str, Any], ranks: Sequence[Sequence[Span]], *, meta: Mapping[str, Any] | None = None) -> None:
    """Write `merged_trace` as JSON, atomically."""
    write_text_atomic(path, json.dumps(merged_trace(simulated, ranks, meta=meta)))


def process_names(trace: Mapping[str, Any]) -> dict[int, str]:
    """pid -> process name of a Chrome trace (for tests and reports)."""
    return {int(e["pid"]): str(e["args"]["name"]) for e in trace.get("traceEvents", []) if e.get("ph") == "M" and e.get("name") == "process_name"}


def rank_summary(spans: Sequence[Span]) -> dict[str, float]:
    """Seconds of a rank's step: ``step`` (first start to last end), ``wait`` (top-level and
    nested receives), ``compute`` (compute spans minus the waits nested in them), ``send``."""
    if not spans:
        return {"step": 0.0, "wait": 0.0, "compute": 0.0, "send": 0.0}
    total = {category: sum(s.end - s.start for s in spans if s.category == category) for category in ("wait", "send", "compute")}
    nested = 0.0
    for outer in (s for s in spans if s.category == "compute"):
        nested += sum(s.end - s.start for s in spans if s.category in ("wait", "send") and s.start >= outer.start and s.end <= outer.end)
    return {
        "step": max(s.end for s in spans) - min(s.start for s in spans),
        "wait": total["wait"],
        "compute": total["compute"] - nested,
        "send": total["send"],
    }
