"""Calibrate the cost model on the actual devices: op rates per device, link speed between ranks.

`calibrate` starts one rank per device (the same launcher as measurements, so ranks run
with the same backend and thread count) and each rank times, concurrently:

* matrix multiplications of a few mid-size shapes  -> ``matmul_flops`` (FLOP/s);
* 3x3 convolutions                                 -> ``conv_flops`` (FLOP/s);
* element-wise additions of activation-sized tensors -> ``memory_bandwidth`` (bytes/s);
* a one-element op through the executor's call path -> ``op_overhead_s`` (s per op);

(single-threaded CPU ops are timed by thread CPU time, see `op_clock`)

and, unless told not to, times whole training steps of the calibration models
(`rlplace.measure.models.CALIBRATION_MODELS`) through the real executor on this one device
and fits per-kind efficiencies and a fixed cost per op class (`rlplace.costs.OVERHEAD_CLASSES`:
forward, backward, optimizer, views, convolutions, normalizations) to them, so the simulator
predicts what the executor spends per step on one device (`fit_kind_efficiency`);

then every ordered pair of ranks times messages of two sizes sent as the executor sends them ->
``latency`` (s, one way) and ``bandwidth`` (bytes/s), what a message adds to a step through
the executor, what it costs its two endpoints' compute so that the simulator reproduces the
wall time of two split calibration models (`message_cpu_timing`, fitted by `fit_message_cpu`
through `crossing_split_ratios`), and whether keeping idle cores awake helps a message-heavy step on this host
(`keep_awake_check`). The result is a `rlplace.profile.Profile` (typed, torch-free: loading
and applying it never imports this module).
"""

from __future__ import annotations

import dataclasses
import math
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rlplace.errors import RlplaceError
from rlplace.profile import DeviceProfile, Profile, apply_profile, load_profile, mean_rates, profile_cluster, profile_summary, write_profile

__all__ = [  # the profile itself lives in rlplace.profile (torch-free); re-exported for older imports
    "DeviceProfile", "Profile", "apply_profile", "calibrate", "load_profile", "mean_rates", "profile_cluster", "profile_summary", "write_profile",
]

#: (m, k, n) of the timed matrix multiplications.
MATMUL_SHAPES = ((64, 256, 256), (128, 512, 512), (256, 512, 256), (512, 512, 512), (128, 1024, 512))
#: (batch, in channels, out channels, height = width) of the timed 3x3 convolutions.
CONV_SHAPES = ((8, 16, 16, 32), (8, 16, 32, 16), (8, 32, 64, 8), (8, 3, 16, 32))
#: Elements of the tensors added element-wise (fp32: 256 kB to 4 MB).
ELEMENTWISE_SIZES = (1 << 16, 1 << 18, 1 << 20)
#: Bytes of the two message sizes that measure a link (activation-sized).
LINK_SIZES = (16 << 10, 1 << 20)
#: Percentile of link timings kept (see `profile_links`).
LINK_PERCENTILE = 20


# ============================================================================ timing
def op_clock(device: torch.device) -> Callable[[], float]:
    """The clock that times an op on ``device``.

    A single-threaded CPU op runs entirely in the calling thread, so its thread CPU time is
    its duration on a dedicated core, unaffected by other processes competing for the host
    (which inflate wall-clock timings of short kernels at random). Anything else (several
    torch threads, GPUs) is timed by the wall clock.
    """
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return time.thread_time
    return time.perf_counter


def _median_time(
    run: Callable[[], Any], *, min_seconds: float = 0.05, rounds: int = 5, synchronize: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Median over ``rounds`` of the mean time of ``run`` in batches of at least ``min_seconds``."""
    run()
    synchronize()
    started = clock()
    calls = 0
    while clock() - started < min_seconds / 4 or calls < 2:
        run()
        calls += 1
    synchronize()
    per_call = (clock() - started) / calls
    batch = max(1, int(min_seconds / max(per_call, 1e-9)))
    samples = []
    for _ in range(rounds):
        started = clock()
        for _ in range(batch):
            run()
        synchronize()
        samples.append((clock() - started) / batch)
    return statistics.median(samples)


def profile_device(device: torch.device | str = "cpu", *, name: str = "rank0", min_seconds: float = 0.05) -> DeviceProfile:
    """Time matmuls, convolutions, element-wise ops and per-op overhead on ``device``."""
    from torch.fx.node import map_arg

    device = torch.device(device)
    clock = op_clock(device)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    generator = torch.Generator().manual_seed(0)
    matmul_rates = []
    for m, k, n in MATMUL_SHAPES:
        a = torch.randn(m, k, generator=generator).to(device)
        b = torch.randn(k, n, generator=generator).to(device)
        seconds = _median_time(lambda a=a, b=b: torch.mm(a, b), min_seconds=min_seconds, synchronize=synchronize, clock=clock)
        matmul_rates.append(2.0 * m * k * n / seconds)
    conv_rates = []
    for batch, cin, cout, size in CONV_SHAPES:
        x = torch.randn(batch, cin, size, size, generator=generator).to(device)
        w = torch.randn(cout, cin, 3, 3, generator=generator).to(device)
        seconds = _median_time(lambda x=x, w=w: torch.nn.functional.conv2d(x, w, padding=1), min_seconds=min_seconds, synchronize=synchronize, clock=clock)
        conv_rates.append(2.0 * batch * cout * size * size * cin * 9 / seconds)
    bandwidths = []
    for elements in ELEMENTWISE_SIZES:
        x = torch.randn(elements, generator=generator).to(device)
        y = torch.randn(elements, generator=generator).to(device)
        seconds = _median_time(lambda x=x, y=y: torch.add(x, y), min_seconds=min_seconds, synchronize=synchronize, clock=clock)
        bandwidths.append(3.0 * 4 * elements / seconds)
    overhead = _op_overhead(device, map_arg, min_seconds, synchronize, clock)
    return DeviceProfile(
        name=name,
        device=str(device),
        matmul_flops=float(statistics.median(matmul_rates)),
        conv_flops=float(statistics.median(conv_rates)),
        memory_bandwidth=float(statistics.median(bandwidths)),
        op_overhead_s=float(overhead),
    )


def _op_overhead(device: torch.device, map_arg: Callable[..., Any], min_seconds: float, synchronize: Callable[[], None], clock: Callable[[], float]) -> float:
    """Seconds of one tiny op run the way `DeviceWorker.forward` runs a node."""
    graph = torch.fx.Graph()
    a, b = graph.placeholder("a"), graph.placeholder("b")
    node = graph.call_function(torch.ops.aten.add.Tensor, (a, b))
    env = {"a": torch.ones(1, device=device), "b": torch.ones(1, device=device)}

    def run() -> None:
        args = map_arg(node.args, lambda inp: env[inp.name])
        env["out"] = node.target(*args)

    return _median_time(run, min_seconds=min_seconds, synchronize=synchronize, clock=clock)


#: Op kinds whose efficiency calibration fits (`rlplace.capture.op_kind`); views are free.
FIT_KINDS = ("matmul", "conv", "attention", "embedding", "norm", "elementwise", "reduction", "optimizer", "other")
#: Bounds of a fitted efficiency, as a fraction of the measured matmul rate / bandwidth.
EFFICIENCY_BOUNDS = (0.01, 4.0)
#: The fit's weak prior: every kind at this efficiency (rows weighted `PRIOR_WEIGHT` against
#: 1 per calibration model, in relative error).
PRIOR_EFFICIENCY = 0.5
PRIOR_WEIGHT = 0.05


def roofline_features(graph: Any, peak_flops: float, bandwidth: float) -> tuple[np.ndarray, int]:
    """Per kind of `FIT_KINDS`, the summed roofline time (s) of the graph's ops at the given
    rates, and the number of ops that cost anything (free kinds excluded).

    Shapes: returns ((len(FIT_KINDS),) float64, int).
    """
    from rlplace.costs import FREE_KINDS

    features = np.zeros(len(FIT_KINDS))
    working = 0
    for op, kind in enumerate(graph.kinds):
        if kind in FREE_KINDS or (graph.flops[op] <= 0 and graph.bytes_accessed[op] <= 0):
            continue
        column = FIT_KINDS.index(kind) if kind in FIT_KINDS else FIT_KINDS.index("other")
        features[column] += max(graph.flops[op] / peak_flops, graph.bytes_accessed[op] / bandwidth)
        working += 1
    return features, working


def overhead_counts(graph: Any) -> np.ndarray:
    """Per class of `rlplace.costs.OVERHEAD_CLASSES`, how many of the graph's ops pay its fixed cost.

    Shapes: returns (len(OVERHEAD_CLASSES),) float64.
    """
    from rlplace.costs import OVERHEAD_CLASSES, overhead_class

    counts = np.zeros(len(OVERHEAD_CLASSES))
    for kind, backward in zip(graph.kinds, graph.is_backward, strict=True):
        name = overhead_class(kind, bool(backward))
        if name is not None:
            counts[OVERHEAD_CLASSES.index(name)] += 1
    return counts


@dataclass(frozen=True)
class StepFit:
    """What `fit_kind_efficiency` found for one device.

    Attributes:
        efficiency: per kind present in the calibration models, the fraction of the measured
            matmul rate / bandwidth its ops reach in training steps.
        overhead_by_class: seconds per op of each `rlplace.costs.OVERHEAD_CLASSES` entry.
        fit: calibration model -> (measured, fitted) step time in seconds.
    """

    efficiency: dict[str, float]
    overhead_by_class: dict[str, float]
    fit: dict[str, tuple[float, float]]


def time_executor_step(name: str, device: torch.device, *, steps: int = 8, warmup: int = 3) -> tuple[Any, Any, float]:
    """Capture calibration model ``name`` and time its training step through the executor with
    every node on ``device`` (exactly what a one-device placement runs).

    Returns the captured graph, the executor's forward program and the median step time
    (s, by `op_clock`).
    """
    from rlplace.capture import capture_model
    from rlplace.measure.allocator import steady_allocator
    from rlplace.measure.executor import LocalExecutor
    from rlplace.measure.models import calibration_model
    from rlplace.measure.plan import plan_segments
    from rlplace.measure.program import export_forward

    steady_allocator()
    clock = op_clock(device)
    module, inputs = calibration_model(name)
    graph = capture_model(module, inputs, optimizer="adam", name=name)
    program = export_forward(module, inputs)
    plan = plan_segments(program, {node.name: 0 for node in program.nodes}, 1)
    executor = LocalExecutor(program, plan, [device])
    samples = []
    for step in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = clock()
        executor.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= warmup:
            samples.append(clock() - started)
    return graph, program, statistics.median(samples)


def solve_step_fit(
    rooflines: np.ndarray, counts: np.ndarray, measured: np.ndarray, *, prior_overhead_s: float, names: Sequence[str], fixed: Mapping[str, float] | None = None
) -> StepFit:
    """Non-negative least squares on relative errors of
    ``step time = sum over kinds of roofline / efficiency + sum over classes of count * overhead``,
    with a weak prior (every efficiency `PRIOR_EFFICIENCY`, every overhead ``prior_overhead_s``,
    weight `PRIOR_WEIGHT`) that keeps kinds and classes the models barely tell apart finite.
    ``fixed``: kinds whose efficiency was measured directly (`optimizer_efficiency`); their
    time is taken out of the measured steps and only the rest is fitted.

    Shapes (c calibration models): rooflines (c, len(FIT_KINDS)) seconds at the measured rates;
    counts (c, len(OVERHEAD_CLASSES)); measured (c,) seconds.
    """
    from scipy.optimize import nnls

    from rlplace.costs import OVERHEAD_CLASSES

    low, high = EFFICIENCY_BOUNDS
    fixed = {kind: float(np.clip(value, low, high)) for kind, value in (fixed or {}).items() if kind in FIT_KINDS}
    free = rooflines.copy()
    known = np.zeros(len(measured))
    for kind, value in fixed.items():
        column = FIT_KINDS.index(kind)
        known += rooflines[:, column] / value
        free[:, column] = 0.0
    matrix = np.hstack([free, counts])
    weighted = matrix / measured[:, None]  # relative errors
    scale = np.where(weighted.max(axis=0) > 0, weighted.max(axis=0), 1.0)
    prior = np.array([1.0 / PRIOR_EFFICIENCY] * len(FIT_KINDS) + [max(prior_overhead_s, 1e-7)] * len(OVERHEAD_CLASSES))
    system = np.vstack([weighted / scale, np.diag(PRIOR_WEIGHT / (prior * scale))])
    target = np.concatenate([np.maximum(1.0 - known / measured, 0.0), np.full(len(prior), PRIOR_WEIGHT)])
    solution, _ = nnls(system, target)
    solution = solution / scale
    efficiency = {}
    for column, kind in enumerate(FIT_KINDS):
        if kind in fixed and rooflines[:, column].any():
            efficiency[kind] = fixed[kind]
        elif rooflines[:, column].any():
            efficiency[kind] = float(np.clip(1.0 / solution[column], low, high)) if solution[column] > 0 else high
    overheads = solution[len(FIT_KINDS) :]
    inverse = np.array([1.0 / efficiency.get(kind, high) for kind in FIT_KINDS])
    fitted = rooflines @ inverse + counts @ overheads
    return StepFit(
        efficiency,
        {name: float(value) for name, value in zip(OVERHEAD_CLASSES, overheads, strict=True)},
        {name: (float(m), float(f)) for name, m, f in zip(names, measured, fitted, strict=True)},
    )


def fit_kind_efficiency(
    device: torch.device | str,
    peak_flops: float,
    bandwidth: float,
    *,
    prior_overhead_s: float = 1e-5,
    steps: int = 8,
    warmup: int = 3,
    models: Sequence[str] | None = None,
    measure_optimizer: bool = True,
) -> StepFit:
    """Fit per-kind efficiencies and per-class op costs to measured one-device training steps.

    Runs every calibration model (`rlplace.measure.models.CALIBRATION_MODELS`) on ``device``
    through the executor (`time_executor_step`: the autograd island, backward ops, the one
    optimizer step and the per-node Python cost are all in the time), and fits
    `solve_step_fit` with rooflines at ``peak_flops`` and ``bandwidth`` from capture's FLOPs
    and bytes. A one-device placement is then predicted as the fit predicts its model.
    ``measure_optimizer`` times the optimizer update alone (`optimizer_efficiency`) and keeps
    that efficiency out of the fit.
    """
    from rlplace.measure.models import CALIBRATION_MODELS

    device = torch.device(device)
    names = list(models or CALIBRATION_MODELS)
    rooflines, counts, times = [], [], []
    for name in names:
        graph, _, seconds = time_executor_step(name, device, steps=steps, warmup=warmup)
        rooflines.append(roofline_features(graph, peak_flops, bandwidth)[0])
        counts.append(overhead_counts(graph))
        times.append(seconds)
    fixed = {"optimizer": optimizer_efficiency(device, peak_flops, bandwidth)} if measure_optimizer else {}
    return solve_step_fit(np.array(rooflines), np.array(counts), np.array(times), prior_overhead_s=prior_overhead_s, names=names, fixed=fixed)


def optimizer_efficiency(device: torch.device, peak_flops: float, bandwidth: float, *, min_seconds: float = 0.05) -> float:
    """The optimizer kind's efficiency timed directly: the executor's optimizer update
    (`rlplace.measure.executor.make_optimizer`, Adam) on eight 512 x 512 weights (2.1 M
    parameters) by `op_clock`, against the roofline capture gives their update. In whole
    calibration steps the update is a small share of most models' time, so the step fit
    alone mixes it up with the rest (it priced updates about twice what they take)."""
    from rlplace.capture import capture_model
    from rlplace.measure.executor import make_optimizer

    torch.manual_seed(0)
    module = torch.nn.Sequential(*(torch.nn.Linear(512, 512, bias=False) for _ in range(8)))
    inputs = (torch.randn(2, 512),)
    graph = capture_model(module, inputs, training=True, optimizer="adam", name="optimizer-probe")
    seconds_at_roofline = float(roofline_features(graph, peak_flops, bandwidth)[0][FIT_KINDS.index("optimizer")])
    module = module.to(device)
    module(inputs[0].to(device)).pow(2).mean().backward()
    update = make_optimizer("adam", list(module.parameters()))
    assert update is not None

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    seconds = _median_time(update.step, min_seconds=min_seconds, synchronize=synchronize, clock=op_clock(device))
    return seconds_at_roofline / seconds if seconds > 0 else EFFICIENCY_BOUNDS[1]


def profile_links(rank: int, world_size: int, device: torch.device, *, repeats: int = 40, sizes: tuple[int, int] = LINK_SIZES) -> tuple[list[float], list[float]]:
    """Bandwidth (bytes/s) and one-way latency (s) from this rank to every rank.

    Every rank calls this; pairs are timed one at a time (the others wait at a barrier).
    Messages go the way the executor sends activations (``isend`` of a tensor, ``recv`` into
    a freshly allocated one, so allocation and copies are part of the cost), in the two sizes
    of `LINK_SIZES`, each answered by a 4-byte acknowledgement: the slope of the
    `LINK_PERCENTILE` times between the two sizes gives the bandwidth; latency is half the
    round trip of 4-byte messages. A low percentile, not the median, because other processes
    on a shared host only ever add delay.
    """
    import torch.distributed as dist

    bandwidth = [math.inf] * world_size
    latency = [0.0] * world_size
    ack = torch.zeros(1, device=device)
    for src in range(world_size):
        for dst in range(world_size):
            if src == dst:
                continue
            dist.barrier()
            if rank not in (src, dst):
                continue
            peer = dst if rank == src else src
            round_trips = []
            for _ in range(repeats):
                started = time.perf_counter()
                if rank == src:
                    dist.isend(ack, peer).wait()
                    dist.recv(ack, peer)
                else:
                    dist.recv(ack, peer)
                    dist.isend(ack, peer).wait()
                round_trips.append(time.perf_counter() - started)
            one_way_small = float(np.percentile(round_trips, LINK_PERCENTILE)) / 2
            with_ack = []
            for size in sizes:
                payload = torch.zeros(size // 4, device=device)
                samples = []
                for _ in range(repeats):
                    started = time.perf_counter()
                    if rank == src:
                        dist.isend(payload.contiguous(), peer).wait()
                        dist.recv(ack, peer)
                    else:
                        dist.recv(torch.empty(size // 4, device=device), peer)
                        dist.isend(ack, peer).wait()
                    samples.append(time.perf_counter() - started)
                with_ack.append(float(np.percentile(samples, LINK_PERCENTILE)))
            if rank == src:
                slope = (with_ack[1] - with_ack[0]) / (sizes[1] - sizes[0])  # the acknowledgement cancels out
                bandwidth[dst] = 1.0 / slope if slope > 0 else sizes[1] / max(with_ack[1], 1e-9)
                latency[dst] = one_way_small
    return bandwidth, latency


def _crossing_runs(rank: int, world_size: int, device: torch.device) -> tuple[Any, list[tuple[Any, Any]]]:
    """The program of `rlplace.measure.models.crossing_chain` and, for this rank, a worker and
    plan of it all on rank 0 and one split layer by layer over ranks 0 and 1
    (`crossing_chain_device`)."""
    from rlplace.measure.models import crossing_chain, crossing_chain_device
    from rlplace.measure.program import export_forward

    module, inputs = crossing_chain()
    program = export_forward(module, inputs)
    paths = {node.name: program.module_paths.get(node.name, "") for node in program.nodes}
    return program, _worker_runs(program, paths, crossing_chain_device, rank, world_size, device)


def _pair_runs(rank: int, world_size: int, device: torch.device) -> list[tuple[Any, Any]]:
    """For this rank, a worker and plan of `rlplace.measure.models.crossing_pair` all on rank 0
    and placed by `crossing_pair_device` over ranks 0 and 1, its nodes run layer by layer
    (both chains' layer i before either's layer i + 1, as the simulator schedules them)."""
    from rlplace.measure.assign import order_by_key
    from rlplace.measure.models import crossing_pair, crossing_pair_device
    from rlplace.measure.program import export_forward

    module, inputs = crossing_pair()
    program = export_forward(module, inputs)
    paths = {node.name: program.module_paths.get(node.name, "") for node in program.nodes}
    layer = {name: float(path.split(".")[2]) for name, path in paths.items() if path.count(".") >= 2 and path.split(".")[2].isdigit()}
    return _worker_runs(program, paths, crossing_pair_device, rank, world_size, device, order_by_key(program, layer))


def _worker_runs(
    program: Any, paths: Mapping[str, str], device_of: Callable[[str], int], rank: int, world_size: int, device: torch.device, order: Sequence[str] | None = None
) -> list[tuple[Any, Any]]:
    """For this rank, a (worker, plan) of ``program`` all on rank 0 and one with each node on
    ``device_of(its module path)`` (over ranks 0 and 1), each running its nodes in ``order``."""
    from rlplace.measure.executor import DeviceWorker
    from rlplace.measure.plan import plan_segments
    from rlplace.measure.ranks import DistTransport

    runs = []
    for assignment in ({name: 0 for name in paths}, {name: device_of(path) % min(world_size, 2) for name, path in paths.items()}):
        plan = plan_segments(program, assignment, world_size, order)
        runs.append((DeviceWorker(program, plan, rank, device, DistTransport(plan, rank, program.values)), plan))
    return runs


def message_cpu_timing(rank: int, world_size: int, device: torch.device, *, rounds: int = 20, warmup: int = 3) -> dict[str, float]:
    """One step of `crossing_pair` on one rank and split so that both ranks compute while
    every layer boundary sends a message each way, ``rounds`` alternating pairs after
    ``warmup`` (collective): the medians of the slowest rank's wall time (``wall_single``,
    ``wall_split``), of the main threads' CPU time summed over the ranks in the same steps
    (``cpu_single``, ``cpu_split``; a diagnostic), and the split's messages per step
    (``messages``)."""
    runs = _pair_runs(rank, world_size, device)
    wall, cpu = _paired_steps(runs, rounds, warmup)
    return {
        "wall_single": float(statistics.median(single for single, _ in wall)),
        "wall_split": float(statistics.median(split for _, split in wall)),
        "cpu_single": float(statistics.median(single for single, _ in cpu)),
        "cpu_split": float(statistics.median(split for _, split in cpu)),
        "messages": float(len(runs[1][1].messages)),
    }


#: Upper end of the search for ``message_cpu_s`` (s per endpoint).
MAX_MESSAGE_CPU_S = 0.02


def fit_message_cpu(profile: Profile, timing: Mapping[str, float], split_ratios: Callable[[float], Mapping[str, float]] | None = None) -> Profile:
    """The profile with ``message_cpu_s``, what one message costs each endpoint's compute,
    fitted so that the simulator reproduces what messages cost measured steps.

    With wall times and ``split_ratios`` (c -> simulated split step / one-rank step of each
    calibration pattern when each endpoint pays c, `crossing_split_ratios`): the c in
    [0, `MAX_MESSAGE_CPU_S`] that minimizes the squared log error of those ratios against the
    measured ones, over both patterns: ``pair`` (`crossing_pair`: both ranks compute and
    every layer boundary is a message each way; ``wall_split / wall_single``) and ``chain``
    (`crossing_chain`: one rank computes while the other waits; ``chain_split /
    chain_single``). Ratios, so an error of the profile's compute speed cancels. They hold
    all the wall time a message costs on this host, not only its endpoints' CPU time, and it
    depends on the pattern: with gloo on the 2-core development VM a pair message cost ~0.5
    ms per endpoint, a chain message ~0.13 ms in all, while the main threads spent ~0.13 ms
    of CPU on each end; one constant cannot match both, the fit splits the difference.
    Without them (older timings): ``c = max(0, (cpu_split - cpu_single) / (2 * messages))``.

    A chain split layer by layer pays both endpoints of every message on its critical path,
    so the calibrated per-message overhead becomes ``max(0, message_overhead_s - 2c)`` (its
    total is kept while it can be). Profiles of one device, or without ``timing``, come back
    unchanged.
    """
    if len(profile.devices) < 2 or not timing or not timing.get("messages"):
        return profile
    measured = {
        pattern: float(timing[split]) / float(timing[single])
        for pattern, single, split in (("pair", "wall_single", "wall_split"), ("chain", "chain_single", "chain_split"))
        if timing.get(single, 0.0) > 0 and timing.get(split, 0.0) > 0
    }
    if split_ratios is not None and measured:

        def loss(cost: float) -> float:
            simulated = split_ratios(cost)
            return sum(math.log(simulated[pattern] / ratio) ** 2 for pattern, ratio in measured.items())

        cost = _minimize_on_interval(loss, 0.0, MAX_MESSAGE_CPU_S)
    else:
        cost = max((float(timing["cpu_split"]) - float(timing["cpu_single"])) / (2.0 * float(timing["messages"])), 0.0)
    chain = profile.message_overhead_s
    meta = dict(profile.meta) | {"message_timing": dict(timing) | {"chain_message_overhead_s": chain}}
    return dataclasses.replace(profile, message_cpu_s=cost, message_overhead_s=max(chain - 2.0 * cost, 0.0), meta=meta)


def _minimize_on_interval(loss: Callable[[float], float], low: float, high: float, *, grid: int = 41, refine: int = 30) -> float:
    """A minimizer of ``loss`` on [low, high]: the best of a grid (0 and geometric steps down
    from ``high`` by factors of 10^(1/8)), then golden-section search between its neighbours."""
    points = sorted({low, *(high * 10.0 ** (-i / 8.0) for i in range(grid - 1))})
    values = [loss(x) for x in points]
    best = int(np.argmin(values))
    a, b = points[max(best - 1, 0)], points[min(best + 1, len(points) - 1)]
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss(c), loss(d)
    for _ in range(refine):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(d)
    candidates = [(values[best], points[best]), (fc, c), (fd, d)]
    return min(candidates)[1]


def crossing_split_ratios(profile: Profile) -> Callable[[float], dict[str, float]]:
    """c -> {"pair": ..., "chain": ...}: the simulator's step time of `crossing_pair` split by
    `crossing_pair_device` and of `crossing_chain` split by `crossing_chain_device` over the
    first two devices of ``profile``'s cluster, each divided by its step on one device, when
    every message costs each endpoint c seconds and the chain-calibrated per-message overhead
    keeps its total while it can, as `fit_message_cpu` sets them. Each model is captured once
    (training step, Adam, as measurements capture it) and simulated as measurements are
    (`rlplace.measure.assign.simulate_as_executed`)."""
    from rlplace.capture import capture_model
    from rlplace.costs import CostTable
    from rlplace.measure.assign import executed_placement, simulate_as_executed
    from rlplace.measure.models import crossing_chain, crossing_chain_device, crossing_pair, crossing_pair_device
    from rlplace.placement import respect_colocation

    cases = []
    for pattern, build, device_of in (("pair", crossing_pair, crossing_pair_device), ("chain", crossing_chain, crossing_chain_device)):
        module, inputs = build()
        graph = capture_model(module, inputs, training=True, optimizer="adam", name=pattern)
        paths = graph.meta.get("module_paths") or [""] * graph.num_ops
        split = executed_placement(graph, respect_colocation(graph, np.array([device_of(str(path)) for path in paths], dtype=np.int64)))
        cases.append((pattern, graph, split))

    def step_time(graph: Any, placement: np.ndarray, cluster: Any) -> float:
        return float(simulate_as_executed(graph, cluster, CostTable.build(graph, cluster), placement).step_time)

    base = profile_cluster(profile)
    one_device = {pattern: step_time(graph, np.zeros(graph.num_ops, dtype=np.int64), base) for pattern, graph, _ in cases}

    def ratios(cost: float) -> dict[str, float]:
        cluster = profile_cluster(dataclasses.replace(profile, message_cpu_s=cost, message_overhead_s=max(profile.message_overhead_s - 2.0 * cost, 0.0)))
        return {pattern: step_time(graph, split, cluster) / one_device[pattern] for pattern, graph, split in cases}

    return ratios


def _paired_steps(runs: Sequence[tuple[Any, Any]], rounds: int, warmup: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Per round after ``warmup``, one step of each run (collective): the slowest rank's wall
    time (s), and the main threads' CPU time of the same steps summed over the ranks (s)."""
    import torch.distributed as dist

    from rlplace.measure.ranks import run_step

    wall_pairs, cpu_pairs = [], []
    for index in range(warmup + rounds):
        walls, cpus = [], []
        for worker, plan in runs:
            dist.barrier()
            started, cpu_started = time.perf_counter(), time.thread_time()
            run_step(worker, plan)
            walls.append(time.perf_counter() - started)
            cpus.append(time.thread_time() - cpu_started)
        slowest, summed = torch.tensor(walls, dtype=torch.float64), torch.tensor(cpus, dtype=torch.float64)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        if index >= warmup:
            wall_pairs.append((float(slowest[0]), float(slowest[1])))
            cpu_pairs.append((float(summed[0]), float(summed[1])))
    return wall_pairs, cpu_pairs


def message_overhead(rank: int, world_size: int, device: torch.device, bandwidth: float, latency: float, *, rounds: int = 30, warmup: int = 3) -> tuple[float, dict[str, float]]:
    """Seconds one message adds to a step beyond ``latency + bytes / bandwidth``, and the
    medians of the paired wall times it comes from (``chain_single``, ``chain_split``,
    ``chain_messages``) (collective).

    Alternates steps of `rlplace.measure.models.crossing_chain` all on rank 0 and split
    layer by layer over ranks 0 and 1 (every boundary on the critical path), so drift of the
    host's speed cancels; the median difference of paired step times (slowest rank), minus
    the link time, is divided by the number of messages.
    """
    program, runs = _crossing_runs(rank, world_size, device)
    pairs, _ = _paired_steps(runs, rounds, warmup)
    messages = runs[1][1].messages
    timing = {
        "chain_single": float(statistics.median(single for single, _ in pairs)),
        "chain_split": float(statistics.median(split for _, split in pairs)),
        "chain_messages": float(len(messages)),
    }
    if not messages:
        return 0.0, timing
    link_time = sum(latency + program.values[m.value].nbytes / bandwidth for m in messages)
    return max((statistics.median(split - single for single, split in pairs) - link_time) / len(messages), 0.0), timing


#: Keep-awake is on by default only if it made the message-heavy split at least this much
#: faster (fraction) and the one-rank step at most `KEEP_AWAKE_TOLERANCE` slower.
KEEP_AWAKE_GAIN = 0.10
KEEP_AWAKE_TOLERANCE = 0.03


def keep_awake_check(rank: int, world_size: int, device: torch.device, *, rounds: int = 4, steps: int = 5) -> dict[str, float]:
    """Median step times (s) of `crossing_chain` on one rank and split layer by layer, with the
    host's idle cores left to halt and kept awake (`rlplace.measure.awake`, started by rank 0),
    alternating ``rounds`` times so drift cancels (collective). Keys: ``single_idle``,
    ``single_awake``, ``split_idle``, ``split_awake``."""
    import torch.distributed as dist

    from rlplace.measure.awake import cores_kept_awake

    _, runs = _crossing_runs(rank, world_size, device)
    samples: dict[str, list[float]] = {"single_idle": [], "single_awake": [], "split_idle": [], "split_awake": []}
    _paired_steps(runs, 0, 2)  # warm-up
    for index in range(2 * rounds):
        awake = index % 2 == 1
        dist.barrier()
        with cores_kept_awake(awake and rank == 0):
            dist.barrier()
            for single, split in _paired_steps(runs, steps, 1)[0]:
                mode = "awake" if awake else "idle"
                samples[f"single_{mode}"].append(single)
                samples[f"split_{mode}"].append(split)
            dist.barrier()
    return {key: float(statistics.median(values)) for key, values in samples.items()}


def keep_awake_helps(check: Mapping[str, float]) -> bool:
    """The decision `keep_awake_check`'s numbers support (see `KEEP_AWAKE_GAIN`)."""
    if not check:
        return False
    faster_split = check["split_awake"] < (1 - KEEP_AWAKE_GAIN) * check["split_idle"]
    no_slower_single = check["single_awake"] <= (1 + KEEP_AWAKE_TOLERANCE) * check["single_idle"]
    return bool(faster_split and no_slower_single)


def run_calibration_rank(job: Mapping[str, Any], rank: int, world_size: int, local_rank: int) -> dict[str, Any] | None:
    """One rank of `calibrate`: profile this device, time links, gather on rank 0."""
    import datetime

    import torch.distributed as dist

    from rlplace.measure.awake import cores_kept_awake
    from rlplace.measure.ranks import rank_device

    backend = str(job.get("backend", "gloo"))
    threads = int(job.get("threads", 1))
    if threads > 0:
        torch.set_num_threads(threads)
    device = rank_device(backend, local_rank)
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=float(job.get("timeout_s", 300))))
    try:
        dist.barrier()
        measured = profile_device(device, name=f"rank{rank}", min_seconds=float(job.get("min_seconds", 0.05)))
        for turn in range(world_size if job.get("fit", True) else 0):
            # One rank at a time, the others idle at the barrier: the fitted step times are
            # those of a one-device placement, which runs alone on the host.
            dist.barrier()
            if turn != rank:
                continue
            fitted = fit_kind_efficiency(device, measured.matmul_flops, measured.memory_bandwidth, prior_overhead_s=3 * measured.op_overhead_s)
            measured = dataclasses.replace(
                measured,
                kind_efficiency=fitted.efficiency,
                launch_overhead_s=fitted.overhead_by_class["forward"],
                fit=fitted.fit,
                op_overhead_by_class=fitted.overhead_by_class,
            )
        dist.barrier()
        check: dict[str, float] = {}
        if world_size > 1 and job.get("check_keep_awake", True):
            check = keep_awake_check(rank, world_size, device)  # the same numbers on every rank
        # Messages are timed the way measurements will run them: with the cores kept awake
        # when the check found that helps (the profile turns it on for them).
        with cores_kept_awake(keep_awake_helps(check) and rank == 0):
            dist.barrier()
            bandwidth, latency = profile_links(rank, world_size, device)
            gathered: list[Any] = [None] * world_size
            dist.all_gather_object(gathered, {"device": dataclasses.asdict(measured), "bandwidth": bandwidth, "latency": latency})
            overhead = 0.0
            timing: dict[str, float] = {}
            if world_size > 1:
                overhead, chain_timing = message_overhead(rank, world_size, device, float(gathered[0]["bandwidth"][1]), float(gathered[0]["latency"][1]))
                if job.get("fit_message_cpu", True):
                    timing = message_cpu_timing(rank, world_size, device) | chain_timing
            dist.barrier()
    finally:
        dist.destroy_process_group()
    if rank != 0:
        return None
    bandwidth_matrix = np.array([entry["bandwidth"] for entry in gathered])
    latency_matrix = np.array([entry["latency"] for entry in gathered])
    profile = Profile(
        devices=tuple(DeviceProfile(**entry["device"]) for entry in gathered),
        bandwidth=bandwidth_matrix,
        latency=latency_matrix,
        backend=backend,
        threads=threads,
        meta={"host": platform.node(), "torch": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")} | ({"message_timing": timing} if timing else {}),
        message_overhead_s=overhead,
        keep_awake=keep_awake_helps(check),
        keep_awake_check=check,
    )
    return profile.to_json()


def calibrate(
    num_devices: int = 2, *, backend: str = "gloo", threads: int = 1, timeout_s: float = 300.0, min_seconds: float = 0.05, fit: bool = True, nice: int | None = None,
    keep_awake: bool | None = None, check_keep_awake: bool = True, fit_message_cpu_cost: bool = True,
) -> Profile:
    """Calibrate ``num_devices`` local ranks (one process each) and return the profile.

    ``fit`` also fits per-kind efficiencies and the per-op launch cost on the calibration
    models (`fit_kind_efficiency`, tens of seconds); without it only the raw rates are kept.
    ``nice`` sets the ranks' CPU priority and ``keep_awake`` keeps idle cores from halting
    during the calibration itself (see `rlplace.measure.launch.launch_job`; default off).
    ``check_keep_awake`` (two or more devices) times whether keeping cores awake helps
    measurements on this host (`keep_awake_check`); the profile records the answer.
    ``fit_message_cpu_cost`` (two or more devices) times `crossing_pair` with both ranks
    computing and fits what a message costs its endpoints (`fit_message_cpu`).
    """
    from rlplace.measure.launch import launch_job

    if num_devices < 1:
        raise RlplaceError(f"calibration needs at least one device (got {num_devices})")
    job = {
        "kind": "calibrate", "backend": backend, "threads": threads, "timeout_s": timeout_s, "min_seconds": min_seconds, "fit": fit,
        "check_keep_awake": check_keep_awake, "fit_message_cpu": fit_message_cpu_cost,
    }  # fmt: skip
    profile = Profile.from_json(launch_job(job, num_devices, timeout_s=timeout_s, threads=threads, nice=nice, keep_awake=keep_awake), "calibration result")
    if not fit_message_cpu_cost or len(profile.devices) < 2:
        return profile
    return fit_message_cpu(profile, profile.meta.get("message_timing") or {}, crossing_split_ratios(profile))
