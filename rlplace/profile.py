"""A calibration profile of the local devices: typed, versioned, torch-free.

`rlplace calibrate` (`rlplace.measure.calibrate`, which needs torch) measures it; this module
only holds it: `Profile.load` / `Profile.save` read and write its JSON, `Profile.apply` puts
its numbers on a cluster (device rates, link latency and bandwidth, and per device a typed
`rlplace.costs.DeviceCalibration` that `rlplace.costs.CostTable` reads), so ``--profile`` on
``simulate``/``place``/``evaluate`` never imports torch.

JSON (``"format": "rlplace-profile"``): ``version`` (4; version 1 files, written before the
keep-awake check, still load with ``keep_awake`` off, version 1 and 2 files, written
before torch's pipeline stages were timed, with ``stage_overhead_s`` 0, and version 1 to 3
files, written before messages were charged to their endpoints, with ``message_cpu_s`` 0),
``backend``, ``threads``, ``devices`` (one `DeviceProfile` each), ``links`` (``bandwidth``
and ``latency`` k x k matrices with ``null`` on the diagonal, ``message_overhead_s``,
``message_cpu_s``), ``keep_awake`` and
``keep_awake_check`` (see `Profile`), ``stage_overhead_s``, ``meta``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlplace.cluster import CPU, Cluster, Device
from rlplace.costs import BANDWIDTH_EFFICIENCY, CALIBRATION_META_KEY, COMPUTE_EFFICIENCY, MESSAGE_CPU_META_KEY, DeviceCalibration
from rlplace.errors import RlplaceError
from rlplace.io import read_json, write_text_atomic

PROFILE_FORMAT = "rlplace-profile"
PROFILE_VERSION = 4
#: Versions `Profile.from_json` reads.
READABLE_VERSIONS = (1, 2, 3, 4)
#: Cluster meta key of `Profile.stage_overhead_s` (seconds), set by `Profile.apply` when positive.
STAGE_OVERHEAD_META_KEY = "pipeline_stage_overhead_s"


@dataclass(frozen=True)
class DeviceProfile:
    """Measured rates of one device.

    Attributes:
        name: ``rank<r>``.
        device: torch device it ran on (``cpu``, ``cuda:0``).
        matmul_flops, conv_flops: FLOP/s reached by fp32 matmuls and convolutions.
        memory_bandwidth: bytes/s read plus written by element-wise ops.
        op_overhead_s: fixed time of one op through the executor (dispatch, Python).
        kind_efficiency: per op kind of `rlplace.costs`, the fraction of ``matmul_flops``
            (compute-bound ops) and of ``memory_bandwidth`` (memory-bound ops) that ops of the
            kind reach in whole training steps, fitted on the calibration models (empty when
            not fitted).
        launch_overhead_s: fitted fixed cost per forward op of a training step, None when not fitted.
        op_overhead_by_class: fitted fixed cost (s) per op of each `rlplace.costs.OVERHEAD_CLASSES`
            entry (empty in profiles fitted with a single launch cost).
        fit: calibration model -> (measured, fitted) step time in seconds on this device.
    """

    name: str
    device: str
    matmul_flops: float
    conv_flops: float
    memory_bandwidth: float
    op_overhead_s: float
    kind_efficiency: Mapping[str, float] = dataclasses.field(default_factory=dict)
    launch_overhead_s: float | None = None
    fit: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    op_overhead_by_class: Mapping[str, float] = dataclasses.field(default_factory=dict)

    @property
    def fitted(self) -> bool:
        """Whether per-kind efficiencies and a launch cost were fitted on training steps."""
        return bool(self.kind_efficiency) and self.launch_overhead_s is not None

    def calibration(self) -> DeviceCalibration | None:
        """What the cost model takes from this device (None: not fitted, roofline defaults)."""
        if not self.fitted:
            return None
        return DeviceCalibration(dict(self.kind_efficiency), float(self.launch_overhead_s or 0.0), dict(self.op_overhead_by_class))

    @classmethod
    def from_json(cls, entry: Any) -> DeviceProfile:
        if not isinstance(entry, Mapping):
            raise TypeError(f"a device entry must be an object, not {type(entry).__name__}")
        launch = entry.get("launch_overhead_s")
        return cls(
            name=str(entry["name"]),
            device=str(entry["device"]),
            matmul_flops=float(entry["matmul_flops"]),
            conv_flops=float(entry["conv_flops"]),
            memory_bandwidth=float(entry["memory_bandwidth"]),
            op_overhead_s=float(entry["op_overhead_s"]),
            kind_efficiency={str(k): float(v) for k, v in (entry.get("kind_efficiency") or {}).items()},
            launch_overhead_s=None if launch is None else float(launch),
            fit={str(k): (float(v[0]), float(v[1])) for k, v in (entry.get("fit") or {}).items()},
            op_overhead_by_class={str(k): float(v) for k, v in (entry.get("op_overhead_by_class") or {}).items()},
        )


#: Cluster ``meta`` key holding a `ReceiveCost` as a dict (`ReceiveCost.to_json`).
RECEIVE_COST_META_KEY = "receive_cost"


@dataclass(frozen=True)
class ReceiveCost:
    """Seconds of compute one message adds to the op that receives it, on CPU ranks: the
    measured prediction charges it in place of ``message_cpu_s`` (`rlplace.measure.receive`).

    Attributes:
        idle_s: the cost after a long idle wait (the limit as the wait grows).
        idle_time_s: how fast the cost approaches ``idle_s``: after waiting w seconds idle
            the receiver pays ``idle_s * (1 - exp(-w / idle_time_s))``.
        busy_s: the cost when the receiver is computing when the message arrives.
    """

    idle_s: float
    idle_time_s: float
    busy_s: float

    def __post_init__(self) -> None:
        values = (self.idle_s, self.idle_time_s, self.busy_s)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in values) or self.idle_time_s <= 0:
            raise RlplaceError(f"receive cost needs idle_s >= 0, idle_time_s > 0 and busy_s >= 0 (seconds), got {values}; recalibrate")

    def idle(self, waited: np.ndarray) -> np.ndarray:
        """Cost (s) of receives after idle waits ``waited`` (s); shapes (x,) -> (x,)."""
        return self.idle_s * -np.expm1(-np.asarray(waited, dtype=np.float64) / self.idle_time_s)

    def to_json(self) -> dict[str, float]:
        return {"idle_s": self.idle_s, "idle_time_s": self.idle_time_s, "busy_s": self.busy_s}

    @classmethod
    def from_json(cls, data: Any, source: str = "profile") -> ReceiveCost:
        if not isinstance(data, Mapping):
            raise RlplaceError(f"{source}: receive_cost must be a mapping with idle_s, idle_time_s and busy_s; recalibrate")
        try:
            return cls(float(data["idle_s"]), float(data["idle_time_s"]), float(data["busy_s"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise RlplaceError(f"{source}: receive_cost needs numbers idle_s, idle_time_s and busy_s ({exc}); recalibrate") from None


def cluster_receive_cost(cluster: Any) -> ReceiveCost | None:
    """The `ReceiveCost` in ``cluster.meta`` (`RECEIVE_COST_META_KEY`), None when absent."""
    data = cluster.meta.get(RECEIVE_COST_META_KEY)
    return None if data is None else ReceiveCost.from_json(data, f"cluster {cluster.name!r}")


@dataclass(frozen=True, eq=False)
class Profile:
    """A calibration of k devices.

    Shapes (k devices):
        devices: k `DeviceProfile`.
        bandwidth: (k, k) bytes/s from rank a to rank b (``inf`` on the diagonal).
        latency: (k, k) seconds one way from a to b (0 on the diagonal).

    Attributes:
        backend, threads: how the ranks ran (gloo/nccl, torch threads per rank).
        message_overhead_s: what one message costs a training step through the executor
            beyond the link's latency and bandwidth and its endpoints' ``message_cpu_s``;
            `apply` adds it to every link's latency.
        message_cpu_s: compute time one message costs each of its two endpoints (the
            sender's copy and send, the receiver's wake-up and copy, the communication
            threads' delays), which on CPU ranks competes with their ops; fitted at
            calibration so that the simulator reproduces the measured wall time of two split
            calibration models (`rlplace.measure.calibrate.fit_message_cpu`), 0 when not fitted. `apply` puts it
            in ``meta[rlplace.costs.MESSAGE_CPU_META_KEY]`` when positive, and the simulator
            charges it to the sending and the receiving op (`rlplace.simulate.endpoint_time`).
        keep_awake: whether measurements on this host should keep idle cores busy
            (`rlplace.measure.awake`): set by the check calibration runs, only when it
            made a message-heavy split faster without slowing a one-rank step.
        keep_awake_check: that check's median step times (s), keys ``split_idle``,
            ``split_awake``, ``single_idle``, ``single_awake`` (empty when not run).
        stage_overhead_s: main-thread CPU seconds one *stage action* of
            ``torch.distributed.pipelining`` (one micro-batch's forward or backward through
            one ``PipelineStage``, with its P2P posting and gradient accumulation) costs
            beyond the ops the cost model charges; measured on a tiny pipeline at calibration
            (`rlplace.runtime.overhead`), 0 when not measured. `apply` passes it on in
            ``meta[STAGE_OVERHEAD_META_KEY]``; ``rlplace run``'s prediction charges it once per stage, micro-batch
            and direction (`rlplace.runtime.stages`).
        receive_cost: what a message costs its receiver depending on whether it was
            computing or how long it waited idle (`ReceiveCost`), fitted on measured splits
            of whole models (`rlplace.measure.receive_fit.fit_receive_cost`: ``rlplace
            calibrate --receive-cost``, and ``benchmarks/fidelity.py`` on its development
            half); None unless set (plain calibration leaves it out). `apply` puts it in
            ``meta[RECEIVE_COST_META_KEY]``; the measured
            prediction (`rlplace.measure.assign.simulate_as_executed`) then charges it in place
            of ``message_cpu_s``, which search keeps using.
        meta: host, torch version, creation time.
    """

    devices: tuple[DeviceProfile, ...]
    bandwidth: np.ndarray
    latency: np.ndarray
    backend: str = "gloo"
    threads: int = 1
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    message_overhead_s: float = 0.0
    keep_awake: bool = False
    keep_awake_check: Mapping[str, float] = dataclasses.field(default_factory=dict)
    stage_overhead_s: float = 0.0
    message_cpu_s: float = 0.0
    receive_cost: ReceiveCost | None = None

    # ------------------------------------------------------------------ JSON
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
            "links": {"bandwidth": matrix(self.bandwidth), "latency": matrix(self.latency), "message_overhead_s": self.message_overhead_s, "message_cpu_s": self.message_cpu_s}
            | ({"receive_cost": self.receive_cost.to_json()} if self.receive_cost is not None else {}),
            "keep_awake": self.keep_awake,
            "keep_awake_check": dict(self.keep_awake_check),
            "stage_overhead_s": self.stage_overhead_s,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_json(cls, data: Any, source: str = "profile") -> Profile:
        """The profile in ``data``; `RlplaceError` naming ``source`` and what is wrong otherwise."""
        if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
            raise RlplaceError(f'{source}: not an rlplace profile (expected "format": "{PROFILE_FORMAT}"); write one with `rlplace calibrate --out FILE`')
        version = data.get("version")
        if version not in READABLE_VERSIONS:
            raise RlplaceError(f"{source}: profile version {version!r} is not supported (this rlplace reads {', '.join(map(str, READABLE_VERSIONS))}); recalibrate")
        try:
            devices = tuple(DeviceProfile.from_json(entry) for entry in data["devices"])
            if not devices:
                raise ValueError("the profile has no devices")
            k = len(devices)
            links = data["links"]
            for name in ("bandwidth", "latency"):
                rows = links[name]
                if len(rows) != k or any(len(row) != k for row in rows):
                    raise ValueError(f"links.{name} must be a {k}x{k} matrix for {k} devices")
            bandwidth = np.array([[math.inf if a == b else float(links["bandwidth"][a][b]) for b in range(k)] for a in range(k)])
            latency = np.array([[0.0 if a == b else float(links["latency"][a][b]) for b in range(k)] for a in range(k)])
            overhead = float(links.get("message_overhead_s", 0.0) or 0.0)
            endpoint = float(links.get("message_cpu_s", 0.0) or 0.0)
            receive = None if links.get("receive_cost") is None else ReceiveCost.from_json(links["receive_cost"], source)
            keep_awake = data.get("keep_awake", False)
            if not isinstance(keep_awake, bool):
                raise ValueError(f"keep_awake must be true or false, not {keep_awake!r}")
            check = {str(key): float(value) for key, value in (data.get("keep_awake_check") or {}).items()}
            threads = int(data.get("threads", 0))
            stage_overhead = float(data.get("stage_overhead_s", 0.0) or 0.0)
            meta = data.get("meta") or {}
            if not isinstance(meta, dict):
                raise ValueError("meta must be an object")
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise RlplaceError(f"{source}: malformed profile ({detail}); recalibrate with `rlplace calibrate`") from None
        for device in devices:
            rates = (device.matmul_flops, device.conv_flops, device.memory_bandwidth, *device.kind_efficiency.values())
            overheads = (device.op_overhead_s, device.launch_overhead_s or 0.0, *device.op_overhead_by_class.values())
            if not all(math.isfinite(r) and r > 0 for r in rates) or not all(math.isfinite(o) and o >= 0 for o in overheads):
                raise RlplaceError(f"{source}: device {device.name!r} has a non-positive or non-finite rate; recalibrate")
        off = ~np.eye(k, dtype=bool)
        if not (np.all(bandwidth[off] > 0) and np.all(np.isfinite(latency)) and np.all(latency >= 0)):
            raise RlplaceError(f"{source}: links need positive bandwidths and non-negative finite latencies; recalibrate")
        if not (math.isfinite(overhead) and overhead >= 0 and math.isfinite(endpoint) and endpoint >= 0):
            raise RlplaceError(f"{source}: message_overhead_s and message_cpu_s must be non-negative numbers; recalibrate")
        if not (math.isfinite(stage_overhead) and stage_overhead >= 0):
            raise RlplaceError(f"{source}: stage_overhead_s must be a non-negative number; recalibrate")
        return cls(devices, bandwidth, latency, str(data.get("backend", "gloo")), threads, dict(meta), overhead, keep_awake, check, stage_overhead, endpoint, receive)

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        """Read a profile written by `save` (`RlplaceError` naming the file if it is bad)."""
        return cls.from_json(read_json(path), str(path))

    def save(self, path: str | Path) -> None:
        """Write the profile as JSON, atomically (no half-written file on failure)."""
        write_text_atomic(path, json.dumps(self.to_json(), indent=2) + "\n")

    # ------------------------------------------------------------------ use
    def apply(self, cluster: Cluster) -> Cluster:
        """A copy of ``cluster`` whose devices and links carry the calibrated numbers.

        Device i takes profile device i (a one-device profile serves every device; a profile
        of more devices gives the first k). A fitted device's FP32 FLOP/s and memory bandwidth
        become the measured matmul rate and element-wise bandwidth, and its
        `rlplace.costs.DeviceCalibration` (per-kind efficiencies, per-class op costs) goes to
        the cost model. Unfitted: FP32 FLOP/s becomes ``matmul_flops /
        COMPUTE_EFFICIENCY["matmul"]`` and bandwidth ``memory_bandwidth /
        BANDWIDTH_EFFICIENCY``, so the default roofline gives a matmul and a streaming op
        exactly their measured rates. FP16 peaks keep their ratio to FP32. Links take the
        profile's matrix when it covers k devices, else the mean measured link for every pair;
        ``message_overhead_s`` is added to every link's latency. Memory, hosts and names are kept.

        Shapes: the profile's (c, c) link matrices become the cluster's (k, k) ones (c >= k).
        """
        k = cluster.num_devices
        count = len(self.devices)
        if 1 < count < k:
            raise RlplaceError(f"the profile calibrates {count} devices but cluster {cluster.name!r} has {k}; calibrate with {k} ranks or use a one-device profile")
        devices = []
        calibration: list[DeviceCalibration | None] = []
        for index, device in enumerate(cluster.devices):
            measured = self.devices[index if count >= k else 0]
            fp32 = measured.matmul_flops if measured.fitted else measured.matmul_flops / COMPUTE_EFFICIENCY["matmul"]
            bandwidth = measured.memory_bandwidth if measured.fitted else measured.memory_bandwidth / BANDWIDTH_EFFICIENCY
            devices.append(dataclasses.replace(device, fp32_flops=fp32, fp16_flops=fp32 * (device.fp16_flops / device.fp32_flops), memory_bandwidth=bandwidth))
            calibration.append(measured.calibration())
        diagonal = np.eye(k, dtype=bool)
        if count >= k and k > 1:
            bandwidth_matrix, latency_matrix = self.bandwidth[:k, :k].copy(), self.latency[:k, :k].copy()
        elif count > 1:
            off = ~np.eye(count, dtype=bool)
            bandwidth_matrix = np.where(diagonal, math.inf, float(np.mean(self.bandwidth[off])))
            latency_matrix = np.where(diagonal, 0.0, float(np.mean(self.latency[off])))
        else:
            bandwidth_matrix, latency_matrix = cluster.bandwidth, cluster.latency
        latency_matrix = np.where(diagonal, 0.0, latency_matrix + self.message_overhead_s)
        meta: dict[str, object] = {key: value for key, value in cluster.meta.items() if key != CALIBRATION_META_KEY}
        meta["profile"] = {"backend": self.backend, "threads": self.threads, "keep_awake": self.keep_awake}
        if self.stage_overhead_s > 0:
            meta[STAGE_OVERHEAD_META_KEY] = self.stage_overhead_s
        meta.pop(MESSAGE_CPU_META_KEY, None)
        if self.message_cpu_s > 0 and k > 1:
            meta[MESSAGE_CPU_META_KEY] = self.message_cpu_s
        meta.pop(RECEIVE_COST_META_KEY, None)
        if self.receive_cost is not None and k > 1:
            meta[RECEIVE_COST_META_KEY] = self.receive_cost.to_json()
        if any(entry is not None for entry in calibration):
            meta[CALIBRATION_META_KEY] = tuple(calibration)
        return Cluster(name=f"{cluster.name}+profile", devices=tuple(devices), bandwidth=bandwidth_matrix, latency=latency_matrix, meta=meta)

    def cluster(self, *, name: str = "calibrated") -> Cluster:
        """A cluster made of the profiled devices themselves (CPU ranks: category ``cpu``).

        Memory is the host's RAM (``psutil`` when available, else unlimited).
        """
        try:
            import psutil

            memory = float(psutil.virtual_memory().total)
        except ImportError:
            memory = math.inf
        base = []
        for measured in self.devices:
            category = CPU if measured.device.startswith("cpu") else "accelerator"
            base.append(Device(name=measured.name, kind="calibrated", category=category, fp32_flops=1.0, fp16_flops=1.0, memory=memory, memory_bandwidth=1.0))
        k = len(base)
        cluster = Cluster(name=name, devices=tuple(base), bandwidth=np.where(np.eye(k, dtype=bool), math.inf, 1.0), latency=np.zeros((k, k)))
        return self.apply(cluster)

    def summary(self) -> list[str]:
        """Human-readable lines: one per device, one per link, the keep-awake decision."""
        lines = []
        for d in self.devices:
            lines.append(
                f"{d.name} ({d.device}): matmul {d.matmul_flops / 1e9:.1f} GFLOP/s, conv {d.conv_flops / 1e9:.1f} GFLOP/s, "
                f"element-wise {d.memory_bandwidth / 1e9:.1f} GB/s, {d.op_overhead_s * 1e6:.1f} us per bare op"
            )
            if d.fitted:
                efficiencies = ", ".join(f"{kind} {value:.2f}" for kind, value in d.kind_efficiency.items())
                errors = [abs(f - m) / m for m, f in d.fit.values() if m > 0]
                overheads = ", ".join(f"{name} {value * 1e6:.1f}" for name, value in d.op_overhead_by_class.items()) or f"{(d.launch_overhead_s or 0.0) * 1e6:.1f}"
                lines.append(
                    f"  fitted: us per op {overheads}; efficiency {efficiencies}; "
                    f"median fit error {statistics.median(errors) * 100 if errors else float('nan'):.1f}% over {len(errors)} calibration models"
                )
        k = len(self.devices)
        for a in range(k):
            for b in range(k):
                if a != b:
                    lines.append(f"link rank{a} -> rank{b}: {self.bandwidth[a, b] / 1e9:.2f} GB/s, {self.latency[a, b] * 1e6:.0f} us")
        if k > 1:
            lines.append(f"executor overhead per message: {self.message_overhead_s * 1e6:.0f} us (added to every link's latency)")
            lines.append(f"compute per message at each endpoint: {self.message_cpu_s * 1e6:.0f} us (charged to the sending and the receiving op)")
            if self.receive_cost is not None:
                r = self.receive_cost
                lines.append(
                    f"measured prediction, per message received: {r.busy_s * 1e6:.0f} us while computing, "
                    f"{r.idle_s * 1e6:.0f} us x (1 - exp(-wait / {r.idle_time_s * 1e3:.2f} ms)) after waiting idle"
                )
            lines.append(f"torch pipeline stage overhead: {self.stage_overhead_s * 1e6:.0f} us per stage, micro-batch and direction (rlplace run's prediction)")
        check = self.keep_awake_check
        if check:
            lines.append(
                f"keep-awake check: split step {check.get('split_idle', math.nan) * 1e3:.1f} ms idle cores vs {check.get('split_awake', math.nan) * 1e3:.1f} ms kept awake, "
                f"one rank {check.get('single_idle', math.nan) * 1e3:.1f} vs {check.get('single_awake', math.nan) * 1e3:.1f} ms "
                f"-> keep-awake {'on' if self.keep_awake else 'off'} by default"
            )
        else:
            lines.append(f"keep-awake {'on' if self.keep_awake else 'off'} by default (not checked)")
        return lines


# Function forms (older call sites and the CLI).
def load_profile(path: str | Path) -> Profile:
    """`Profile.load`."""
    return Profile.load(path)


def write_profile(profile: Profile, path: str | Path) -> None:
    """`Profile.save`."""
    profile.save(path)


def apply_profile(cluster: Cluster, profile: Profile | str | Path) -> Cluster:
    """`Profile.apply` (a path is loaded first)."""
    return (profile if isinstance(profile, Profile) else Profile.load(profile)).apply(cluster)


def profile_cluster(profile: Profile, *, name: str = "calibrated") -> Cluster:
    """`Profile.cluster`."""
    return profile.cluster(name=name)


def profile_summary(profile: Profile) -> list[str]:
    """`Profile.summary`."""
    return profile.summary()


def mean_rates(profiles: Sequence[DeviceProfile]) -> dict[str, float]:
    """Mean of each rate over devices (for reports)."""
    return {key: float(np.mean([getattr(p, key) for p in profiles])) for key in ("matmul_flops", "conv_flops", "memory_bandwidth", "op_overhead_s")}
