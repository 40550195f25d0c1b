"""Human-readable output: rich tables of placements and evaluations, size and time formats."""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rlplace.graph import OpGraph
from rlplace.units import show_bytes, show_time


def console(*, stderr: bool = False) -> Console:
    """A rich console; wide enough that tables do not wrap in CI logs."""
    return Console(stderr=stderr, width=160 if not Console().is_terminal else None)


def graph_summary(graph: OpGraph, max_groups: int) -> dict[str, Any]:
    """The ``rlplace graph --json`` fields: counts, FLOPs and bytes of the graph."""
    from rlplace.pipeline import working_graph

    forward = ~graph.is_backward
    coarse, _ = working_graph(graph, max_groups)
    return {
        "name": graph.name,
        "num_ops": graph.num_ops,
        "num_backward_ops": int(np.sum(graph.is_backward)),
        "num_edges": graph.num_edges,
        "forward_flops": float(np.sum(graph.flops[forward])),
        "total_flops": float(np.sum(graph.flops)),
        "param_bytes": float(np.sum(graph.param_bytes)),
        "resident_bytes": float(np.sum(graph.resident_bytes)),
        "activation_bytes": float(np.sum(graph.output_bytes[forward])),
        "num_groups": coarse.num_ops,
        "max_groups": max_groups,
        "time_unit": graph.time_unit,
        "meta": {k: v for k, v in graph.meta.items() if isinstance(v, (str, int, float, bool))},
    }


def decision_table(decision: Any) -> Table:
    """Per-device table of one placement: ops, busy time, peak memory against capacity."""
    result = decision.result
    unit = decision.graph.time_unit
    title = (
        f"{decision.graph.name} on {decision.cluster.name} — {decision.method}, {decision.objective}: "
        f"step {show_time(result.step_time, unit)} (lower bound {show_time(result.lower_bound, unit)}"
        + ("; proven optimal" if decision.optimal else "")
        + "), "
        f"decided in {decision.decide_s:.3f} s" + ("  [bold red]OUT OF MEMORY[/]" if result.oom else "")
    )
    table = Table(title=title, title_justify="left")
    for column in ("device", "kind", "ops", "busy", "peak memory", "capacity", "status"):
        table.add_column(column, justify="left" if column in ("device", "kind", "status") else "right")
    counts = np.bincount(decision.placement, minlength=decision.cluster.num_devices)
    for d, device in enumerate(decision.cluster.devices):
        over = result.overflow_bytes[d]
        table.add_row(
            device.name, device.kind, f"{counts[d]:,}", show_time(float(result.busy_time[d]), unit),
            show_bytes(float(result.peak_memory[d])), show_bytes(float(result.capacity[d])),
            f"[red]over by {show_bytes(float(over))}[/]" if over > 0 else "ok",
        )
    why = one_device_note(decision)
    if why:
        table.caption, table.caption_justify = why, "left"
    return table


def one_device_note(decision: Any) -> str | None:
    """One line saying why a placement uses one device of several, or None when it uses more (or OOMs)."""
    k = decision.cluster.num_devices
    used = np.unique(np.asarray(decision.placement))
    if k < 2 or used.size != 1 or decision.result.oom:
        return None
    name = decision.cluster.device_names[int(used[0])]
    reasons = {
        "latency": "one device is fastest for the latency of one step: the graph's parallel branches do not pay for the transfers a split adds; "
        "try --objective pipelined (micro-batches overlap across stages)",
        "pipelined": f"at {int(getattr(decision.result, 'microbatches', 1))} micro-batches the transfers between stages cost more than the overlap gains; "
        "try more --microbatches",
        "throughput": "the transfers of any split load the devices more than the compute they take off the busiest one",
    }
    reason = reasons.get(decision.objective, "no split the method found was faster")
    return f"uses only {name} of {k} devices: {reason}"


def evaluation_table(rows: list[dict[str, Any]]) -> Table:
    """One line per (model, cluster, method) with step time, speed-up, bound ratio, memory."""
    table = Table(title="rlplace evaluate", title_justify="left")
    for column in ("model", "cluster", "method", "step time", "speed-up", "/ bound", "max peak mem", "OOM", "decide"):
        table.add_column(column, justify="left" if column in ("model", "cluster", "method") else "right")
    footnotes: list[str] = []
    for row in rows:
        model = _short_label(row["model"])
        method = _short_label(row["method"])
        if row.get("error"):
            footnotes.append(str(row["error"]))
            table.add_row(model, row["cluster"], method, "—", "—", "—", "—", "—", f"[red]error [{len(footnotes)}][/]")
            continue
        unit = row.get("time_unit", "s")
        speedup = row.get("speedup_vs_single")
        ratio = row.get("ratio_to_lower_bound")
        table.add_row(
            model, row["cluster"], method, show_time(row["step_time"], unit),
            "—" if speedup is None else f"{speedup:.2f}x", "—" if ratio is None else f"{ratio:.2f}",
            show_bytes(max(row["peak_memory_bytes"])), "[red]yes[/]" if row["oom"] else "no", f"{row['decide_s']:.3f} s",
        )
    if footnotes:  # errors in full below the table, not cut to a column
        table.caption = "\n".join(escape(f"[{i}] {text}") for i, text in enumerate(footnotes, start=1))
        table.caption_justify = "left"
    return table



def _short_label(spec: str) -> str:
    """A file spec shown by its file name, ``expert:`` kept; other specs as written."""
    prefix = "expert:" if spec.startswith("expert:") else ""
    return prefix + spec.removeprefix(prefix).rsplit("/", 1)[-1]
