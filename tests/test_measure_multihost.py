"""Two "hosts" for real: torchrun in two network namespaces joined by a veth pair.

Each namespace has its own network stack (no shared loopback), so the two ranks can only
reach each other through the veth link 10.77.0.1 <-> 10.77.0.2: the rendezvous, gloo's
connections and every activation and gradient cross it. Needs root and a kernel that allows
network namespaces; skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from rlplace.graph import NO_CLASS
from rlplace.measure.distributed import MeasureJob, free_port, stop_processes
from rlplace.measure.executor import reference_step
from rlplace.measure.recipe import ModelRecipe
from rlplace.measure.session import MeasureSetup, local_cpu_cluster

ADDRESSES = ("10.77.0.1", "10.77.0.2")


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)


def _namespaces_available() -> str | None:
    """None when `ip netns add` works here, else why not."""
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists():
        return "torchrun is not installed next to this Python"
    probe = f"rlp-probe-{uuid.uuid4().hex[:6]}"
    added = _ip("netns", "add", probe)
    if added.returncode != 0:
        return f"the kernel or user may not create network namespaces: {added.stderr.strip()}"
    _ip("netns", "del", probe)
    return None


@pytest.fixture
def two_hosts():
    """Two namespaces and the veth pair between them; torn down whatever happens."""
    reason = _namespaces_available()
    if reason is not None:
        pytest.skip(reason)
    tag = uuid.uuid4().hex[:5]
    names = (f"rlp{tag}a", f"rlp{tag}b")
    links = (f"rlv{tag}a", f"rlv{tag}b")
    try:
        for name in names:
            assert _ip("netns", "add", name).returncode == 0
            assert _ip("-n", name, "link", "set", "lo", "up").returncode == 0
        created = _ip("link", "add", links[0], "type", "veth", "peer", "name", links[1])
        if created.returncode != 0:
            pytest.skip(f"cannot create a veth pair: {created.stderr.strip()}")
        for name, link, address in zip(names, links, ADDRESSES, strict=True):
            assert _ip("link", "set", link, "netns", name).returncode == 0
            assert _ip("-n", name, "addr", "add", f"{address}/24", "dev", link).returncode == 0
            assert _ip("-n", name, "link", "set", link, "up").returncode == 0
        yield names, links
    finally:
        for name in names:
            _ip("netns", "del", name)  # deleting a namespace deletes its end of the veth pair
        _ip("link", "del", links[0])


def test_torchrun_across_two_namespaces_equals_unplaced_step(two_hosts, tmp_path) -> None:
    names, links = two_hosts
    recipe = ModelRecipe("rlplace.measure.models:mlp")
    setup = MeasureSetup.prepare(recipe, local_cpu_cluster(2), optimizer="sgd")
    graph = setup.graph
    placement = np.zeros(graph.num_ops, dtype=np.int64)
    forward = np.flatnonzero(~graph.is_backward)
    placement[forward[len(forward) // 2 :]] = 1
    first: dict[int, int] = {}
    for op in range(graph.num_ops):
        if graph.coloc[op] != NO_CLASS:
            placement[op] = first.setdefault(int(graph.coloc[op]), int(placement[op]))
    job = MeasureJob(
        model=recipe.to_json(), assignments=[setup.assignment(placement).node_device], num_devices=2, optimizer="sgd", steps=1, warmup=0, timeout_s=90, return_state=True
    )
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job.to_json()))
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    port = str(free_port())
    processes = []
    try:
        for rank, (name, link) in enumerate(zip(names, links, strict=True)):
            command = [
                "ip", "netns", "exec", name, torchrun, "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank),
                "--master-addr", ADDRESSES[0], "--master-port", port, "-m", "rlplace.measure.distributed",
                "--job", str(job_file), "--out", str(tmp_path / f"out{rank}"),
            ]  # fmt: skip
            environment = {**os.environ, "GLOO_SOCKET_IFNAME": link, "OMP_NUM_THREADS": "1"}
            log = (tmp_path / f"rank{rank}.log").open("wb")
            processes.append(subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        codes = [process.wait(timeout=120) for process in processes]
    finally:
        stop_processes(processes)
    logs = "\n".join((tmp_path / f"rank{rank}.log").read_text(errors="replace")[-2000:] for rank in range(2))
    assert codes == [0, 0], logs
    result = json.loads((tmp_path / "out0" / "result.json").read_text())
    entry = result["results"][0]
    assert result["world_size"] == 2 and entry["messages"] > 0
    reference_loss, reference = reference_step(setup.module, setup.inputs, optimizer="sgd")
    assert entry["loss"] == pytest.approx(reference_loss, rel=1e-6)
    for name, expected in reference["grads"].items():
        torch.testing.assert_close(torch.tensor(entry["state"]["grads"][name], dtype=torch.float64), expected.double(), atol=1e-5, rtol=1e-5)
