"""Pictures of an episode's placement: a text table (``ansi``) and an image (``rgb_array``)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from rlplace.units import show_bytes

from .problem import PlacementProblem

#: Size of the ``rgb_array`` image in inches at `DPI` (the image is (H, W, 3) = (350, 1100, 3)).
FIGURE_INCHES = (11.0, 3.5)
DPI = 100


def ansi_table(problem: PlacementProblem, group_placement: np.ndarray, title: str) -> str:
    """One row per device: groups and ops placed on it, memory (simulated peak once every group
    is placed, else resident bytes so far) against capacity, and busy time (summed op times).

    Args:
        group_placement: (G,) int64 device per group, -1 for groups not placed yet.
    """
    placed = group_placement >= 0
    complete = bool(np.all(placed))
    k = problem.num_devices
    op_devices = problem.expand(np.where(placed, group_placement, k))  # k = "nowhere"
    groups = np.bincount(group_placement[placed], minlength=k)
    ops = np.bincount(op_devices, minlength=k + 1)[:k]
    durations = np.where(op_devices < k, problem.costs.op_time[np.arange(op_devices.size), np.minimum(op_devices, k - 1)], 0.0)
    busy = np.bincount(op_devices, weights=durations, minlength=k + 1)[:k]
    if complete:
        memory = problem.peak_memory(op_devices)
        memory_label = "peak memory"
    else:
        memory = np.bincount(group_placement[placed], weights=problem.resident[placed], minlength=k)
        memory_label = "resident so far"
    unit = problem.graph.time_unit
    names = problem.cluster.device_names
    width = max(len("device"), *(len(name) for name in names))
    lines = [title, f"{'device':<{width}}  {'groups':>6}  {'ops':>6}  {memory_label:>24}  {'busy (' + unit + ')':>12}"]
    for d in range(k):
        capacity = problem.capacity[d]
        memory_text = f"{show_bytes(memory[d])} / {show_bytes(capacity)}"
        flag = " OOM" if complete and memory[d] > capacity else ""
        lines.append(f"{names[d]:<{width}}  {groups[d]:>6}  {ops[d]:>6}  {memory_text:>24}  {busy[d]:>12.4g}{flag}")
    if not complete:
        lines.append(f"{int((~placed).sum())} of {placed.size} groups not placed yet")
    return "\n".join(lines) + "\n"


def rgb_image(problem: PlacementProblem, group_placement: np.ndarray, title: str) -> np.ndarray:
    """(H, W, 3) uint8 picture of the placement.

    A complete placement is drawn as ``rlplace.plot.placement_figure`` draws decisions: the
    simulated timeline per device and peak memory against capacity. A partial one is drawn as
    a strip of groups in topological order colored by device (grey: not placed yet) above the
    resident bytes per device.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if np.all(group_placement >= 0):
        from rlplace.plot import placement_figure

        placement = problem.expand(group_placement)
        decision = SimpleNamespace(
            result=problem.simulator.run(placement),
            cluster=problem.cluster,
            graph=problem.graph,
            placement=placement,
            method=title,
            objective=problem.objective,
        )
        figure = placement_figure(decision)
    else:
        figure = _partial_figure(problem, group_placement, title, plt)
    figure.set_size_inches(*FIGURE_INCHES)
    figure.set_dpi(DPI)
    figure.canvas.draw()
    image = np.asarray(figure.canvas.buffer_rgba())[:, :, :3].copy()
    plt.close(figure)
    return image


def _partial_figure(problem: PlacementProblem, group_placement: np.ndarray, title: str, plt):
    k = problem.num_devices
    colors = plt.get_cmap("tab10")
    figure, (strip, memory) = plt.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
    face = [colors(int(d) % 10) if d >= 0 else (0.8, 0.8, 0.8, 1.0) for d in group_placement]
    strip.bar(np.arange(group_placement.size), np.ones(group_placement.size), width=1.0, color=face)
    strip.set_yticks([])
    strip.set_xlabel("group (topological order)")
    strip.set_title(title)
    placed = group_placement >= 0
    resident = np.bincount(group_placement[placed], weights=problem.resident[placed], minlength=k)
    memory.barh(range(k), resident / 2.0**30, color=[colors(d % 10) for d in range(k)])
    memory.set_yticks(range(k), problem.cluster.device_names)
    memory.invert_yaxis()
    memory.set_xlabel("resident (GiB)")
    figure.tight_layout()
    return figure
