"""A picture of a placement: the simulated timeline per device and the memory per device."""

from __future__ import annotations

import io
from typing import Any

import numpy as np


def placement_figure(decision: Any):
    """A matplotlib Figure: left, one row per device with its ops as bars over time (forward
    blue, backward orange) when the simulator recorded a schedule, else the busy time per
    device; right, peak memory per device against its capacity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = decision.result
    cluster = decision.cluster
    graph = decision.graph
    k = cluster.num_devices
    figure, (timeline, memory) = plt.subplots(1, 2, figsize=(13, 1.2 + 0.5 * k), gridspec_kw={"width_ratios": [3, 1]})
    unit = graph.time_unit
    starts = getattr(result, "op_start", None)
    finishes = getattr(result, "op_finish", None)
    if starts is not None and finishes is not None:
        for device in range(k):
            ops = np.flatnonzero(decision.placement == device)
            for backward, color in ((False, "tab:blue"), (True, "tab:orange")):
                chosen = ops[graph.is_backward[ops] == backward]
                spans = [(float(starts[i]), float(finishes[i] - starts[i])) for i in chosen if finishes[i] > starts[i]]
                if spans:
                    timeline.broken_barh(spans, (device - 0.4, 0.8), facecolors=color)
        timeline.set_xlabel(f"time ({unit})")
        timeline.set_title(f"{graph.name}: {decision.method}, step {result.step_time:.4g} {unit} (blue forward, orange backward)")
    else:
        timeline.barh(range(k), result.busy_time, color="tab:blue")
        timeline.set_xlabel(f"busy time ({unit})")
        timeline.set_title(f"{graph.name}: {decision.method}, {decision.objective} {result.step_time:.4g} {unit}")
    timeline.set_yticks(range(k), cluster.device_names)
    timeline.invert_yaxis()
    capacity = np.where(np.isfinite(result.capacity), result.capacity, np.nan)
    gib = 2.0**30
    memory.barh(range(k), result.peak_memory / gib, color=["tab:red" if o > 0 else "tab:green" for o in result.overflow_bytes])
    memory.scatter(capacity / gib, range(k), marker="|", s=300, color="black", label="capacity")
    memory.set_yticks(range(k), [""] * k)
    memory.invert_yaxis()
    memory.set_xlabel("peak memory (GiB)")
    memory.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    return figure


def placement_png(decision: Any) -> bytes:
    """The figure of `placement_figure` as PNG bytes (written atomically by the caller)."""
    import matplotlib.pyplot as plt

    figure = placement_figure(decision)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()
