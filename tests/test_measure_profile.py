"""The typed calibration profile (`rlplace.profile`): round trip, errors, no torch, what it sets."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlplace.cluster import Cluster, Device
from rlplace.costs import CALIBRATION_META_KEY, MESSAGE_CPU_META_KEY, CostTable, DeviceCalibration
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph
from rlplace.profile import PROFILE_VERSION, DeviceProfile, Profile

REPO = Path(__file__).resolve().parents[1]


def profile(**changes: object) -> Profile:
    devices = tuple(
        DeviceProfile(f"rank{r}", "cpu", 1e11, 5e10, 2e10, 1e-6, kind_efficiency={"matmul": 0.5}, launch_overhead_s=2e-5, op_overhead_by_class={"forward": 3e-5})
        for r in range(2)
    )
    base = Profile(
        devices, np.array([[math.inf, 1e9], [2e9, math.inf]]), np.array([[0.0, 1e-4], [2e-4, 0.0]]), "gloo", 1,
        meta={"host": "h"}, message_overhead_s=5e-5, message_cpu_s=2e-5, keep_awake=True, keep_awake_check={"split_idle": 0.03, "split_awake": 0.02, "single_idle": 0.01, "single_awake": 0.01},
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def two_cpus() -> Cluster:
    cpu = Device("d", "cpu", "cpu", 1.0, 1.0, 1e9, 1.0)
    return Cluster.build("two", [dataclasses.replace(cpu, name="a"), dataclasses.replace(cpu, name="b")], intra_host=(1e9, 1e-5))


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    original = profile()
    original.save(path)
    loaded = Profile.load(path)
    assert json.loads(path.read_text())["version"] == PROFILE_VERSION
    assert loaded.devices == original.devices
    np.testing.assert_array_equal(loaded.bandwidth, original.bandwidth)
    np.testing.assert_array_equal(loaded.latency, original.latency)
    assert (loaded.backend, loaded.threads, loaded.message_overhead_s, loaded.message_cpu_s, loaded.keep_awake) == ("gloo", 1, 5e-5, 2e-5, True)
    assert loaded.keep_awake_check == original.keep_awake_check and loaded.meta == {"host": "h"}


def test_version_1_files_load_with_keep_awake_off(tmp_path: Path) -> None:
    data = profile().to_json()
    data["version"] = 1
    del data["keep_awake"], data["keep_awake_check"]
    loaded = Profile.from_json(data)
    assert loaded.keep_awake is False and loaded.keep_awake_check == {}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(format="x"), "not an rlplace profile"),
        (lambda d: d.update(version=99), "version 99 is not supported"),
        (lambda d: d.pop("devices"), "missing field 'devices'"),
        (lambda d: d["devices"][0].pop("matmul_flops"), "missing field 'matmul_flops'"),
        (lambda d: d["devices"][0].update(matmul_flops=-1.0), "non-positive"),
        (lambda d: d["links"].update(bandwidth=[[None, 1e9]]), "2x2 matrix"),
        (lambda d: d["links"]["bandwidth"][0].__setitem__(1, 0.0), "positive bandwidths"),
        (lambda d: d["links"]["latency"][1].__setitem__(0, -1.0), "non-negative finite latencies"),
        (lambda d: d.update(keep_awake="yes"), "keep_awake must be true or false"),
        (lambda d: d["links"].update(message_cpu_s=-1e-6), "message_cpu_s must be"),
        (lambda d: d.update(devices=[]), "no devices"),
        (lambda d: d["devices"].__setitem__(0, 3), "must be an object"),
    ],
)
def test_bad_profiles_fail_with_one_clear_error(tmp_path: Path, edit, message: str) -> None:
    data = profile().to_json()
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RlplaceError, match=message) as raised:
        Profile.load(path)
    assert str(path) in str(raised.value)


def test_version_3_files_load_with_free_message_endpoints() -> None:
    data = profile().to_json()
    data["version"] = 3
    del data["links"]["message_cpu_s"]
    loaded = Profile.from_json(data)
    assert loaded.message_cpu_s == 0.0 and loaded.message_overhead_s == 5e-5
    assert MESSAGE_CPU_META_KEY not in loaded.apply(two_cpus()).meta


def test_apply_passes_the_message_cpu_cost_to_the_simulator() -> None:
    from rlplace.simulate import simulate

    cluster = profile().apply(two_cpus())
    assert cluster.meta[MESSAGE_CPU_META_KEY] == 2e-5
    assert MESSAGE_CPU_META_KEY not in profile(message_cpu_s=0.0).apply(cluster).meta  # replaced, not inherited
    one = Cluster.build("one", [Device("a", "cpu", "cpu", 1.0, 1.0, 1e9, 1.0)], intra_host=(1e9, 1e-5))
    assert MESSAGE_CPU_META_KEY not in profile().apply(one).meta  # one device sends no messages
    # a (1 GFLOP on rank0) -> b (1 GFLOP on rank1), 1 MB: the sender and the receiver each pay 20 us more.
    graph = OpGraph.build([{"name": "a", "kind": "matmul", "flops": 1e9, "output_bytes": 1e6}, {"name": "b", "kind": "matmul", "flops": 1e9}], [{"src": "a", "dst": "b", "bytes": 1e6}])
    costs = CostTable.build(graph, cluster)
    split = simulate(graph, cluster, costs, np.array([0, 1]))
    free = simulate(graph, profile(message_cpu_s=0.0).apply(two_cpus()), costs, np.array([0, 1]))
    assert split.step_time == pytest.approx(free.step_time + 4e-5, rel=1e-12)
    np.testing.assert_allclose(split.busy_time, free.busy_time + 2e-5)


def test_not_json_and_missing_files_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(RlplaceError, match=r"x\.json: not valid JSON"):
        Profile.load(tmp_path / "x.json")
    with pytest.raises(RlplaceError, match="no such file"):
        Profile.load(tmp_path / "missing.json")


def test_apply_puts_typed_calibration_links_and_keep_awake_on_the_cluster() -> None:
    cluster = profile().apply(two_cpus())
    calibration = cluster.meta[CALIBRATION_META_KEY]
    assert calibration == (DeviceCalibration({"matmul": 0.5}, 2e-5, {"forward": 3e-5}),) * 2
    assert cluster.meta["profile"] == {"backend": "gloo", "threads": 1, "keep_awake": True}
    assert cluster.devices[0].fp32_flops == 1e11 and cluster.devices[0].memory_bandwidth == 2e10
    np.testing.assert_allclose(cluster.latency, [[0.0, 1e-4 + 5e-5], [2e-4 + 5e-5, 0.0]])
    assert cluster.bandwidth[1, 0] == 2e9
    # The cost model reads it: matmul at 0.5 of 1e11 FLOP/s plus the forward class's 30 us.
    graph = OpGraph.build([{"name": "mm", "kind": "matmul", "flops": 1e9}], [])
    np.testing.assert_allclose(CostTable.build(graph, cluster).op_time[0], [1e9 / 5e10 + 3e-5] * 2)
    # Applying twice replaces, never stacks, the calibration.
    assert profile().apply(cluster).meta[CALIBRATION_META_KEY] == calibration


def test_unfitted_profile_leaves_the_default_roofline() -> None:
    plain = profile(devices=tuple(DeviceProfile(f"rank{r}", "cpu", 7e10, 5e10, 2e10, 1e-6) for r in range(2)))
    cluster = plain.apply(two_cpus())
    assert CALIBRATION_META_KEY not in cluster.meta
    assert cluster.devices[0].fp32_flops == pytest.approx(1e11)  # 7e10 / COMPUTE_EFFICIENCY["matmul"] (0.7)


def test_profile_option_never_imports_torch(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    profile().save(path)
    graph = tmp_path / "g.json"
    OpGraph.build([{"name": "a", "kind": "matmul", "flops": 1e9}, {"name": "b", "kind": "matmul", "flops": 1e9}], [{"src": "a", "dst": "b", "bytes": 1e6}], name="g").save(graph)
    placement = tmp_path / "pl.json"
    placement.write_text("[0, 1]")
    code = (
        "import sys, json\n"
        "from rlplace.cli import main\n"
        f"status = main(['simulate', {str(graph)!r}, '--placement', {str(placement)!r}, '--cluster', '2xV100-pcie', '--profile', {str(path)!r}, '--json'])\n"
        "assert status == 0, status\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "NO-TORCH"
    assert json.loads(result.stdout.strip().splitlines()[0])["step_time"] > 0


def test_loading_and_applying_a_profile_imports_no_torch(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    profile().save(path)
    code = f"import sys\nfrom rlplace.profile import Profile\nProfile.load({str(path)!r}).cluster()\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
