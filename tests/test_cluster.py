"""Tests for cluster specs: catalog, presets, the YAML loader, its errors and the YAML writer."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from rlplace.catalog import CATALOG, catalog_device, known_kinds, lookup_kind
from rlplace.cluster import Cluster, Device
from rlplace.cluster_spec import LINK_KINDS, PRESETS, cluster_from_dict, cluster_to_yaml, list_presets, load_cluster
from rlplace.errors import RlplaceError

GIB = 2**30

DESIGN_EXAMPLE = """\
name: 2x4-v100
devices:                       # kind from the catalog, or explicit numbers
  - {name: gpu0, kind: V100-32GB, host: 0}
  - {name: gpu4, tflops: 125, memory: 32GB, memory_bandwidth: 900GB/s, host: 1}
interconnect:
  intra_host: {bandwidth: 150GB/s, latency: 5us}
  inter_host: {bandwidth: 12.5GB/s, latency: 20us}
links:                         # optional overrides per pair
  - {src: gpu0, dst: gpu4, bandwidth: 10GB/s, latency: 25us}
"""

THREE_ON_ONE_HOST = """\
name: three
devices:
  - {name: a, kind: T4}
  - {name: b, kind: T4}
  - {name: c, kind: T4}
interconnect:
  intra_host: {bandwidth: 12GB/s, latency: 10us}
"""


def write(tmp_path: Path, text: str, name: str = "cluster.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def assert_same_cluster(a: Cluster, b: Cluster) -> None:
    assert a.name == b.name
    assert a.devices == b.devices
    np.testing.assert_array_equal(a.bandwidth, b.bandwidth)
    np.testing.assert_array_equal(a.latency, b.latency)


# ------------------------------------------------------------------------------------ catalog


def test_catalog_covers_the_required_kinds() -> None:
    for kind in ("V100-16GB", "V100-32GB", "A100-40GB", "A100-80GB", "H100", "T4", "A10G", "L4", "cpu"):
        assert kind in known_kinds()


@pytest.mark.parametrize(
    ("kind", "fp32_tflops", "fp16_tflops", "memory_gib", "bandwidth_gb_s"),
    [
        ("V100-16GB", 15.7, 125, 16, 900),
        ("V100-32GB", 15.7, 125, 32, 900),
        ("V100-PCIe-32GB", 14, 112, 32, 900),
        ("A100-40GB", 19.5, 312, 40, 1555),
        ("A100-80GB", 19.5, 312, 80, 2039),
        ("H100", 67, 989, 80, 3350),
        ("T4", 8.1, 65, 16, 320),
        ("L4", 30.3, 121, 24, 300),
        ("cpu", 2, 2, 256, 200),
    ],
)
def test_catalog_numbers(kind: str, fp32_tflops: float, fp16_tflops: float, memory_gib: int, bandwidth_gb_s: float) -> None:
    device = catalog_device(kind, "d0", host=3)
    assert device == Device(
        name="d0",
        kind=kind,
        category="cpu" if kind == "cpu" else "accelerator",
        fp32_flops=fp32_tflops * 1e12,
        fp16_flops=fp16_tflops * 1e12,
        memory=memory_gib * GIB,
        memory_bandwidth=bandwidth_gb_s * 1e9,
        host=3,
    )


def test_catalog_entries_are_consistent() -> None:
    for entry in CATALOG.values():
        assert entry.source
        assert entry.fp16_flops >= entry.fp32_flops
        assert entry.category in ("accelerator", "cpu")


def test_lookup_ignores_case_and_lists_kinds_when_unknown() -> None:
    assert lookup_kind("v100-32gb").kind == "V100-32GB"
    with pytest.raises(RlplaceError) as info:
        lookup_kind("V200", "devices[0].kind")
    assert "devices[0].kind" in str(info.value)
    assert "'V200'" in str(info.value)
    assert "A100-80GB" in str(info.value)


# ------------------------------------------------------------------------------------ presets

EXPECTED_PRESETS = {
    "2xV100-pcie": (2, 1),
    "4xV100-nvlink": (4, 1),
    "8xA100-nvlink": (8, 1),
    "2x4xV100": (8, 2),
    "4xT4": (4, 1),
    "2xA100+2xT4": (4, 1),
    "2xA100-nvlink": (2, 1),
    "4xA100-nvlink": (4, 1),
    "8xH100-nvlink": (8, 1),
    "4xL4": (4, 1),
    "2x8xA100": (16, 2),
}


@pytest.mark.parametrize(("name", "shape"), EXPECTED_PRESETS.items())
def test_presets_have_the_right_devices_and_hosts(name: str, shape: tuple[int, int]) -> None:
    cluster = load_cluster(name)
    devices, hosts = shape
    assert cluster.name == name
    assert cluster.num_devices == devices
    assert len({device.host for device in cluster.devices}) == hosts
    assert cluster.meta["preset"] == name


def test_list_presets_names_every_preset() -> None:
    assert list_presets() == list(PRESETS)
    assert set(EXPECTED_PRESETS) <= set(list_presets())


@pytest.mark.parametrize("name", list(PRESETS))
def test_inter_host_links_are_slower_than_intra_host(name: str) -> None:
    cluster = load_cluster(name)
    hosts = np.array([device.host for device in cluster.devices])
    same = (hosts[:, None] == hosts[None, :]) & ~np.eye(cluster.num_devices, dtype=bool)
    across = hosts[:, None] != hosts[None, :]
    assert np.all(cluster.bandwidth[same] > 0) and np.all(cluster.latency[same] > 0)
    if across.any():
        assert cluster.bandwidth[across].max() < cluster.bandwidth[same].min()
        assert cluster.latency[across].min() > cluster.latency[same].max()


def test_preset_link_numbers() -> None:
    cluster = load_cluster("2x4xV100")
    assert cluster.bandwidth[0, 1] == 150e9 and cluster.latency[0, 1] == 5e-6
    assert cluster.bandwidth[0, 4] == 12.5e9 and cluster.latency[0, 4] == 20e-6
    assert cluster.bandwidth[7, 3] == 12.5e9
    assert load_cluster("2xV100-pcie").bandwidth[0, 1] == 12e9
    assert load_cluster("8xA100-nvlink").bandwidth[2, 7] == 300e9
    assert load_cluster("2x8xA100").bandwidth[0, 8] == 25e9


def test_mixed_preset_links() -> None:
    cluster = load_cluster("2xA100+2xT4")
    assert [device.kind for device in cluster.devices] == ["A100-PCIe-40GB", "A100-PCIe-40GB", "T4", "T4"]
    assert cluster.bandwidth[0, 1] == cluster.bandwidth[1, 0] == 24e9
    assert cluster.bandwidth[0, 2] == cluster.bandwidth[3, 1] == cluster.bandwidth[2, 3] == 12e9


def test_preset_names_ignore_case() -> None:
    assert load_cluster("4xv100-NVLINK").name == "4xV100-nvlink"


# ------------------------------------------------------------------------------- YAML loading


def test_design_example_loads(tmp_path: Path) -> None:
    cluster = load_cluster(write(tmp_path, DESIGN_EXAMPLE))
    assert cluster.name == "2x4-v100"
    assert cluster.device_names == ["gpu0", "gpu4"]
    assert cluster.devices[0] == catalog_device("V100-32GB", "gpu0", host=0)
    assert cluster.devices[1] == Device(
        name="gpu4", kind="custom", category="accelerator", fp32_flops=125e12, fp16_flops=125e12, memory=32e9, memory_bandwidth=900e9, host=1
    )
    # The override replaces the inter-host default in both directions.
    np.testing.assert_array_equal(cluster.bandwidth, [[np.inf, 10e9], [10e9, np.inf]])
    np.testing.assert_array_equal(cluster.latency, [[0, 25e-6], [25e-6, 0]])
    assert cluster.meta["source"] == str(tmp_path / "cluster.yaml")


def test_link_override_applies_to_both_directions_unless_given(tmp_path: Path) -> None:
    one_way = THREE_ON_ONE_HOST + "links:\n  - {src: a, dst: b, bandwidth: 1GB/s, latency: 1ms}\n"
    cluster = load_cluster(write(tmp_path, one_way))
    assert cluster.bandwidth[0, 1] == cluster.bandwidth[1, 0] == 1e9
    assert cluster.latency[0, 1] == cluster.latency[1, 0] == 1e-3
    assert cluster.bandwidth[0, 2] == cluster.bandwidth[2, 1] == 12e9
    both_ways = one_way + "  - {src: b, dst: a, bandwidth: 2GB/s, latency: 2ms}\n"
    cluster = load_cluster(write(tmp_path, both_ways))
    assert cluster.bandwidth[0, 1] == 1e9 and cluster.bandwidth[1, 0] == 2e9
    assert cluster.latency[0, 1] == 1e-3 and cluster.latency[1, 0] == 2e-3


def test_link_override_keeps_the_default_it_does_not_give(tmp_path: Path) -> None:
    cluster = load_cluster(write(tmp_path, THREE_ON_ONE_HOST + "links:\n  - {src: a, dst: c, bandwidth: 3GB/s}\n"))
    assert cluster.bandwidth[0, 2] == 3e9 and cluster.latency[0, 2] == 10e-6


def test_kind_with_overrides_and_named_links(tmp_path: Path) -> None:
    text = """\
devices:
  - {name: g0, kind: a100-80gb, memory: 79GiB}
  - {name: g1, kind: A100-80GB, fp16_tflops: 300TFLOPS}
  - {name: host, kind: cpu, memory: unlimited}
  - {name: x, tflops: 10, fp16_tflops: 40, memory: 8GiB, memory_bandwidth: 400GB/s, category: cpu, host: 2}
interconnect: {intra_host: nvlink3, inter_host: IB-EDR}
"""
    cluster = load_cluster(write(tmp_path, text, "my-rig.yml"))
    assert cluster.name == "my-rig"
    g0, g1, host, x = cluster.devices
    assert g0.kind == "A100-80GB" and g0.memory == 79 * GIB and g0.fp16_flops == 312e12
    assert g1.fp16_flops == 300e12 and g1.memory == 80 * GIB
    assert host.category == "cpu" and math.isinf(host.memory)
    assert x == Device(name="x", kind="custom", category="cpu", fp32_flops=10e12, fp16_flops=40e12, memory=8 * GIB, memory_bandwidth=400e9, host=2)
    assert cluster.bandwidth[0, 1] == LINK_KINDS["nvlink3"].bandwidth
    assert cluster.bandwidth[0, 3] == LINK_KINDS["ib-edr"].bandwidth
    assert cluster.latency[3, 2] == LINK_KINDS["ib-edr"].latency


def test_single_device_needs_no_interconnect(tmp_path: Path) -> None:
    cluster = load_cluster(write(tmp_path, "devices: [{name: only, kind: H100}]\n"))
    assert cluster.num_devices == 1 and cluster.devices[0].kind == "H100"


def test_one_device_per_host_needs_only_inter_host() -> None:
    spec = {"devices": [{"name": "a", "kind": "T4", "host": 0}, {"name": "b", "kind": "T4", "host": 1}], "interconnect": {"inter_host": {"bandwidth": "1GB/s", "latency": "1ms"}}}
    cluster = cluster_from_dict(spec, "inline")
    assert cluster.bandwidth[0, 1] == 1e9 and cluster.latency[1, 0] == 1e-3


# --------------------------------------------------------------------------------- YAML errors

ERROR_CASES = {
    "bad unit": (THREE_ON_ONE_HOST.replace("{name: c, kind: T4}", "{name: c, kind: T4, memory: 16 GX}"), ["devices[2].memory", "'16 GX'", "16GiB"]),
    "negative": (THREE_ON_ONE_HOST.replace("{name: c, kind: T4}", "{name: c, kind: T4, memory: -16GB}"), ["devices[2].memory", "'-16GB'", "positive"]),
    "negative latency": (THREE_ON_ONE_HOST.replace("latency: 10us", "latency: -10us"), ["interconnect.intra_host.latency", "'-10us'"]),
    "bad bandwidth": (THREE_ON_ONE_HOST.replace("12GB/s", "12GB"), ["interconnect.intra_host.bandwidth", "'12GB'"]),
    "unknown kind": (THREE_ON_ONE_HOST.replace("{name: b, kind: T4}", "{name: b, kind: T5}"), ["devices[1].kind", "'T5'", "known kinds:", "V100-32GB", "L4"]),
    "unknown device key": (THREE_ON_ONE_HOST.replace("{name: a, kind: T4}", "{name: a, kind: T4, memroy: 1GB}"), ["devices[0]", "'memroy'", "allowed keys:", "memory_bandwidth"]),
    "unknown top key": (THREE_ON_ONE_HOST + "linkz: []\n", ["'linkz'", "allowed keys:", "interconnect"]),
    "unknown link key": (THREE_ON_ONE_HOST.replace("latency: 10us", "latency: 10us, jitter: 1us"), ["interconnect.intra_host", "'jitter'", "bandwidth, latency"]),
    "malformed yaml": ("devices: [{name: a, kind: T4\n", ["not valid YAML", "line"]),
    "tab yaml": ("devices:\n\t- {name: a}\n", ["not valid YAML"]),
    "duplicate device": (THREE_ON_ONE_HOST.replace("{name: c, kind: T4}", "{name: a, kind: T4}"), ["devices[2].name", "'a'", "devices[0]"]),
    "link to unknown device": (THREE_ON_ONE_HOST + "links: [{src: a, dst: z, bandwidth: 1GB/s}]\n", ["links[0].dst", "'z'", "devices: a, b, c"]),
    "self link": (THREE_ON_ONE_HOST + "links: [{src: a, dst: a, bandwidth: 1GB/s}]\n", ["links[0]", "'a'"]),
    "duplicate link": (THREE_ON_ONE_HOST + "links: [{src: a, dst: b, latency: 1us}, {src: a, dst: b, latency: 2us}]\n", ["links[1]", "links[0]"]),
    "empty link": (THREE_ON_ONE_HOST + "links: [{src: a, dst: b}]\n", ["links[0]", "bandwidth"]),
    "links not a list": (THREE_ON_ONE_HOST + "links: {src: a}\n", ["links", "must be a list"]),
    "missing numbers": ("devices: [{name: a, tflops: 10, memory: 16GB}]\n", ["devices[0]", "'memory_bandwidth'", "kind"]),
    "missing name": ("devices: [{kind: T4}]\n", ["devices[0]", "missing 'name'"]),
    "missing devices": ("name: x\n", ["missing 'devices'"]),
    "empty devices": ("devices: []\n", ["devices", "non-empty list"]),
    "empty file": ("", ["is empty"]),
    "not a mapping": ("- a\n- b\n", ["must be a mapping"]),
    "device not a mapping": ("devices: [gpu0]\n", ["devices[0]", "must be a mapping", "'gpu0'"]),
    "missing intra_host": ("devices: [{name: a, kind: T4}, {name: b, kind: T4}]\n", ["interconnect", "'intra_host'"]),
    "missing inter_host": (
        "devices: [{name: a, kind: T4}, {name: b, kind: T4, host: 1}]\ninterconnect: {intra_host: pcie3}\n",
        ["interconnect", "'inter_host'", "2 hosts"],
    ),
    "unknown named link": (THREE_ON_ONE_HOST.replace("{bandwidth: 12GB/s, latency: 10us}", "nvlink9"), ["interconnect.intra_host", "'nvlink9'", "nvlink3"]),
    "bad host": (THREE_ON_ONE_HOST.replace("{name: a, kind: T4}", "{name: a, kind: T4, host: -1}"), ["devices[0].host", "-1"]),
    "bool host": (THREE_ON_ONE_HOST.replace("{name: a, kind: T4}", "{name: a, kind: T4, host: yes}"), ["devices[0].host", "True"]),
    "bad category": (THREE_ON_ONE_HOST.replace("{name: a, kind: T4}", "{name: a, kind: T4, category: tpu}"), ["devices[0].category", "'tpu'"]),
    "bad name": ("devices: [{name: '', kind: T4}]\n", ["devices[0].name", "non-empty string"]),
    "bad tflops": ("devices: [{name: a, tflops: fast, memory: 1GB, memory_bandwidth: 1GB/s}]\n", ["devices[0].tflops", "'fast'"]),
}


@pytest.mark.parametrize(("text", "fragments"), ERROR_CASES.values(), ids=list(ERROR_CASES))
def test_spec_errors_name_the_file_and_the_field(tmp_path: Path, text: str, fragments: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(RlplaceError) as info:
        load_cluster(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    for fragment in fragments:
        assert fragment in message
    assert "\n" not in message


def test_unknown_spec_lists_presets(tmp_path: Path) -> None:
    with pytest.raises(RlplaceError) as info:
        load_cluster("16xV100")
    assert "'16xV100'" in str(info.value) and "4xV100-nvlink" in str(info.value)
    with pytest.raises(RlplaceError, match="does not exist"):
        load_cluster(tmp_path / "missing.yaml")


# -------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_through_yaml(tmp_path: Path, name: str) -> None:
    cluster = load_cluster(name)
    assert_same_cluster(load_cluster(write(tmp_path, cluster_to_yaml(cluster))), cluster)


def test_yaml_file_round_trips(tmp_path: Path) -> None:
    text = DESIGN_EXAMPLE + (
        "  - {src: gpu4, dst: gpu0, bandwidth: 4GB/s, latency: 30us}\n"
        "  - {src: gpu0, dst: gpu1, bandwidth: 100Gbps, latency: 7us}\n"
    )
    text = text.replace(
        "  - {name: gpu4,",
        "  - {name: gpu1, kind: A10G, memory: 22.5GiB, host: 0}\n"
        "  - {name: host, tflops: 1.7, memory: unlimited, memory_bandwidth: 76.8GB/s, category: cpu, host: 0}\n"
        "  - {name: gpu4, fp16_tflops: 0.3333,",
    )
    original = load_cluster(write(tmp_path, text))
    assert original.bandwidth[0, 3] == 10e9 and original.bandwidth[3, 0] == 4e9  # asymmetric pair
    written = cluster_to_yaml(original)
    again = load_cluster(write(tmp_path, written, "again.yaml"))
    assert again.name == original.name
    assert_same_cluster(again, original)
    assert cluster_to_yaml(again) == written


def test_written_yaml_is_readable() -> None:
    text = cluster_to_yaml(load_cluster("2xA100+2xT4"))
    assert "- {name: gpu0, kind: A100-PCIe-40GB, host: 0}" in text
    assert "intra_host: {bandwidth: 12GB/s, latency: 10us}" in text
    assert "- {src: gpu0, dst: gpu1, bandwidth: 24GB/s, latency: 10us}" in text


def test_custom_cluster_round_trips() -> None:
    devices = [
        dataclasses.replace(catalog_device("V100-16GB", "v"), memory=15.75 * GIB),
        Device(name="odd", kind="not-in-catalog", category="accelerator", fp32_flops=1.234567e13, fp16_flops=3e13, memory=12345678901, memory_bandwidth=1e11 / 3),
    ]
    cluster = Cluster.build("custom", devices, intra_host=(1e10 / 7, 3.3e-6), links={("v", "odd"): (np.inf, 0.0)})
    again = cluster_from_dict(yaml.safe_load(cluster_to_yaml(cluster)), "inline")
    assert again.devices[1].kind == "custom"  # kinds outside the catalog read back as custom
    assert again.devices[0] == devices[0]
    assert again.devices[1] == dataclasses.replace(devices[1], kind="custom")
    np.testing.assert_array_equal(again.bandwidth, cluster.bandwidth)
    np.testing.assert_array_equal(again.latency, cluster.latency)
