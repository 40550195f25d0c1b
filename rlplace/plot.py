"""A picture of a placement: the simulated timeline per device and link, and the memory per device.

The timeline draws every micro-batch of a recorded ``pipelined`` schedule (forward blue,
backward orange, alternate micro-batches lighter so their boundaries show) and one row per
directed link that carried a transfer (green); the title names the model, the cluster, the
objective and, for ``pipelined``, the schedule and the number of micro-batches.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np


def plot_title(decision: Any) -> str:
    """``"MODEL on CLUSTER: METHOD, OBJECTIVE[, SCHEDULE x M micro-batches], step T UNIT"``."""
    result = decision.result
    parts = [f"{decision.graph.name} on {decision.cluster.name}: {decision.method}, {decision.objective}"]
    if decision.objective == "pipelined":
        schedule = getattr(result, "schedule", None) or getattr(decision, "schedule", None) or "gpipe"
        parts.append(f"schedule {schedule} x {int(getattr(result, 'microbatches', 1))} micro-batches")
    parts.append(f"step {float(result.step_time):.4g} {decision.graph.time_unit}")
    return ", ".join(parts)


def placement_figure(decision: Any) -> Any:
    """A matplotlib Figure: left, one row per device with its ops as bars over time (every
    micro-batch when the simulator recorded them) and one row per link with its transfers,
    else the busy time per device; right, peak memory per device against its capacity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = decision.result
    cluster = decision.cluster
    graph = decision.graph
    k = cluster.num_devices
    starts, finishes = _instances(result)
    links = _link_rows(result, cluster.device_names) if starts is not None else {}
    rows = k + len(links)
    figure, (timeline, memory) = plt.subplots(1, 2, figsize=(13, 1.4 + 0.5 * rows), gridspec_kw={"width_ratios": [3, 1]})
    unit = graph.time_unit
    labels = list(cluster.device_names)
    if starts is not None and finishes is not None:
        placement = np.asarray(decision.placement)
        for device in range(k):
            ops = np.flatnonzero(placement == device)
            for mb in range(starts.shape[0]):
                alpha = 1.0 if mb % 2 == 0 else 0.55
                for backward, color in ((False, "tab:blue"), (True, "tab:orange")):
                    chosen = ops[graph.is_backward[ops] == backward]
                    spans = [(float(starts[mb, i]), float(finishes[mb, i] - starts[mb, i])) for i in chosen if finishes[mb, i] > starts[mb, i]]
                    if spans:
                        timeline.broken_barh(spans, (device - 0.4, 0.8), facecolors=color, alpha=alpha)
        for row, (label, spans) in enumerate(links.items(), start=k):
            timeline.broken_barh(spans, (row - 0.3, 0.6), facecolors="tab:green")
            labels.append(label)
        timeline.set_xlabel(f"time ({unit}); blue forward, orange backward, green transfers; lighter = odd micro-batches")
    else:
        timeline.barh(range(k), result.busy_time, color="tab:blue")
        timeline.set_xlabel(f"busy time ({unit})")
    timeline.set_title(plot_title(decision), fontsize="medium")
    timeline.set_yticks(range(rows), labels)
    timeline.invert_yaxis()
    capacity = np.where(np.isfinite(result.capacity), result.capacity, np.nan)
    gib = 2.0**30
    memory.barh(range(k), result.peak_memory / gib, color=["tab:red" if o > 0 else "tab:green" for o in result.overflow_bytes])
    memory.scatter(capacity / gib, range(k), marker="|", s=300, color="black", label="capacity")
    memory.set_ylim(rows - 0.5, -0.5)
    memory.set_yticks(range(k), [""] * k)
    memory.set_xlabel("peak memory (GiB)")
    memory.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    return figure


def _instances(result: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(M, n) start and finish of every op instance: every micro-batch when recorded, else micro-batch 0."""
    starts, finishes = getattr(result, "microbatch_start", None), getattr(result, "microbatch_finish", None)
    if starts is not None and finishes is not None:
        return np.asarray(starts), np.asarray(finishes)
    starts, finishes = getattr(result, "op_start", None), getattr(result, "op_finish", None)
    if starts is None or finishes is None or getattr(result, "objective", "latency") == "throughput":
        return None, None
    return np.asarray(starts)[None, :], np.asarray(finishes)[None, :]


def _link_rows(result: Any, names: list[str]) -> dict[str, list[tuple[float, float]]]:
    """``"gpu0→gpu1"`` -> (start, duration) of each transfer on that directed link, links in order."""
    transfers = getattr(result, "transfers", None)
    if transfers is None or transfers.num_transfers == 0:
        return {}
    rows: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for src, dst, start, finish in zip(transfers.src.tolist(), transfers.dst.tolist(), transfers.start.tolist(), transfers.finish.tolist(), strict=True):
        if finish > start:
            rows.setdefault((src, dst), []).append((start, finish - start))
    return {f"{names[src]}→{names[dst]}": spans for (src, dst), spans in sorted(rows.items())}


def placement_png(decision: Any) -> bytes:
    """The figure of `placement_figure` as PNG bytes (written atomically by the caller)."""
    import matplotlib.pyplot as plt

    figure = placement_figure(decision)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()
