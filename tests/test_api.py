"""rlplace.place on a module, a graph and a spec; max_memory clusters; plot, report, catalog, feedback."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

import rlplace
from rlplace.api import cluster_from_max_memory
from rlplace.catalog import CATALOG
from rlplace.errors import RlplaceError
from rlplace.synthetic import synthetic_graph

GIB = 2**30


def test_max_memory_becomes_a_one_host_cluster() -> None:
    cluster = cluster_from_max_memory({0: "16GiB", 1: 2 * GIB, "cpu": "64GiB"}, device_kind="T4")
    assert cluster.name == "2xT4+cpu"
    assert [d.kind for d in cluster.devices] == ["T4", "T4", "cpu"]
    assert [d.memory for d in cluster.devices] == [16 * GIB, 2 * GIB, 64 * GIB]
    with pytest.raises(RlplaceError, match="key 'disk' is not a device"):
        cluster_from_max_memory({0: "16GiB", "disk": "1TiB"})
    with pytest.raises(RlplaceError, match="unknown device kind"):
        cluster_from_max_memory({0: "16GiB"}, device_kind="Z80")


def test_place_a_graph_and_write_every_artifact(tmp_path: Path) -> None:
    graph = synthetic_graph("synthetic:layered:n=30")
    result = rlplace.place(graph, cluster="4xT4", method="local-search", objective="pipelined", microbatches=4)
    assert result.placement.shape == (graph.num_ops,)
    assert result.step_time == pytest.approx(result.to_json()["step_time"])
    assert result.to_json()["objective"] == "pipelined"
    result.trace(tmp_path / "trace.json")
    assert json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    with pytest.raises(RlplaceError, match="does not record which op owns which parameter"):
        result.device_map()
    with pytest.raises(RlplaceError, match="does not record the module of each op"):
        result.split_spec()
    with pytest.raises(RlplaceError, match="microbatches must be a positive integer"):
        rlplace.place(graph, cluster="4xT4", microbatches=0)


def test_place_a_module_gives_a_complete_device_map() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8))
    result = rlplace.place(model, (torch.randn(4, 64),), cluster={0: "16GiB", 1: "16GiB", "cpu": "64GiB"}, device_kind="T4", method="single")
    # `single` puts everything on the device the cost model finds fastest for this tiny model: the CPU.
    assert result.devices_used() == ["cpu"]
    assert result.device_map() == {"": "cpu"}
    gpus = rlplace.place(model, (torch.randn(4, 64),), cluster={0: "16GiB", 1: "16GiB"}, device_kind="T4", method="single")
    assert gpus.device_map() == {"": 0}
    with pytest.raises(RlplaceError, match="needs example inputs"):
        rlplace.place(model)


def test_readme_api_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", readme, re.S)
    assert block, "README lost its api-example block"
    monkeypatch.chdir(tmp_path)
    exec(compile(block.group(1), "README.md", "exec"), {})
    assert (tmp_path / "placement.png").stat().st_size > 0


def test_plot_shows_every_microbatch_and_names_the_run(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from rlplace.plot import placement_figure, plot_title

    result = rlplace.place("synthetic:layered:n=30", cluster="4xT4", method="local-search", objective="pipelined", microbatches=3)
    title = plot_title(result.decision)
    assert title.startswith("synthetic:layered:n=30") and " on 4xT4: local-search, pipelined, schedule " in title
    assert "x 3 micro-batches" in title
    figure = placement_figure(result.decision)
    timeline = figure.axes[0]
    assert timeline.get_title() == title
    used = np.unique(result.placement).size
    links = len(set(zip(result.decision.result.transfers.src.tolist(), result.decision.result.transfers.dst.tolist(), strict=True)))
    assert len(timeline.get_yticklabels()) == 4 + links
    # one bar collection per (device, micro-batch, direction) that has ops: at least M per used device
    assert len(timeline.collections) >= 3 * used + links
    result.plot(tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_errors_are_footnotes_in_full_and_one_device_is_explained() -> None:
    from rich.console import Console

    from rlplace.report import decision_table, evaluation_table, one_device_note

    error = "accelerate needs a PyTorch model (MODEL as file.py:function or zoo:NAME); graph files carry no nn.Module, see [docs]"
    out = io.StringIO()
    Console(file=out, width=100).print(evaluation_table([{"model": "g.json", "cluster": "4xT4", "method": "accelerate", "error": error}]))
    text = " ".join(out.getvalue().split())
    assert "error [1]" in text and f"[1] {error}" in text
    single = rlplace.place("synthetic:layered:n=30", cluster="4xT4", method="single")
    note = one_device_note(single.decision)
    assert note is not None and note.startswith("uses only gpu") and "try --objective pipelined" in note
    assert decision_table(single.decision).caption == note
    spread = rlplace.place("synthetic:layered:n=30", cluster="4xT4", method="round-robin")
    assert one_device_note(spread.decision) is None


def test_catalog_has_the_new_data_sheets() -> None:
    expected = {  # kind: (FP32 TFLOPS, dense FP16 TFLOPS, GiB, GB/s)
        "H200": (67, 989, 140, 4800),
        "B200": (75, 2250, 179, 8000),
        "L40S": (91.6, 362.05, 48, 864),
        "MI300X": (81.7, 1307.4, 192, 5300),
    }
    for kind, (fp32, fp16, gib, bandwidth) in expected.items():
        entry = CATALOG[kind]
        assert (entry.fp32_flops, entry.fp16_flops, entry.memory, entry.memory_bandwidth) == pytest.approx((fp32 * 1e12, fp16 * 1e12, gib * GIB, bandwidth * 1e9))
        assert "data sheet" in entry.source or "specifications" in entry.source


def test_phases_are_logged_with_verbose_and_silent_without() -> None:
    from rlplace.feedback import note, phase, reporting

    stream = io.StringIO()
    with reporting(verbose=True, stream=stream):
        with phase("coarsen"):
            pass
        note("hello")
    with phase("search", "heft"):
        pass  # no reporter: nothing happens
    lines = stream.getvalue().splitlines()
    assert re.fullmatch(r"phase coarsen: \d+\.\d\d s", lines[0])
    assert lines[1] == "note: hello"
