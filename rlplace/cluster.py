"""`Cluster`: devices (speed, memory), the links between them, and the hosts they sit on.

This module holds the data model. YAML loading, unit parsing, the device catalog and the
presets live beside it (``rlplace.cluster_spec``) and build `Cluster` objects through
`Cluster.build`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from rlplace.errors import RlplaceError

ACCELERATOR = "accelerator"
CPU = "cpu"


@dataclass(frozen=True)
class Device:
    """One device.

    Attributes:
        name: unique name (``gpu0``).
        kind: catalog entry it came from (``V100-32GB``) or ``custom``.
        category: ``"accelerator"`` or ``"cpu"``; graphs with given times pick their column
            by it (see ``OpGraph.time_classes``).
        fp32_flops: dense FP32 peak, FLOP/s.
        fp16_flops: dense FP16/BF16 peak (tensor cores where the device has them), FLOP/s.
        memory: usable memory, bytes (``inf`` for an uncapped device such as a profiled CPU).
        memory_bandwidth: bytes/s.
        host: index of the machine the device sits in.
    """

    name: str
    kind: str
    category: str
    fp32_flops: float
    fp16_flops: float
    memory: float
    memory_bandwidth: float
    host: int = 0

    def peak_flops(self, precision: str) -> float:
        """Peak FLOP/s for ``precision`` (``"fp32"``, ``"fp16"`` or ``"bf16"``)."""
        if precision == "fp32":
            return self.fp32_flops
        if precision in ("fp16", "bf16"):
            return self.fp16_flops
        raise RlplaceError(f"unknown precision {precision!r}; use fp32, fp16 or bf16")


@dataclass(frozen=True, eq=False)
class Cluster:
    """Devices and the point-to-point links between them.

    Shapes (k devices):
        devices: k `Device` objects.
        bandwidth: (k, k) float64, bytes/s of the link ``src -> dst`` (``inf`` on the diagonal).
        latency: (k, k) float64, seconds per transfer on ``src -> dst`` (0 on the diagonal).
    Every ordered pair of devices has its own link; transfers on one link run one after
    another, transfers on different links overlap.
    """

    name: str
    devices: tuple[Device, ...]
    bandwidth: np.ndarray
    latency: np.ndarray
    meta: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        k = len(self.devices)
        if k == 0:
            raise RlplaceError(f"cluster {self.name!r} has no devices")
        names = [d.name for d in self.devices]
        if len(set(names)) != k:
            duplicate = next(n for n in names if names.count(n) > 1)
            raise RlplaceError(f"cluster {self.name!r}: device name {duplicate!r} appears twice")
        for attr in ("bandwidth", "latency"):
            matrix = np.array(getattr(self, attr), dtype=np.float64)
            if matrix.shape != (k, k):
                raise RlplaceError(f"cluster {self.name!r}: {attr} must be {k}x{k}")
            matrix.setflags(write=False)
            object.__setattr__(self, attr, matrix)
        off_diagonal = ~np.eye(k, dtype=bool)
        if np.any(~(self.bandwidth[off_diagonal] > 0)):
            raise RlplaceError(f"cluster {self.name!r}: every link needs a positive bandwidth")
        if np.any(~(self.latency >= 0)):
            raise RlplaceError(f"cluster {self.name!r}: link latencies must be non-negative")
        for device in self.devices:
            if not (device.fp32_flops > 0 and device.fp16_flops > 0 and device.memory > 0 and device.memory_bandwidth > 0):
                raise RlplaceError(f"cluster {self.name!r}: device {device.name!r} needs positive FLOP/s, memory and memory bandwidth")
            if device.category not in (ACCELERATOR, CPU):
                raise RlplaceError(f"cluster {self.name!r}: device {device.name!r} has category {device.category!r}; use accelerator or cpu")

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    @property
    def device_names(self) -> list[str]:
        return [d.name for d in self.devices]

    @property
    def memory(self) -> np.ndarray:
        """(k,) float64, bytes of memory per device."""
        return np.array([d.memory for d in self.devices], dtype=np.float64)

    def index_of(self, device_name: str) -> int:
        """Index of the device called ``device_name``; `RlplaceError` when there is none."""
        for index, device in enumerate(self.devices):
            if device.name == device_name:
                return index
        raise RlplaceError(f"cluster {self.name!r} has no device {device_name!r} (devices: {', '.join(self.device_names)})")

    @classmethod
    def build(
        cls,
        name: str,
        devices: Sequence[Device],
        *,
        intra_host: tuple[float, float],
        inter_host: tuple[float, float] | None = None,
        links: Mapping[tuple[str, str], tuple[float, float]] | None = None,
        meta: Mapping[str, object] | None = None,
    ) -> Cluster:
        """Cluster with uniform links inside a host and between hosts, plus overrides.

        Args:
            intra_host: (bandwidth bytes/s, latency s) between two devices of one host.
            inter_host: (bandwidth bytes/s, latency s) between hosts; defaults to ``intra_host``.
            links: per ordered pair of device names, (bandwidth, latency); the reverse direction
                gets the same values unless it is listed too.
        """
        k = len(devices)
        inter = inter_host if inter_host is not None else intra_host
        bandwidth = np.full((k, k), np.inf)
        latency = np.zeros((k, k))
        for a in range(k):
            for b in range(k):
                if a != b:
                    same_host = devices[a].host == devices[b].host
                    bandwidth[a, b], latency[a, b] = intra_host if same_host else inter
        index = {d.name: i for i, d in enumerate(devices)}
        explicit = set(links or {})
        for (src, dst), (bw, lat) in (links or {}).items():
            for end in (src, dst):
                if end not in index:
                    raise RlplaceError(f"cluster {name!r}: link names device {end!r}, which does not exist")
            a, b = index[src], index[dst]
            bandwidth[a, b], latency[a, b] = bw, lat
            if (dst, src) not in explicit:
                bandwidth[b, a], latency[b, a] = bw, lat
        return cls(name=name, devices=tuple(devices), bandwidth=bandwidth, latency=latency, meta=dict(meta or {}))
