"""Cluster specs: load a cluster YAML file or a named preset, and write a cluster back as YAML.

The YAML format (see the "Cluster YAML" section of DESIGN.md)::

    name: 2x4-v100                 # optional; defaults to the file's stem
    devices:                       # kind from the catalog, or explicit numbers
      - {name: gpu0, kind: V100-32GB, host: 0}
      - {name: gpu4, tflops: 15.7, fp16_tflops: 125, memory: 32GiB, memory_bandwidth: 900GB/s, host: 1}
    interconnect:                  # a {bandwidth, latency} mapping or a named link (pcie3, nvlink3, ib-edr, ...)
      intra_host: {bandwidth: 150GB/s, latency: 5us}
      inter_host: {bandwidth: 12.5GB/s, latency: 20us}
    links:                         # optional overrides per pair; the reverse direction gets the
      - {src: gpu0, dst: gpu4, bandwidth: 10GB/s, latency: 25us}   # same unless it is listed too

Device keys: ``name`` (required), ``kind`` (a catalog entry, see `rlplace.catalog`), ``tflops``
(dense FP32 peak, TFLOPS), ``fp16_tflops`` (dense FP16 tensor peak, TFLOPS; defaults to
``tflops``), ``memory``, ``memory_bandwidth``, ``category`` (``accelerator`` or ``cpu``), ``host``
(default 0). Without ``kind``, ``tflops``, ``memory`` and ``memory_bandwidth`` are required and the
device's kind is ``custom``; with ``kind``, any number given overrides the catalog's.
``intra_host`` is required when two devices share a host, ``inter_host`` when there are two hosts.

Every problem raises one `RlplaceError` naming the file, the field (``devices[2].memory``) and the
value.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rlplace.catalog import CATALOG, catalog_device, lookup_kind
from rlplace.cluster import ACCELERATOR, CPU, Cluster, Device
from rlplace.errors import RlplaceError
from rlplace.io import read_text_limited
from rlplace.limits import MAX_DEVICES, check_count
from rlplace.units import format_bandwidth, format_bytes, format_duration, format_tflops, parse_bandwidth, parse_bytes, parse_duration, parse_flops

_TOP_KEYS = ("name", "description", "devices", "interconnect", "links")
_DEVICE_KEYS = ("name", "kind", "tflops", "fp16_tflops", "memory", "memory_bandwidth", "category", "host")
_INTERCONNECT_KEYS = ("intra_host", "inter_host")
_LINK_VALUE_KEYS = ("bandwidth", "latency")
_LINK_KEYS = ("src", "dst", "bandwidth", "latency")


@dataclass(frozen=True)
class LinkKind:
    """A named interconnect, as seen by one point-to-point transfer.

    Attributes:
        bandwidth: bytes/s in one direction between two devices.
        latency: seconds per transfer (wire, switch and software together).
        source: where the numbers come from.
    """

    bandwidth: float
    latency: float
    source: str


#: Named interconnects, usable in a YAML ``interconnect`` entry (``intra_host: nvlink3``) and
#: used by the presets. Bandwidths are per direction between one pair of devices.
LINK_KINDS: Mapping[str, LinkKind] = {
    "pcie3": LinkKind(12e9, 10e-6, "PCIe 3.0 x16: 15.75 GB/s raw per direction, ~12 GB/s measured by CUDA bandwidthTest / peer copies"),
    "pcie4": LinkKind(24e9, 10e-6, "PCIe 4.0 x16: 31.5 GB/s raw per direction, ~24 GB/s effective"),
    "nvlink2": LinkKind(
        150e9, 5e-6, "NVLink 2 (V100 SXM2): 6 links x 25 GB/s = 150 GB/s per direction per GPU; a DGX-1 pair has 1-2 links, so this is an upper end"
    ),
    "nvlink3": LinkKind(300e9, 5e-6, "NVLink 3 (A100 SXM4) through NVSwitch: 12 links x 25 GB/s = 300 GB/s per direction (600 GB/s bidirectional)"),
    "nvlink4": LinkKind(450e9, 5e-6, "NVLink 4 (H100 SXM5) through NVSwitch: 18 links, 900 GB/s bidirectional = 450 GB/s per direction"),
    "ib-edr": LinkKind(12.5e9, 20e-6, "InfiniBand EDR 100 Gb/s = 12.5 GB/s; ~20 us end to end through NCCL/MPI (the wire alone is ~1-2 us)"),
    "ib-hdr": LinkKind(25e9, 20e-6, "InfiniBand HDR 200 Gb/s = 25 GB/s (one HDR NIC per GPU as in a DGX A100); ~20 us end to end"),
}


# ----------------------------------------------------------------------------------- presets


def _homogeneous(name: str, kind: str, *, per_host: int, hosts: int = 1, intra: str, inter: str | None = None, description: str) -> Cluster:
    """``hosts`` machines of ``per_host`` devices of catalog ``kind``, named gpu0, gpu1, ..."""
    devices = [catalog_device(kind, f"gpu{h * per_host + i}", host=h) for h in range(hosts) for i in range(per_host)]
    intra_link = LINK_KINDS[intra]
    inter_link = LINK_KINDS[inter] if inter is not None else None
    return Cluster.build(
        name,
        devices,
        intra_host=(intra_link.bandwidth, intra_link.latency),
        inter_host=(inter_link.bandwidth, inter_link.latency) if inter_link is not None else None,
        meta={"preset": name, "description": description},
    )


def _mixed_a100_t4() -> Cluster:
    # Two A100 PCIe and two T4 in one PCIe server. The T4 is a PCIe 3.0 card, so every link that
    # touches a T4 runs at PCIe 3 speed; the two A100s talk over PCIe 4 (no NVLink bridge).
    name = "2xA100+2xT4"
    devices = [catalog_device("A100-PCIe-40GB", "gpu0"), catalog_device("A100-PCIe-40GB", "gpu1"), catalog_device("T4", "gpu2"), catalog_device("T4", "gpu3")]
    pcie3, pcie4 = LINK_KINDS["pcie3"], LINK_KINDS["pcie4"]
    return Cluster.build(
        name,
        devices,
        intra_host=(pcie3.bandwidth, pcie3.latency),
        links={("gpu0", "gpu1"): (pcie4.bandwidth, pcie4.latency)},
        meta={"preset": name, "description": "2 A100 PCIe 40GB + 2 T4 in one server, PCIe 3 (PCIe 4 between the A100s)"},
    )


#: Preset clusters by name; each builds a fresh `Cluster`. Link numbers: see `LINK_KINDS`.
PRESETS: dict[str, Callable[[], Cluster]] = {
    # A PCIe 3 workstation / cloud node (e.g. two V100 PCIe cards without NVLink bridge).
    "2xV100-pcie": lambda: _homogeneous("2xV100-pcie", "V100-PCIe-32GB", per_host=2, intra="pcie3", description="2 V100 PCIe 32GB over PCIe 3 x16"),
    # One quad of a DGX-1V / AWS p3.8xlarge: four V100 SXM2 with NVLink 2.
    "4xV100-nvlink": lambda: _homogeneous("4xV100-nvlink", "V100-32GB", per_host=4, intra="nvlink2", description="4 V100 SXM2 32GB over NVLink 2"),
    # Two such machines joined by 100 Gb/s InfiniBand EDR.
    "2x4xV100": lambda: _homogeneous(
        "2x4xV100", "V100-32GB", per_host=4, hosts=2, intra="nvlink2", inter="ib-edr", description="2 hosts x 4 V100 SXM2 32GB, NVLink 2 inside, InfiniBand EDR between"
    ),
    # Four T4 in one PCIe 3 server (GCP / AWS g4dn.12xlarge style).
    "4xT4": lambda: _homogeneous("4xT4", "T4", per_host=4, intra="pcie3", description="4 T4 over PCIe 3 x16"),
    # Four L4 in one PCIe 4 server (GCP g2-standard-48 style).
    "4xL4": lambda: _homogeneous("4xL4", "L4", per_host=4, intra="pcie4", description="4 L4 over PCIe 4 x16"),
    # Four A10G over PCIe 4 (AWS g5.12xlarge).
    "4xA10G": lambda: _homogeneous("4xA10G", "A10G", per_host=4, intra="pcie4", description="4 A10G over PCIe 4 x16 (AWS g5.12xlarge)"),
    # HGX A100 boards (DGX A100, AWS p4d): NVLink 3 through NVSwitch, all pairs at full speed.
    "2xA100-nvlink": lambda: _homogeneous("2xA100-nvlink", "A100-40GB", per_host=2, intra="nvlink3", description="2 A100 SXM4 40GB over NVLink 3"),
    "4xA100-nvlink": lambda: _homogeneous("4xA100-nvlink", "A100-40GB", per_host=4, intra="nvlink3", description="4 A100 SXM4 40GB over NVLink 3"),
    "8xA100-nvlink": lambda: _homogeneous("8xA100-nvlink", "A100-40GB", per_host=8, intra="nvlink3", description="8 A100 SXM4 40GB over NVLink 3 / NVSwitch (DGX A100)"),
    # Two DGX A100 joined by HDR InfiniBand (one 200 Gb/s NIC per GPU).
    "2x8xA100": lambda: _homogeneous(
        "2x8xA100", "A100-40GB", per_host=8, hosts=2, intra="nvlink3", inter="ib-hdr", description="2 DGX A100: 8 A100 over NVSwitch inside, InfiniBand HDR between"
    ),
    # HGX H100 (DGX H100): NVLink 4 through NVSwitch.
    "8xH100-nvlink": lambda: _homogeneous("8xH100-nvlink", "H100", per_host=8, intra="nvlink4", description="8 H100 SXM5 80GB over NVLink 4 / NVSwitch (DGX H100)"),
    "2xA100+2xT4": _mixed_a100_t4,
}

_PRESETS_BY_LOWER_NAME = {name.lower(): name for name in PRESETS}


def list_presets() -> list[str]:
    """Names of the preset clusters, in the order of `PRESETS`."""
    return list(PRESETS)


# ------------------------------------------------------------------------------------ loading


def load_cluster(spec: str | Path) -> Cluster:
    """The cluster named by ``spec``: a preset name (see `list_presets`) or a YAML file path."""
    text = str(spec)
    preset = _PRESETS_BY_LOWER_NAME.get(text.lower())
    if preset is not None:
        return PRESETS[preset]()
    path = Path(text)
    if path.is_dir():
        raise RlplaceError(f"cluster {text} is a folder; give a cluster YAML file or a preset name")
    if path.is_file():
        return _load_file(path)
    if path.suffix.lower() in (".yaml", ".yml") or "/" in text:
        raise RlplaceError(f"cluster file {text} does not exist")
    raise RlplaceError(f"unknown cluster {text!r}: not a YAML file and not a preset; presets: {', '.join(list_presets())}")


def cluster_from_dict(data: Any, source: str = "cluster", *, default_name: str = "cluster") -> Cluster:
    """Build a `Cluster` from the parsed YAML ``data``; errors start with ``source`` (a file name)."""
    return _SpecReader(source).cluster(data, default_name)


def _load_file(path: Path) -> Cluster:
    text = read_text_limited(path, "cluster YAML file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RlplaceError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from None
    cluster = cluster_from_dict(data, str(path), default_name=path.stem)
    meta = {**cluster.meta, "source": str(path)}
    return Cluster(name=cluster.name, devices=cluster.devices, bandwidth=cluster.bandwidth, latency=cluster.latency, meta=meta)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return problem


class _SpecReader:
    """Reads one parsed spec; every error names ``source`` and the field."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, field: str, message: str) -> RlplaceError:
        return RlplaceError(f"{self.source}: {field}: {message}" if field else f"{self.source}: {message}")

    def parse(self, parser: Callable[..., float], value: Any, field: str, **options: Any) -> float:
        try:
            return parser(value, field, **options)
        except RlplaceError as exc:
            raise RlplaceError(f"{self.source}: {exc}") from None

    def mapping(self, value: Any, field: str, allowed: Sequence[str], required: Sequence[str] = ()) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.error(field, f"must be a mapping with keys {', '.join(allowed)}, not {_describe(value)}")
        for key in value:
            if key not in allowed:
                raise self.error(field, f"unknown key {key!r}; allowed keys: {', '.join(allowed)}")
        for key in required:
            if value.get(key) is None:
                raise self.error(field, f"missing {key!r}")
        return value

    def name(self, value: Any, field: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(field, f"must be a non-empty string, not {_describe(value)}")
        return value

    def cluster(self, data: Any, default_name: str) -> Cluster:
        if data is None:
            raise self.error("", "is empty; a cluster spec needs at least 'devices'")
        spec = self.mapping(data, "", _TOP_KEYS, required=("devices",))
        name = self.name(spec["name"], "name") if "name" in spec else default_name
        raw_devices = spec["devices"]
        if not isinstance(raw_devices, list) or not raw_devices:
            raise self.error("devices", f"must be a non-empty list of devices, not {_describe(raw_devices)}")
        check_count(len(raw_devices), MAX_DEVICES, "MAX_DEVICES", f"{self.source}: devices")
        devices = [self.device(item, f"devices[{index}]") for index, item in enumerate(raw_devices)]
        first_use: dict[str, int] = {}
        for index, device in enumerate(devices):
            if device.name in first_use:
                raise self.error(f"devices[{index}].name", f"{device.name!r} is already the name of devices[{first_use[device.name]}]")
            first_use[device.name] = index
        intra, inter = self.interconnect(spec.get("interconnect"), devices)
        links = self.links(spec.get("links"), devices, intra, inter)
        meta: dict[str, object] = {}
        if spec.get("description") is not None:
            meta["description"] = str(spec["description"])
        try:
            return Cluster.build(name, devices, intra_host=intra, inter_host=inter, links=links, meta=meta)
        except RlplaceError as exc:
            raise self.error("", str(exc)) from None

    def device(self, value: Any, field: str) -> Device:
        item = self.mapping(value, field, _DEVICE_KEYS, required=("name",))
        name = self.name(item["name"], f"{field}.name")
        host = item.get("host", 0)
        if isinstance(host, bool) or not isinstance(host, int) or host < 0:
            raise self.error(f"{field}.host", f"must be a non-negative integer, not {_describe(host)}")
        if item.get("kind") is not None:
            try:
                base = lookup_kind(item["kind"], f"{field}.kind")
            except RlplaceError as exc:
                raise RlplaceError(f"{self.source}: {exc}") from None
            kind, category = base.kind, base.category
            fp32, fp16, memory, bandwidth = base.fp32_flops, base.fp16_flops, base.memory, base.memory_bandwidth
        else:
            for key in ("tflops", "memory", "memory_bandwidth"):
                if item.get(key) is None:
                    raise self.error(field, f"missing {key!r}; give 'kind' (a catalog entry) or 'tflops', 'memory' and 'memory_bandwidth'")
            kind, category = "custom", ACCELERATOR
            fp32 = fp16 = memory = bandwidth = 0.0
        if item.get("tflops") is not None:
            fp32 = self.parse(parse_flops, item["tflops"], f"{field}.tflops")
            if item.get("kind") is None:
                fp16 = fp32
        if item.get("fp16_tflops") is not None:
            fp16 = self.parse(parse_flops, item["fp16_tflops"], f"{field}.fp16_tflops")
        if item.get("memory") is not None:
            memory = self.parse(parse_bytes, item["memory"], f"{field}.memory", allow_unlimited=True)
        if item.get("memory_bandwidth") is not None:
            bandwidth = self.parse(parse_bandwidth, item["memory_bandwidth"], f"{field}.memory_bandwidth")
        if item.get("category") is not None:
            category = item["category"]
            if category not in (ACCELERATOR, CPU):
                raise self.error(f"{field}.category", f"must be {ACCELERATOR!r} or {CPU!r}, not {_describe(category)}")
        return Device(name=name, kind=kind, category=category, fp32_flops=fp32, fp16_flops=fp16, memory=memory, memory_bandwidth=bandwidth, host=host)

    def interconnect(self, value: Any, devices: Sequence[Device]) -> tuple[tuple[float, float], tuple[float, float] | None]:
        hosts = Counter(device.host for device in devices)
        shares_host = any(count > 1 for count in hosts.values())
        spec = self.mapping(value if value is not None else {}, "interconnect", _INTERCONNECT_KEYS)
        if shares_host and spec.get("intra_host") is None:
            raise self.error("interconnect", "missing 'intra_host'; two devices share a host (e.g. intra_host: {bandwidth: 150GB/s, latency: 5us})")
        if len(hosts) > 1 and spec.get("inter_host") is None:
            raise self.error("interconnect", f"missing 'inter_host'; the devices sit on {len(hosts)} hosts (e.g. inter_host: {{bandwidth: 12.5GB/s, latency: 20us}})")
        intra = self.link_value(spec["intra_host"], "interconnect.intra_host") if spec.get("intra_host") is not None else None
        inter = self.link_value(spec["inter_host"], "interconnect.inter_host") if spec.get("inter_host") is not None else None
        if intra is None:
            # No two devices share a host, so intra-host links do not exist; any value will do.
            intra = inter if inter is not None else (1.0, 0.0)
        return intra, inter

    def link_value(self, value: Any, field: str) -> tuple[float, float]:
        if isinstance(value, str):
            link = LINK_KINDS.get(value.strip().lower())
            if link is None:
                raise self.error(field, f"unknown link {value!r}; give {{bandwidth, latency}} or one of: {', '.join(LINK_KINDS)}")
            return link.bandwidth, link.latency
        spec = self.mapping(value, field, _LINK_VALUE_KEYS, required=_LINK_VALUE_KEYS)
        return self.parse(parse_bandwidth, spec["bandwidth"], f"{field}.bandwidth", allow_unlimited=True), self.parse(parse_duration, spec["latency"], f"{field}.latency")

    def links(
        self, value: Any, devices: Sequence[Device], intra: tuple[float, float], inter: tuple[float, float] | None
    ) -> dict[tuple[str, str], tuple[float, float]]:
        if value is None:
            return {}
        if not isinstance(value, list):
            raise self.error("links", f"must be a list of {{src, dst, bandwidth, latency}}, not {_describe(value)}")
        host_of = {device.name: device.host for device in devices}
        links: dict[tuple[str, str], tuple[float, float]] = {}
        first_use: dict[tuple[str, str], int] = {}
        for index, raw in enumerate(value):
            field = f"links[{index}]"
            item = self.mapping(raw, field, _LINK_KEYS, required=("src", "dst"))
            ends = []
            for key in ("src", "dst"):
                end = item[key]
                if not isinstance(end, str) or end not in host_of:
                    raise self.error(f"{field}.{key}", f"no device called {end!r}; devices: {', '.join(host_of)}")
                ends.append(end)
            src, dst = ends
            if src == dst:
                raise self.error(field, f"src and dst are both {src!r}; a link joins two different devices")
            if (src, dst) in first_use:
                raise self.error(field, f"the link {src} -> {dst} is already given by links[{first_use[(src, dst)]}]")
            if item.get("bandwidth") is None and item.get("latency") is None:
                raise self.error(field, "give 'bandwidth', 'latency' or both")
            default = intra if host_of[src] == host_of[dst] or inter is None else inter
            bandwidth = self.parse(parse_bandwidth, item["bandwidth"], f"{field}.bandwidth", allow_unlimited=True) if item.get("bandwidth") is not None else default[0]
            latency = self.parse(parse_duration, item["latency"], f"{field}.latency") if item.get("latency") is not None else default[1]
            links[(src, dst)] = (bandwidth, latency)
            first_use[(src, dst)] = index
        return links


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, (str, int, float, bool)):
        return repr(value)
    if isinstance(value, (list, dict)) and not value:
        return f"an empty {type(value).__name__}"
    return f"a {type(value).__name__}"


# ------------------------------------------------------------------------------------ writing


def cluster_to_yaml(cluster: Cluster) -> str:
    """``cluster`` as a YAML spec that `load_cluster` reads back into an equal cluster.

    Devices of a catalog kind are written as ``kind`` plus the numbers that differ from the
    catalog; other devices as explicit numbers (their kind reads back as ``custom``). The
    interconnect is the most common link inside a host and between hosts; every pair that
    differs becomes a ``links`` entry. ``meta`` is not written.
    """
    data: dict[str, Any] = {"name": cluster.name}
    description = cluster.meta.get("description")
    if isinstance(description, str):
        data["description"] = description
    data["devices"] = [_device_spec(device) for device in cluster.devices]
    intra, inter = _common_links(cluster)
    interconnect = {}
    if intra is not None:
        interconnect["intra_host"] = _link_spec(*intra)
    if inter is not None:
        interconnect["inter_host"] = _link_spec(*inter)
    if interconnect:
        data["interconnect"] = interconnect
    links = _link_overrides(cluster, intra, inter)
    if links:
        data["links"] = links
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, allow_unicode=True, width=200)


def _device_spec(device: Device) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": device.name}
    entry = CATALOG.get(device.kind)
    if entry is not None:
        spec["kind"] = entry.kind
        if device.fp32_flops != entry.fp32_flops:
            spec["tflops"] = _tflops_value(device.fp32_flops)
        if device.fp16_flops != entry.fp16_flops:
            spec["fp16_tflops"] = _tflops_value(device.fp16_flops)
        if device.memory != entry.memory:
            spec["memory"] = format_bytes(device.memory)
        if device.memory_bandwidth != entry.memory_bandwidth:
            spec["memory_bandwidth"] = format_bandwidth(device.memory_bandwidth)
        if device.category != entry.category:
            spec["category"] = device.category
    else:
        spec["tflops"] = _tflops_value(device.fp32_flops)
        if device.fp16_flops != device.fp32_flops:
            spec["fp16_tflops"] = _tflops_value(device.fp16_flops)
        spec["memory"] = format_bytes(device.memory)
        spec["memory_bandwidth"] = format_bandwidth(device.memory_bandwidth)
        if device.category != ACCELERATOR:
            spec["category"] = device.category
    spec["host"] = device.host
    return spec


def _tflops_value(flops: float) -> float | str:
    """A bare TFLOPS number when it reads back exactly, else text with a unit."""
    text = format_tflops(flops)
    if text.endswith("FLOPS"):
        return text
    number: float = float(text)
    if number.is_integer() and abs(number) < 2**53:
        number = int(number)
    return number if parse_flops(number, "tflops") == flops else text


def _link_spec(bandwidth: float, latency: float) -> dict[str, str]:
    return {"bandwidth": format_bandwidth(bandwidth), "latency": format_duration(latency)}


def _common_links(cluster: Cluster) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """Most common (bandwidth, latency) among same-host pairs and among cross-host pairs."""
    same: Counter[tuple[float, float]] = Counter()
    across: Counter[tuple[float, float]] = Counter()
    for a, b in _ordered_pairs(cluster.num_devices):
        value = (float(cluster.bandwidth[a, b]), float(cluster.latency[a, b]))
        (same if cluster.devices[a].host == cluster.devices[b].host else across)[value] += 1
    intra = same.most_common(1)[0][0] if same else None
    inter = across.most_common(1)[0][0] if across else None
    return intra, inter


def _link_overrides(cluster: Cluster, intra: tuple[float, float] | None, inter: tuple[float, float] | None) -> list[dict[str, str]]:
    overrides = []
    for a in range(cluster.num_devices):
        for b in range(a + 1, cluster.num_devices):
            default = intra if cluster.devices[a].host == cluster.devices[b].host else inter
            forward = (float(cluster.bandwidth[a, b]), float(cluster.latency[a, b]))
            backward = (float(cluster.bandwidth[b, a]), float(cluster.latency[b, a]))
            # One entry sets both directions, so an asymmetric pair needs an entry for each.
            pairs = [(a, b, forward), (b, a, backward)] if forward != backward else []
            if forward == backward and forward != default:
                pairs = [(a, b, forward)]
            for src, dst, (bandwidth, latency) in pairs:
                overrides.append({"src": cluster.devices[src].name, "dst": cluster.devices[dst].name, **_link_spec(bandwidth, latency)})
    return overrides


def _ordered_pairs(k: int) -> list[tuple[int, int]]:
    return [(a, b) for a in range(k) for b in range(k) if a != b]
