"""Calibrate the cost model on the actual devices: op rates per device, link speed between ranks.

`calibrate` starts one rank per device (the same launcher as measurements, so ranks run
with the same backend and thread count) and each rank times, concurrently:

* matrix multiplications of a few mid-size shapes  -> ``matmul_flops`` (FLOP/s);
* 3x3 convolutions                                 -> ``conv_flops`` (FLOP/s);
* element-wise additions of activation-sized tensors -> ``memory_bandwidth`` (bytes/s);
* a one-element op through the executor's call path -> ``op_overhead_s`` (s per op);

then every ordered pair of ranks times ping-pongs of small and large messages ->
``latency`` (s, one way) and ``bandwidth`` (bytes/s). The profile is JSON (`write_profile`);
`apply_profile` returns a cluster whose devices and links carry the calibrated numbers,
scaled by the cost model's efficiency factors so that `rlplace.costs.CostTable` predicts
exactly the measured rate for a matmul and for a streaming element-wise op.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlplace.cluster import CPU, Cluster, Device
from rlplace.costs import BANDWIDTH_EFFICIENCY, COMPUTE_EFFICIENCY
from rlplace.errors import RlplaceError
from rlplace.io import read_json, write_text_atomic

PROFILE_FORMAT = "rlplace-profile"
PROFILE_VERSION = 1

#: (m, k, n) of the timed matrix multiplications.
MATMUL_SHAPES = ((64, 256, 256), (128, 512, 512), (256, 512, 256), (512, 512, 512), (128, 1024, 512))
#: (batch, in channels, out channels, height = width) of the timed 3x3 convolutions.
CONV_SHAPES = ((8, 16, 16, 32), (8, 16, 32, 16), (8, 32, 64, 8), (8, 3, 16, 32))
#: Elements of the tensors added element-wise (fp32: 256 kB to 4 MB).
ELEMENTWISE_SIZES = (1 << 16, 1 << 18, 1 << 20)
#: Bytes of the messages that measure link bandwidth.
LINK_BYTES = 4 << 20


@dataclass(frozen=True)
class DeviceProfile:
    """Measured rates of one device.

    Attributes:
        name: ``rank<r>``.
        device: torch device it ran on (``cpu``, ``cuda:0``).
        matmul_flops, conv_flops: FLOP/s reached by fp32 matmuls and convolutions.
        memory_bandwidth: bytes/s read plus written by element-wise ops.
        op_overhead_s: fixed time of one op through the executor (dispatch, Python).
    """

    name: str
    device: str
    matmul_flops: float
    conv_flops: float
    memory_bandwidth: float
    op_overhead_s: float


@dataclass(frozen=True, eq=False)
class Profile:
    """A calibration of k devices.

    Shapes (k devices):
        devices: k `DeviceProfile`.
        bandwidth: (k, k) bytes/s from rank a to rank b (``inf`` on the diagonal).
        latency: (k, k) seconds one way from a to b (0 on the diagonal).
    """

    devices: tuple[DeviceProfile, ...]
    bandwidth: np.ndarray
    latency: np.ndarray
    backend: str
    threads: int
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        k = len(self.devices)

        def matrix(values: np.ndarray) -> list[list[float | None]]:
            return [[None if a == b else float(values[a, b]) for b in range(k)] for a in range(k)]

        return {
            "format": PROFILE_FORMAT,
            "version": PROFILE_VERSION,
            "backend": self.backend,
            "threads": self.threads,
            "devices": [dataclasses.asdict(d) for d in self.devices],
            "links": {"bandwidth": matrix(self.bandwidth), "latency": matrix(self.latency)},
            "meta": dict(self.meta),
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "profile") -> Profile:
        if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
            raise RlplaceError(f"{source}: not an rlplace profile (expected \"format\": \"{PROFILE_FORMAT}\"); write one with `rlplace calibrate --out FILE`")
        if data.get("version") != PROFILE_VERSION:
            raise RlplaceError(f"{source}: profile version {data.get('version')!r} is not supported (expected {PROFILE_VERSION}); recalibrate")
        try:
            devices = tuple(DeviceProfile(**{f.name: entry[f.name] for f in dataclasses.fields(DeviceProfile)}) for entry in data["devices"])
            k = len(devices)
            bandwidth = np.array([[math.inf if a == b else float(data["links"]["bandwidth"][a][b]) for b in range(k)] for a in range(k)])
            latency = np.array([[0.0 if a == b else float(data["links"]["latency"][a][b]) for b in range(k)] for a in range(k)])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise RlplaceError(f"{source}: malformed profile ({type(exc).__name__}: {exc}); recalibrate with `rlplace calibrate`") from None
        if not devices:
            raise RlplaceError(f"{source}: the profile has no devices")
        for device in devices:
            rates = (device.matmul_flops, device.conv_flops, device.memory_bandwidth)
            if not all(math.isfinite(r) and r > 0 for r in rates) or not device.op_overhead_s >= 0:
                raise RlplaceError(f"{source}: device {device.name!r} has a non-positive rate; recalibrate")
        return cls(devices, bandwidth, latency, str(data.get("backend", "gloo")), int(data.get("threads", 0)), dict(data.get("meta") or {}))


def write_profile(profile: Profile, path: str | Path) -> None:
    """Write ``profile`` as JSON (atomically)."""
    import json

    write_text_atomic(path, json.dumps(profile.to_json(), indent=2) + "\n")


def load_profile(path: str | Path) -> Profile:
    """Read a profile written by `write_profile` (`RlplaceError` naming the file if bad)."""
    return Profile.from_json(read_json(path), str(path))


def apply_profile(cluster: Cluster, profile: Profile | str | Path) -> Cluster:
    """A copy of ``cluster`` whose devices and links carry the calibrated numbers.

    Device i takes profile device i (a one-device profile serves every device; a profile of
    more devices gives the first k). Peak FP32
    FLOP/s becomes ``matmul_flops / COMPUTE_EFFICIENCY["matmul"]`` and memory bandwidth
    ``memory_bandwidth / BANDWIDTH_EFFICIENCY``, so the roofline of `rlplace.costs` gives a
    matmul and a streaming op exactly their measured rate; FP16 peaks keep their ratio to
    FP32. Links take the profile's matrix when it has k devices, else the mean measured link
    for every pair. Memory capacities, hosts and names are kept.

    Shapes: the profile's (c, c) link matrices become the cluster's (k, k) ones (c >= k).
    """
    if not isinstance(profile, Profile):
        profile = load_profile(profile)
    k = cluster.num_devices
    count = len(profile.devices)
    if 1 < count < k:
        raise RlplaceError(f"the profile calibrates {count} devices but cluster {cluster.name!r} has {k}; calibrate with {k} ranks or use a one-device profile")
    devices = []
    for index, device in enumerate(cluster.devices):
        measured = profile.devices[index if count >= k else 0]
        fp32 = measured.matmul_flops / COMPUTE_EFFICIENCY["matmul"]
        devices.append(
            dataclasses.replace(
                device,
                fp32_flops=fp32,
                fp16_flops=fp32 * (device.fp16_flops / device.fp32_flops),
                memory_bandwidth=measured.memory_bandwidth / BANDWIDTH_EFFICIENCY,
            )
        )
    if count >= k and k > 1:
        bandwidth, latency = profile.bandwidth[:k, :k].copy(), profile.latency[:k, :k].copy()
    else:
        off = ~np.eye(count, dtype=bool)
        mean_bandwidth = float(np.mean(profile.bandwidth[off])) if count > 1 else float(np.min(cluster.bandwidth[~np.eye(k, dtype=bool)], initial=math.inf))
        mean_latency = float(np.mean(profile.latency[off])) if count > 1 else float(np.max(cluster.latency, initial=0.0))
        bandwidth = np.where(np.eye(k, dtype=bool), math.inf, mean_bandwidth if count > 1 else cluster.bandwidth)
        latency = np.where(np.eye(k, dtype=bool), 0.0, mean_latency if count > 1 else cluster.latency)
    meta = {**dict(cluster.meta), "profile": {"backend": profile.backend, "threads": profile.threads, "op_overhead_s": [d.op_overhead_s for d in profile.devices]}}
    return Cluster(name=f"{cluster.name}+profile", devices=tuple(devices), bandwidth=bandwidth, latency=latency, meta=meta)


def profile_cluster(profile: Profile, *, name: str = "calibrated") -> Cluster:
    """A cluster made of the profiled devices themselves (CPU ranks: category ``cpu``).

    Memory is the host's RAM (``psutil`` when available, else unlimited).
    """
    try:
        import psutil

        memory = float(psutil.virtual_memory().total)
    except ImportError:
        memory = math.inf
    base = []
    for measured in profile.devices:
        category = CPU if measured.device.startswith("cpu") else "accelerator"
        base.append(Device(name=measured.name, kind="calibrated", category=category, fp32_flops=1.0, fp16_flops=1.0, memory=memory, memory_bandwidth=1.0))
    k = len(base)
    cluster = Cluster(name=name, devices=tuple(base), bandwidth=np.where(np.eye(k, dtype=bool), math.inf, 1.0), latency=np.zeros((k, k)))
    return apply_profile(cluster, profile)


# ============================================================================ timing
def _median_time(run: Callable[[], Any], *, min_seconds: float = 0.05, rounds: int = 5, synchronize: Callable[[], None] = lambda: None) -> float:
    """Median over ``rounds`` of the mean time of ``run`` in batches of at least ``min_seconds``."""
    run()
    synchronize()
    started = time.perf_counter()
    calls = 0
    while time.perf_counter() - started < min_seconds / 4 or calls < 2:
        run()
        calls += 1
    synchronize()
    per_call = (time.perf_counter() - started) / calls
    batch = max(1, int(min_seconds / max(per_call, 1e-9)))
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(batch):
            run()
        synchronize()
        samples.append((time.perf_counter() - started) / batch)
    return statistics.median(samples)


def profile_device(device: torch.device | str = "cpu", *, name: str = "rank0", min_seconds: float = 0.05) -> DeviceProfile:
    """Time matmuls, convolutions, element-wise ops and per-op overhead on ``device``."""
    from torch.fx.node import map_arg

    device = torch.device(device)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    generator = torch.Generator().manual_seed(0)
    matmul_rates = []
    for m, k, n in MATMUL_SHAPES:
        a = torch.randn(m, k, generator=generator).to(device)
        b = torch.randn(k, n, generator=generator).to(device)
        seconds = _median_time(lambda a=a, b=b: torch.mm(a, b), min_seconds=min_seconds, synchronize=synchronize)
        matmul_rates.append(2.0 * m * k * n / seconds)
    conv_rates = []
    for batch, cin, cout, size in CONV_SHAPES:
        x = torch.randn(batch, cin, size, size, generator=generator).to(device)
        w = torch.randn(cout, cin, 3, 3, generator=generator).to(device)
        seconds = _median_time(lambda x=x, w=w: torch.nn.functional.conv2d(x, w, padding=1), min_seconds=min_seconds, synchronize=synchronize)
        conv_rates.append(2.0 * batch * cout * size * size * cin * 9 / seconds)
    bandwidths = []
    for elements in ELEMENTWISE_SIZES:
        x = torch.randn(elements, generator=generator).to(device)
        y = torch.randn(elements, generator=generator).to(device)
        seconds = _median_time(lambda x=x, y=y: torch.add(x, y), min_seconds=min_seconds, synchronize=synchronize)
        bandwidths.append(3.0 * 4 * elements / seconds)
    overhead = _op_overhead(device, map_arg, min_seconds, synchronize)
    return DeviceProfile(
        name=name,
        device=str(device),
        matmul_flops=float(statistics.median(matmul_rates)),
        conv_flops=float(statistics.median(conv_rates)),
        memory_bandwidth=float(statistics.median(bandwidths)),
        op_overhead_s=float(overhead),
    )


def _op_overhead(device: torch.device, map_arg: Callable[..., Any], min_seconds: float, synchronize: Callable[[], None]) -> float:
    """Seconds of one tiny op run the way `DeviceWorker.forward` runs a node."""
    graph = torch.fx.Graph()
    a, b = graph.placeholder("a"), graph.placeholder("b")
    node = graph.call_function(torch.ops.aten.add.Tensor, (a, b))
    env = {"a": torch.ones(1, device=device), "b": torch.ones(1, device=device)}

    def run() -> None:
        args = map_arg(node.args, lambda inp: env[inp.name])
        env["out"] = node.target(*args)

    return _median_time(run, min_seconds=min_seconds, synchronize=synchronize)


def profile_links(rank: int, world_size: int, device: torch.device, *, repeats: int = 30, large_bytes: int = LINK_BYTES) -> tuple[list[float], list[float]]:
    """Bandwidth (bytes/s) and one-way latency (s) from this rank to every rank.

    Every rank calls this; pairs are timed one at a time (the others wait at a barrier).
    Latency is half the median round trip of a 4-byte message; bandwidth divides the large
    message's bytes by its one-way time minus that latency.
    """
    import torch.distributed as dist

    bandwidth = [math.inf] * world_size
    latency = [0.0] * world_size
    small = torch.zeros(1, device=device)
    large = torch.zeros(large_bytes // 4, device=device)
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
                    dist.send(small, peer)
                    dist.recv(small, peer)
                else:
                    dist.recv(small, peer)
                    dist.send(small, peer)
                round_trips.append(time.perf_counter() - started)
            one_way = statistics.median(round_trips) / 2
            transfers = []
            for _ in range(max(3, repeats // 5)):
                started = time.perf_counter()
                if rank == src:
                    dist.send(large, peer)
                    dist.recv(small, peer)
                else:
                    dist.recv(large, peer)
                    dist.send(small, peer)
                transfers.append(time.perf_counter() - started)
            if rank == src:
                seconds = max(statistics.median(transfers) - 2 * one_way, 1e-9)
                bandwidth[dst] = large_bytes / seconds
                latency[dst] = one_way
    return bandwidth, latency


def run_calibration_rank(job: Mapping[str, Any], rank: int, world_size: int, local_rank: int) -> dict[str, Any] | None:
    """One rank of `calibrate`: profile this device, time links, gather on rank 0."""
    import datetime

    import torch.distributed as dist

    from rlplace.measure.distributed import rank_device

    backend = str(job.get("backend", "gloo"))
    threads = int(job.get("threads", 1))
    if threads > 0:
        torch.set_num_threads(threads)
    device = rank_device(backend, local_rank)
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=float(job.get("timeout_s", 300))))
    try:
        dist.barrier()
        measured = profile_device(device, name=f"rank{rank}", min_seconds=float(job.get("min_seconds", 0.05)))
        bandwidth, latency = profile_links(rank, world_size, device)
        gathered: list[Any] = [None] * world_size
        dist.all_gather_object(gathered, {"device": dataclasses.asdict(measured), "bandwidth": bandwidth, "latency": latency})
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
        meta={"host": platform.node(), "torch": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")},
    )
    return profile.to_json()


def calibrate(num_devices: int = 2, *, backend: str = "gloo", threads: int = 1, timeout_s: float = 300.0, min_seconds: float = 0.05) -> Profile:
    """Calibrate ``num_devices`` local ranks (one process each) and return the profile."""
    from rlplace.measure.distributed import launch_job

    if num_devices < 1:
        raise RlplaceError(f"calibration needs at least one device (got {num_devices})")
    job = {"kind": "calibrate", "backend": backend, "threads": threads, "timeout_s": timeout_s, "min_seconds": min_seconds}
    return Profile.from_json(launch_job(job, num_devices, timeout_s=timeout_s, threads=threads), "calibration result")


def profile_summary(profile: Profile) -> list[str]:
    """Human-readable lines: one per device, one per link."""
    lines = [
        f"{d.name} ({d.device}): matmul {d.matmul_flops / 1e9:.1f} GFLOP/s, conv {d.conv_flops / 1e9:.1f} GFLOP/s, "
        f"element-wise {d.memory_bandwidth / 1e9:.1f} GB/s, {d.op_overhead_s * 1e6:.1f} us per op"
        for d in profile.devices
    ]
    k = len(profile.devices)
    for a in range(k):
        for b in range(k):
            if a != b:
                lines.append(f"link rank{a} -> rank{b}: {profile.bandwidth[a, b] / 1e9:.2f} GB/s, {profile.latency[a, b] * 1e6:.0f} us")
    return lines


def mean_rates(profiles: Sequence[DeviceProfile]) -> dict[str, float]:
    """Mean of each rate over devices (for reports)."""
    return {key: float(np.mean([getattr(p, key) for p in profiles])) for key in ("matmul_flops", "conv_flops", "memory_bandwidth", "op_overhead_s")}
