"""Hostile input: every case exits 2 with exactly one ``error:`` line, no traceback, nothing
on stdout and no output file (issue 13). Cases run through ``rlplace.cli.main`` in-process;
a few run as subprocesses too; hypothesis feeds random files and numbers to the readers.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlplace.cli import main
from rlplace.graph import OpGraph
from rlplace.limits import MAX_DEVICES, MAX_MICROBATCHES, MAX_SEED

REPO = Path(__file__).resolve().parents[1]
TINY_MODELS = REPO / "tests" / "fixtures" / "tiny_models.py"
CHECKPOINT = REPO / "checkpoints" / "default"


# ----------------------------------------------------------------------------- inputs
def tiny_graph_json() -> dict:
    """A 3-op chain a -> b -> c (1 GFLOP, 4 MB of parameters each), as rlplace graph JSON."""
    graph = OpGraph.build(
        [{"name": n, "kind": "matmul", "flops": 1e9, "bytes_accessed": 1e6, "output_bytes": 1e6, "param_bytes": 4e6} for n in "abc"],
        [{"src": "a", "dst": "b", "bytes": 1e6}, {"src": "b", "dst": "c", "bytes": 1e6}],
        name="tiny",
    )
    return graph.to_json_dict()


def dnn_json(**top) -> dict:
    """A 3-node dnn-partitioning chain; ``top`` overrides top-level fields."""
    data = {
        "maxSizePerFPGA": 1e9,
        "maxFPGAs": 2,
        "maxCPUs": 1,
        "nodes": [{"id": i, "supportedOnFpga": 1, "cpuLatency": 3.0, "fpgaLatency": 1.0, "size": 10} for i in range(3)],
        "edges": [{"sourceId": 0, "destId": 1, "cost": 1.0}, {"sourceId": 1, "destId": 2, "cost": 1.0}],
    }
    data.update(top)
    return data


def _graph_with(edit) -> str:
    data = tiny_graph_json()
    edit(data)
    return json.dumps(data)


def _set(path: tuple, value):
    def edit(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


#: File name -> content (str or bytes) of every input the cases use.
TEXT_FILES: dict[str, str | bytes] = {
    "g.json": json.dumps(tiny_graph_json()),
    "p.json": "[0, 0, 1]",
    "dnn.json": json.dumps(dnn_json()),
    # graph files
    "bad_utf8.json": b"\xff\xfe[1, 2]",
    "nested.json": "[" * 200_000 + "]" * 200_000,
    "truncated.json": json.dumps(tiny_graph_json())[:-7],
    "empty.json": "",
    "list.json": "[1, 2, 3]",
    "string.json": '"graph"',
    "wrong_format.json": _graph_with(_set(("format",), "other")),
    "wrong_version.json": _graph_with(_set(("version",), 99)),
    "ops_not_list.json": _graph_with(_set(("ops",), {"a": 1})),
    "zero_ops.json": _graph_with(lambda d: d.update(ops=[], edges=[])),
    "src_fraction.json": _graph_with(_set(("edges", 0, "src"), 0.7)),
    "src_huge.json": _graph_with(_set(("edges", 0, "src"), 10**29)),
    "src_negative.json": _graph_with(_set(("edges", 0, "src"), -1)),
    "src_string.json": _graph_with(_set(("edges", 0, "src"), "a")),
    "src_bool.json": _graph_with(_set(("edges", 0, "src"), True)),
    "dangling.json": _graph_with(_set(("edges", 0, "dst"), 7)),
    "cycle.json": _graph_with(lambda d: d["edges"].append({"src": 2, "dst": 0, "bytes": 1.0})),
    "self_loop.json": _graph_with(_set(("edges", 0, "dst"), 0)),
    "duplicate_edge.json": _graph_with(lambda d: d["edges"].append(dict(d["edges"][0]))),
    "duplicate_op.json": _graph_with(_set(("ops", 1, "name"), "a")),
    "negative_flops.json": _graph_with(_set(("ops", 0, "flops"), -1.0)),
    "huge_flops.json": _graph_with(_set(("ops", 0, "flops"), 1e300)),
    "string_flops.json": _graph_with(_set(("ops", 0, "flops"), "many")),
    "negative_bytes.json": _graph_with(_set(("edges", 0, "bytes"), -5.0)),
    "missing_name.json": _graph_with(lambda d: d["ops"][0].pop("name")),
    "coloc_fraction.json": _graph_with(_set(("ops", 0, "coloc"), 1.5)),
    "nan_literal.json": json.dumps(tiny_graph_json()).replace('"flops": 1000000000.0', '"flops": NaN', 1),
    "infinity_literal.json": json.dumps(tiny_graph_json()).replace('"flops": 1000000000.0', '"flops": Infinity', 1),
    "huge_int.json": "[" + "9" * 5000 + "]",
    # dnn-partitioning files
    "fpga_infinity.json": json.dumps(dnn_json()).replace('"maxFPGAs": 2', '"maxFPGAs": Infinity'),
    "fpga_nan.json": json.dumps(dnn_json()).replace('"maxFPGAs": 2', '"maxFPGAs": NaN'),
    "fpga_1e300.json": json.dumps(dnn_json(maxFPGAs=1e300)),
    "fpga_fraction.json": json.dumps(dnn_json(maxFPGAs=1.5)),
    "fpga_negative.json": json.dumps(dnn_json(maxFPGAs=-1)),
    "fpga_too_many.json": json.dumps(dnn_json(maxFPGAs=MAX_DEVICES)),
    "fpga_string.json": json.dumps(dnn_json(maxFPGAs="2")),
    "dnn_no_nodes.json": json.dumps({k: v for k, v in dnn_json().items() if k != "nodes"}),
    "dnn_huge_latency.json": json.dumps(dnn_json(nodes=[{"id": i, "cpuLatency": 1e308, "fpgaLatency": 1e308} for i in range(3)])),
    "dnn_memory_zero.json": json.dumps(dnn_json(maxSizePerFPGA=0)),
    # placements
    "p_huge_entry.json": f"[0, 0, {10**29}]",
    "p_last_1e9.json": "[0, 0, 1000000000]",
    "p_negative.json": "[0, -1, 1]",
    "p_fraction.json": "[0, 0.7, 1]",
    "p_short.json": "[0, 1]",
    "p_long.json": "[0, 1, 1, 0]",
    "p_device_99.json": "[0, 0, 99]",
    "p_strings.json": '["0", "0", "1"]',
    "p_bools.json": "[true, false, true]",
    "p_empty.json": "[]",
    "p_nested.json": "[[0], [0], [1]]",
    "p_unknown_op.json": '{"a": "gpu0", "b": "gpu0", "zzz": "gpu1"}',
    "p_unknown_device.json": '{"a": "gpu0", "b": "gpu0", "c": "tpu9"}',
    "p_missing_op.json": '{"a": "gpu0", "b": "gpu0"}',
    "p_number.json": "42",
    "p_over_memory.json": "[0, 0, 0]",
    # clusters
    "bad.yaml": "devices: [unclosed",
    "empty.yaml": "",
    "no_devices.yaml": "name: x\n",
    "devices_not_list.yaml": "devices: 3\n",
    "unknown_kind.yaml": "devices:\n  - {name: g0, kind: NOPE-9000}\n",
    "unknown_key.yaml": "devices:\n  - {name: g0, kind: T4, colour: red}\n",
    "too_many.yaml": "devices:\n" + "".join(f"  - {{name: g{i}, kind: T4}}\n" for i in range(MAX_DEVICES + 1)),
    "bad_utf8.yaml": b"devices:\n  - {name: \xff, kind: T4}\n",
    "negative_memory.yaml": "devices:\n  - {name: g0, tflops: 10, memory: -1GiB, memory_bandwidth: 900GB/s}\n",
    # tiny memory cluster: 3 x 4 MB of parameters do not fit one 8 MB device
    "small.yaml": "devices:\n"
    + "".join(f"  - {{name: d{i}, tflops: 10, memory: 8MB, memory_bandwidth: 100GB/s}}\n" for i in range(2))
    + "interconnect: {intra_host: pcie3}\n",
    # model files
    "exits.py": "import sys\n\ndef build():\n    sys.exit(0)\n",
    "exits_on_import.py": "import sys\nsys.exit(3)\n\ndef build():\n    pass\n",
    "raises.py": "def build():\n    raise ValueError('no weights')\n",
    "returns_none.py": "def build():\n    return None\n",
    "interrupts.py": "def build():\n    raise GeneratorExit('odd')\n",
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hostile-inputs")
    for name, content in TEXT_FILES.items():
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    (folder / "adir").mkdir()
    (folder / "adir.yaml").mkdir()
    return folder


# ----------------------------------------------------------------------------- cases
# {i}: the inputs folder; {o}: an empty output folder (must stay empty but for what a case makes).
SIM = ["simulate", "{i}/g.json", "--cluster", "2xV100-pcie"]
PLACE = ["place", "{i}/g.json", "--cluster", "2xV100-pcie", "--method", "round-robin"]

GRAPH_FILE_CASES = [
    ("bad_utf8.json", "not UTF-8"),
    ("nested.json", "nested too deeply"),
    ("truncated.json", "not valid JSON"),
    ("empty.json", "not valid JSON"),
    ("list.json", "not a graph file"),
    ("string.json", "not a graph file"),
    ("wrong_format.json", "not a graph file"),
    ("wrong_version.json", "version 99"),
    ("ops_not_list.json", "malformed"),
    ("zero_ops.json", "no ops"),
    ("src_fraction.json", "0.7 is not an integer"),
    ("src_huge.json", "out of range"),
    ("src_negative.json", "dangling"),
    ("src_string.json", "not an integer"),
    ("src_bool.json", "not an integer"),
    ("dangling.json", "dangling"),
    ("cycle.json", "cycle"),
    ("self_loop.json", ""),
    ("duplicate_edge.json", "duplicate edge"),
    ("duplicate_op.json", "duplicate op"),
    ("negative_flops.json", "non-negative"),
    ("huge_flops.json", "MAX_QUANTITY"),
    ("string_flops.json", "malformed"),
    ("negative_bytes.json", "non-negative"),
    ("missing_name.json", "malformed"),
    ("coloc_fraction.json", "not an integer"),
    ("nan_literal.json", "NaN is not a JSON number"),
    ("infinity_literal.json", "Infinity is not a JSON number"),
    ("huge_int.json", "not valid JSON"),
    ("fpga_infinity.json", "Infinity"),
    ("fpga_nan.json", "NaN"),
    ("fpga_1e300.json", "MAX_DEVICES"),
    ("fpga_fraction.json", "maxFPGAs"),
    ("fpga_negative.json", "maxFPGAs"),
    ("fpga_too_many.json", "MAX_DEVICES"),
    ("fpga_string.json", "maxFPGAs"),
    ("dnn_no_nodes.json", "nodes"),
    ("dnn_huge_latency.json", "MAX_QUANTITY"),
    ("dnn_memory_zero.json", "maxSizePerFPGA"),
    ("missing.json", "no such file"),
    ("adir", "cannot read model spec"),
]

PLACEMENT_CASES = [
    ("p_huge_entry.json", "integer device indices"),
    ("p_last_1e9.json", "has devices 0..1"),
    ("p_negative.json", "device -1"),
    ("p_fraction.json", "integer device indices"),
    ("p_short.json", "2 entries"),
    ("p_long.json", "4 entries"),
    ("p_device_99.json", "device 99"),
    ("p_strings.json", "integer device indices"),
    ("p_bools.json", "integer device indices"),
    ("p_empty.json", "0 entries"),
    ("p_nested.json", "integer device indices"),
    ("p_unknown_op.json", "zzz"),
    ("p_unknown_device.json", "tpu9"),
    ("p_missing_op.json", "has no device"),
    ("p_number.json", "a placement is"),
    ("bad_utf8.json", "not UTF-8"),
    ("nested.json", "nested too deeply"),
    ("missing.json", "no such file"),
    ("adir", "is a folder"),
]

CLUSTER_CASES = [
    ("{i}/adir", "is a folder"),
    ("{i}/adir.yaml", "is a folder"),
    ("{i}/missing.yaml", "does not exist"),
    ("no-such-preset", "unknown cluster"),
    ("{i}/bad.yaml", "not valid YAML"),
    ("{i}/empty.yaml", "empty"),
    ("{i}/no_devices.yaml", "devices"),
    ("{i}/devices_not_list.yaml", "devices"),
    ("{i}/unknown_kind.yaml", "NOPE-9000"),
    ("{i}/unknown_key.yaml", "colour"),
    ("{i}/too_many.yaml", "MAX_DEVICES"),
    ("{i}/bad_utf8.yaml", "not UTF-8"),
    ("{i}/negative_memory.yaml", "memory"),
]

OPTION_CASES = [
    ("seed -1", [*PLACE, "--seed", "-1"], "--seed"),
    ("seed too big", [*PLACE, "--seed", str(MAX_SEED + 1)], "MAX_SEED"),
    ("evaluate seed -1", ["evaluate", "{i}/g.json", "--seed", "-1"], "--seed"),
    ("measure seed -1", ["measure", "{i}/g.json", "--placement", "{i}/p.json", "--seed", "-1"], "--seed"),
    ("synthetic seed -3", ["graph", "synthetic:layered:n=10:seed=-3"], "seed"),
    ("synthetic n=0", ["graph", "synthetic:layered:n=0"], "n >= 1"),
    ("synthetic n huge", ["graph", "synthetic:layered:n=1000000000"], "MAX_OPS"),
    ("synthetic prob 2", ["graph", "synthetic:layered:n=10:skip_prob=2"], "probability"),
    ("synthetic prob nan", ["graph", "synthetic:layered:n=10:skip_prob=nan"], "probability"),
    ("synthetic family", ["graph", "synthetic:blob"], "unknown synthetic family"),
    ("synthetic option", ["graph", "synthetic:layered:colour=red"], "no option"),
    ("synthetic value", ["graph", "synthetic:layered:n=ten"], "not a valid int"),
    ("microbatches 0", [*PLACE, "--objective", "pipelined", "--microbatches", "0"], "--microbatches"),
    ("microbatches huge", [*PLACE, "--objective", "pipelined", "--microbatches", "100000000"], "MAX_MICROBATCHES"),
    ("microbatches simulate", [*SIM, "--placement", "{i}/p.json", "--microbatches", str(MAX_MICROBATCHES + 1)], "MAX_MICROBATCHES"),
    ("max-groups 0", [*PLACE, "--max-groups", "0"], "--max-groups"),
    ("batch-size 0", [*PLACE, "--batch-size", "0"], "--batch-size"),
    ("evaluations not a search", [*PLACE, "--evaluations", "3"], "--evaluations"),
    ("budget not a search", [*PLACE, "--budget-s", "1"], "--budget-s"),
    ("budget zero", [*PLACE[:-1], "local-search", "--budget-s", "0"], "--budget-s"),
    ("budget nan", [*PLACE[:-1], "local-search", "--budget-s", "nan"], "--budget-s"),
    ("checkpoint not policy", [*PLACE, "--checkpoint", "{i}/adir"], "--checkpoint"),
    ("evaluations huge", [*PLACE[:-1], "policy", "--evaluations", "1000000000"], "MAX_EVALUATIONS"),
    ("evaluations 0", [*PLACE[:-1], "local-search", "--evaluations", "0"], "--evaluations"),
    ("unknown method", [*PLACE[:-1], "nope"], "nope"),
    ("unknown evaluate method", ["evaluate", "{i}/g.json", "--methods", "single,nope"], "nope"),
    ("expert no file", [*PLACE[:-1], "expert:"], "names no file"),
    ("device-map graph", [*PLACE, "--device-map", "{o}/map.json"], "--device-map"),
    ("over memory", ["simulate", "{i}/g.json", "--cluster", "{i}/small.yaml", "--placement", "{i}/p_over_memory.json"], "does not fit"),
    ("measure graph file", ["measure", "{i}/g.json", "--placement", "{i}/p.json"], "measurement runs PyTorch code"),
    ("measure json:dumps", ["measure", "json:dumps", "--placement", "{i}/p.json", "--backend", "local"], "dumps() raised TypeError"),
    ("measure 1e9 ranks", ["measure", "json:dumps", "--placement", "{i}/p_last_1e9.json"], "MAX_DEVICES"),
    ("measure index past cluster", ["measure", "json:dumps", "--placement", "{i}/p_device_99.json", "--cluster", "2xV100-pcie"], "device 99"),
    ("measure negative index", ["measure", "json:dumps", "--placement", "{i}/p_negative.json"], "negative"),
    ("measure threads 0", ["measure", "json:dumps", "--placement", "{i}/p.json", "--threads", "0"], "--threads"),
    ("measure threads huge", ["measure", "json:dumps", "--placement", "{i}/p.json", "--threads", "1000000000"], "MAX_THREADS"),
    ("calibrate devices huge", ["calibrate", "--devices", "1000000000"], "MAX_DEVICES"),
    ("calibrate devices 0", ["calibrate", "--devices", "0"], "--devices"),
    ("calibrate receive cost one rank", ["calibrate", "--devices", "1", "--receive-cost"], "--receive-cost needs two or more gloo ranks"),
    ("measure inference", ["measure", "json:dumps", "--placement", "{i}/p.json", "--inference"], "--inference"),
    ("unknown zoo", ["graph", "zoo:no-such-model"], "unknown zoo model"),
    ("unknown spec", ["graph", "what-is-this"], "cannot read model spec"),
    ("model file missing", ["graph", "{i}/missing.py:build"], "does not exist"),
    ("model function missing", ["graph", "{i}/raises.py:other"], "defines no 'other'"),
    ("model exits", ["graph", "{i}/exits.py:build"], "raised SystemExit"),
    ("model exits on import", ["graph", "{i}/exits_on_import.py:build"], "raised SystemExit"),
    ("model raises", ["graph", "{i}/raises.py:build"], "no weights"),
    ("model returns None", ["graph", "{i}/returns_none.py:build"], "must return"),
    ("model raises GeneratorExit", ["graph", "{i}/interrupts.py:build"], "GeneratorExit"),
    ("profile missing", [*SIM, "--placement", "{i}/p.json", "--profile", "{i}/missing.json"], "no such file"),
    ("profile bad utf8", [*SIM, "--placement", "{i}/p.json", "--profile", "{i}/bad_utf8.json"], "not UTF-8"),
    ("dnn expert split missing", ["place", "{i}/dnn.json", "--method", "expert:{i}/missing.json"], "no such file"),
]

OUTPUT_CASES = [
    ("out is a folder", [*PLACE, "--out", "{o}/sub"], "is a folder"),
    ("trace is a folder", [*PLACE, "--out", "{o}/ok.json", "--trace", "{o}/sub"], "is a folder"),
    ("plot is a folder", [*PLACE, "--out", "{o}/ok.json", "--plot", "{o}/sub"], "is a folder"),
    ("out folder missing", [*PLACE, "--out", "{o}/none/ok.json"], "does not exist"),
    ("trace folder missing", [*PLACE, "--out", "{o}/ok.json", "--trace", "{o}/none/t.json"], "does not exist"),
    ("same file twice", [*PLACE, "--out", "{o}/x.json", "--trace", "{o}/x.json"], "two outputs"),
    ("save is a folder", ["graph", "{i}/g.json", "--save", "{o}/sub"], "is a folder"),
    ("simulate trace folder", [*SIM, "--placement", "{i}/p.json", "--trace", "{o}/sub"], "is a folder"),
    ("simulate trace after bad placement", [*SIM, "--placement", "{i}/p_short.json", "--trace", "{o}/t.json"], "2 entries"),
    ("place bad cluster with outputs", ["place", "{i}/g.json", "--cluster", "{i}/bad.yaml", "--out", "{o}/a.json", "--trace", "{o}/b.json"], "YAML"),
    ("calibrate out folder", ["calibrate", "--out", "{o}/sub"], "is a folder"),
    ("empty output path", [*PLACE, "--out", ""], "is a folder"),
]

ARGPARSE_CASES = [
    ("unknown option", [*PLACE, "--bogus"], "unrecognized arguments"),
    ("bad objective", [*PLACE, "--objective", "fastest"], "invalid choice"),
    ("seed not a number", [*PLACE, "--seed", "abc"], "invalid int value"),
    ("missing placement", ["simulate", "{i}/g.json"], "--placement"),
    ("no command", [], "required"),
    ("unknown command", ["frobnicate"], "invalid choice"),
    ("json and csv", ["evaluate", "{i}/g.json", "--json", "--csv"], "not allowed"),
    ("bad backend", ["measure", "m.py:f", "--placement", "p", "--backend", "mpi"], "invalid choice"),
    ("timeout not a number", ["measure", "m.py:f", "--placement", "p", "--timeout", "soon"], "invalid float"),
]


def _cases() -> list:
    cases = []
    for name, needle in GRAPH_FILE_CASES:
        cases.append(pytest.param(["graph", f"{{i}}/{name}"], needle, id=f"graph:{name}"))
    for name, needle in GRAPH_FILE_CASES[:12]:  # the same readers behind simulate and --json
        cases.append(pytest.param(["simulate", f"{{i}}/{name}", "--placement", "{i}/p.json", "--json"], needle, id=f"simulate-graph:{name}"))
    for name, needle in PLACEMENT_CASES:
        cases.append(pytest.param([*SIM, "--placement", f"{{i}}/{name}", "--trace", "{o}/t.json"], needle, id=f"placement:{name}"))
    for spec, needle in CLUSTER_CASES:
        cases.append(pytest.param(["place", "{i}/g.json", "--cluster", spec, "--out", "{o}/o.json"], needle, id=f"cluster:{Path(spec).name}"))
    for group in (OPTION_CASES, OUTPUT_CASES, ARGPARSE_CASES):
        for name, argv, needle in group:
            cases.append(pytest.param(argv, needle, id=name))
    return cases


CASES = _cases()


def _fill(argv: list[str], inputs: Path, out: Path) -> list[str]:
    return [a.replace("{i}", str(inputs)).replace("{o}", str(out)) for a in argv]


def assert_one_error_line(stderr: str, needle: str = "") -> None:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert needle in lines[0], (needle, lines[0])


def test_the_corpus_has_at_least_100_cases() -> None:
    assert len(CASES) >= 100


@pytest.mark.parametrize(("argv", "needle"), CASES)
def test_hostile_input_is_one_clean_error(argv: list[str], needle: str, inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "sub").mkdir()
    before = sorted(tmp_path.rglob("*"))
    status = main(_fill(argv, inputs, tmp_path))
    captured = capsys.readouterr()
    assert status == 2, captured.err
    assert captured.out == ""
    assert_one_error_line(captured.err, needle)
    assert sorted(tmp_path.rglob("*")) == before  # no output file, no temporary file left


SUBPROCESS_CASES = [
    ["graph", "{i}/bad_utf8.json"],
    [*SIM, "--placement", "{i}/p_huge_entry.json", "--trace", "{o}/t.json"],
    [*PLACE, "--seed", "-1", "--json"],
    [*PLACE, "--bogus"],
    [*PLACE, "--out", "{o}/ok.json", "--trace", "{o}/sub"],
]


@pytest.mark.parametrize("argv", SUBPROCESS_CASES, ids=[" ".join(c[:3]) for c in SUBPROCESS_CASES])
def test_hostile_input_in_a_subprocess(argv: list[str], inputs: Path, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    process = subprocess.run([sys.executable, "-m", "rlplace.cli", *_fill(argv, inputs, tmp_path)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert process.returncode == 2, process.stderr
    assert process.stdout == ""
    assert_one_error_line(process.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]


# ----------------------------------------------------------------------------- hypothesis
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_random_placement_bytes_never_trace_back(data: bytes, inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "random.json"
    path.write_bytes(data)
    status = main([*_fill(SIM, inputs, tmp_path), "--placement", str(path)])
    captured = capsys.readouterr()
    assert status in (0, 2)
    if status == 2:
        assert_one_error_line(captured.err)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**30), max_value=10**30) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from([("ops", 0, "flops"), ("edges", 0, "src"), ("edges", 1, "dst"), ("ops", 2, "coloc"), ("edges", 0, "bytes"), ("ops",), ("name",)]),
    value=json_values,
)
def test_random_graph_fields_never_trace_back(path: tuple, value, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    graph_file = tmp_path / "g.json"
    graph_file.write_text(_graph_with(_set(path, value)))
    status = main(["graph", str(graph_file), "--json"])
    captured = capsys.readouterr()
    assert status in (0, 2)
    if status == 0:
        json.loads(captured.out)
    else:
        assert captured.out == ""
        assert_one_error_line(captured.err)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    option=st.sampled_from(["--seed", "--microbatches", "--max-groups", "--batch-size"]),
    value=st.integers(min_value=-(2**70), max_value=2**70).filter(lambda v: not 0 <= v <= 4),
)
def test_out_of_range_numbers_are_errors_or_run(option: str, value: int, inputs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [*_fill(PLACE, inputs, inputs), "--objective", "pipelined", option, str(value)]
    status = main(argv)
    captured = capsys.readouterr()
    if status == 2:
        assert_one_error_line(captured.err)
    else:
        assert status == 0 and value > 0  # only a valid value runs


# ----------------------------------------------------------------------------- outputs and --json
def test_outputs_are_written_together_and_follow_the_umask(inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    previous = os.umask(0o027)
    try:
        assert main([*_fill(PLACE, inputs, tmp_path), "--out", str(tmp_path / "p.json"), "--trace", str(tmp_path / "t.json")]) == 0
    finally:
        os.umask(previous)
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json", "t.json"]  # no temporary file left
    for name in ("p.json", "t.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640
    assert json.loads((tmp_path / "p.json").read_text())["placement"] == [0, 1, 0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_folder_is_an_error_before_work(inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    status = main([*_fill(PLACE, inputs, tmp_path), "--out", str(tmp_path / "ok.json"), "--trace", str(locked / "t.json")])
    assert status == 2
    assert_one_error_line(capsys.readouterr().err, "not writable")
    assert not (tmp_path / "ok.json").exists()


def _all_methods() -> list[str]:
    from rlplace.baselines import METHOD_DESCRIPTIONS

    return list(METHOD_DESCRIPTIONS)


@pytest.fixture(scope="module")
def fewer_ops_than_devices(inputs: Path) -> Path:
    return inputs / "g.json"  # 3 ops on 8 devices


@pytest.mark.parametrize("method", _all_methods())
def test_place_json_is_one_document_or_nothing_with_fewer_ops_than_devices(
    method: str, fewer_ops_than_devices: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """capfd sees file descriptor 1 too: METIS prints there from C."""
    argv = ["place", str(fewer_ops_than_devices), "--cluster", "8xA100-nvlink", "--method", method, "--json"]
    if method == "policy" and not CHECKPOINT.is_dir():
        pytest.skip("no shipped checkpoint")
    status = main(argv)
    captured = capfd.readouterr()
    if status == 0:
        payload = json.loads(captured.out)
        assert payload["method"] == method and len(payload["placement"]) == 3
    else:  # a method that cannot place a graph file (accelerate needs a PyTorch model)
        assert status == 2 and captured.out == ""
        assert_one_error_line(captured.err)


def test_evaluate_json_parses_for_every_method_with_fewer_ops_than_devices(fewer_ops_than_devices: Path, capfd: pytest.CaptureFixture[str]) -> None:
    methods = [m for m in _all_methods() if m != "policy" or CHECKPOINT.is_dir()]
    status = main(["evaluate", str(fewer_ops_than_devices), "--cluster", "8xA100-nvlink", "--methods", ",".join(methods), "--json"])
    captured = capfd.readouterr()
    assert status == 0, captured.err
    rows = json.loads(captured.out)
    assert [row["method"] for row in rows] == methods


def test_metis_chatter_stays_off_stdout_in_a_subprocess(fewer_ops_than_devices: Path) -> None:
    process = subprocess.run(
        [sys.executable, "-m", "rlplace.cli", "place", str(fewer_ops_than_devices), "--cluster", "8xA100-nvlink", "--method", "metis", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert process.returncode == 0, process.stderr
    assert json.loads(process.stdout)["method"] == "metis"


# ----------------------------------------------------------------------------- checkpoints
@pytest.fixture
def checkpoint_copy(tmp_path: Path) -> Path:
    if not CHECKPOINT.is_dir():
        pytest.skip("no shipped checkpoint")
    folder = tmp_path / "ckpt"
    shutil.copytree(CHECKPOINT, folder)
    return folder


def _edit_network(folder: Path, **network) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["network"].update(network)
    config.pop("config_sha256", None)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("network", "needle"),
    [({"hidden": 1_000_000}, "MAX_NETWORK_SIZE"), ({"layers": 10**12}, "MAX_NETWORK_SIZE"), ({"hidden": 4000}, "needs"), ({"hidden": 32}, "has shape")],
    ids=["hidden 1e6", "layers 1e12", "bigger than the weights", "shape mismatch"],
)
def test_checkpoint_config_that_does_not_fit_the_weights(network: dict, needle: str, checkpoint_copy: Path, inputs: Path, capsys) -> None:
    _edit_network(checkpoint_copy, **network)
    status = main(["place", str(inputs / "g.json"), "--cluster", "2xV100-pcie", "--method", "policy", "--checkpoint", str(checkpoint_copy), "--json"])
    captured = capsys.readouterr()
    assert status == 2 and captured.out == ""
    assert_one_error_line(captured.err, needle)


def test_checkpoint_hash_covers_the_config(tmp_path: Path) -> None:
    if not CHECKPOINT.is_dir():
        pytest.skip("no shipped checkpoint")
    from rlplace.agents.improve_checkpoint import load_scorer, save_scorer
    from rlplace.errors import RlplaceError

    scorer, meta = load_scorer(CHECKPOINT)
    folder = save_scorer(scorer, tmp_path / "saved", meta)
    assert load_scorer(folder)[0].config.hidden > 0
    config = json.loads((folder / "config.json").read_text())
    config["meta"]["heldout"] = {}  # any edit, not only a size
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(RlplaceError, match="config_sha256"):
        load_scorer(folder)
