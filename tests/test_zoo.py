"""Tests of rlplace.zoo (named models, spec parsing) and rlplace.synthetic (seeded DAG families)."""

from __future__ import annotations

import numpy as np
import pytest

from rlplace.coarsen import coarsen
from rlplace.errors import RlplaceError
from rlplace.graph import NO_CLASS, OpGraph
from rlplace.load import load_model
from rlplace.synthetic import FAMILY_PARAMS, SYNTHETIC_FAMILIES, parse_synthetic_spec, synthetic_graph
from rlplace.zoo import ZOO, list_zoo, parse_zoo_spec, zoo_model

torch = pytest.importorskip("torch")

#: Zoo models whose training capture takes a few seconds; the rest run with ``-m slow``.
QUICK_CAPTURES = ("mlp-small", "dlrm")


# ----------------------------------------------------------------------------------- the zoo
def test_zoo_covers_many_families_and_sizes() -> None:
    assert len(ZOO) >= 20
    families = {entry.family for entry in ZOO.values()}
    assert {"gpt2", "bert", "t5", "llama", "moe", "vit", "resnet", "convnext", "mobilenet", "regnet", "mlp", "gnmt", "inception", "dlrm"} <= families
    params = sorted(entry.params for entry in ZOO.values())
    assert params[0] < 10_000_000 and params[-1] > 10_000_000_000
    for name, entry in ZOO.items():
        assert entry.batch_size >= 1 and entry.description, name
        assert (entry.seq_len is None) or entry.seq_len > 0, name


@pytest.mark.parametrize("name", list(ZOO))
def test_every_model_builds_on_meta_with_its_stated_size(name: str) -> None:
    entry = ZOO[name]
    module, inputs = zoo_model(name)
    parameters = list(module.parameters())
    assert parameters and all(p.device.type == "meta" for p in parameters)
    count = sum(p.numel() for p in parameters)
    assert count == pytest.approx(entry.params, rel=0.02), f"{name}: built {count:,} parameters, entry says {entry.params:,}"
    assert isinstance(inputs, dict) and inputs
    for value in inputs.values():
        assert value.device.type == "meta"
        assert value.shape[0] == entry.batch_size
    if entry.seq_len is not None:
        assert any(v.dim() == 2 and v.shape[1] == entry.seq_len for v in inputs.values())
    if entry.image_size is not None:
        assert any(v.dim() == 4 and v.shape[-1] == entry.image_size for v in inputs.values())


def test_batch_size_override_and_bad_batch_size() -> None:
    _, inputs = zoo_model("zoo:gpt2", batch_size=3)
    assert tuple(inputs["input_ids"].shape) == (3, 1024)
    _, inputs = zoo_model("resnet-50", batch_size=5)
    assert tuple(inputs["pixel_values"].shape) == (5, 3, 224, 224)
    with pytest.raises(RlplaceError, match="batch size must be a positive integer"):
        zoo_model("gpt2", batch_size=0)


def test_unknown_names_list_close_matches() -> None:
    with pytest.raises(RlplaceError, match=r"unknown zoo model 'gtp2'; did you mean gpt2"):
        zoo_model("gtp2")
    with pytest.raises(RlplaceError, match=r"did you mean .*llama-7b"):
        parse_zoo_spec("zoo:lama-7b")
    with pytest.raises(RlplaceError, match=r"unknown zoo model 'qqqqqq' \(`rlplace zoo` lists them all\)"):
        parse_zoo_spec("qqqqqq")
    with pytest.raises(RlplaceError, match="is a synthetic graph"):
        zoo_model("synthetic:layered:n=5")


def test_parse_zoo_spec_and_list_zoo_agree() -> None:
    spec = parse_zoo_spec("zoo:bert-base")
    assert (spec.kind, spec.name, dict(spec.params)) == ("model", "bert-base", {})
    spec = parse_zoo_spec("synthetic:fork-join:n=30:seed=2:branches=3")
    assert (spec.kind, spec.name, dict(spec.params)) == ("synthetic", "fork-join", {"n": "30", "seed": "2", "branches": "3"})
    rows = list_zoo()
    assert [row["spec"] for row in rows[: len(ZOO)]] == [f"zoo:{name}" for name in ZOO]
    assert {row["spec"] for row in rows[len(ZOO) :]} == {f"synthetic:{family}" for family in SYNTHETIC_FAMILIES}
    for row in rows:
        assert parse_zoo_spec(row["spec"]).kind in ("model", "synthetic")


# ----------------------------------------------------------------------------------- captures
def capture_params(names: list[str]) -> list[object]:
    return [pytest.param(name, marks=() if name in QUICK_CAPTURES else pytest.mark.slow) for name in names]


@pytest.mark.parametrize("name", capture_params(list(ZOO)))
def test_every_model_captures_a_training_graph(name: str) -> None:
    graph = load_model(f"zoo:{name}").graph
    module, _ = zoo_model(name)
    assert graph.meta["backward"] == "joint"
    assert np.any(graph.is_backward) and np.any(~graph.is_backward)
    assert graph.meta["batch_size"] == ZOO[name].batch_size
    # Every parameter counted once, fp32.
    assert graph.param_bytes.sum() == 4 * sum(p.numel() for p in module.parameters())
    assert graph.flops[~graph.is_backward].sum() > 0
    assert graph.flops[graph.is_backward].sum() > graph.flops[~graph.is_backward].sum()
    assert any(graph.meta["module_paths"])
    result = coarsen(graph, 64)
    assert result.graph.num_ops <= 64
    assert np.all(result.group_of[graph.edge_src] <= result.group_of[graph.edge_dst])
    assert result.graph.flops.sum() == pytest.approx(graph.flops.sum(), rel=1e-12)


# ----------------------------------------------------------------------------------- synthetic graphs
@pytest.mark.parametrize("family", list(SYNTHETIC_FAMILIES))
@pytest.mark.parametrize("n", [1, 2, 7, 200])
def test_synthetic_families_are_seeded_dags_of_n_ops(family: str, n: int) -> None:
    graph = synthetic_graph(f"synthetic:{family}:n={n}:seed=3")
    again = load_model(f"synthetic:{family}:n={n}:seed=3", inference=True).graph
    other = synthetic_graph(f"synthetic:{family}:n={n}:seed=4")
    assert graph.num_ops == n
    assert np.all(graph.edge_src < graph.edge_dst)
    if n > 1:
        # Connected: every op but the first has a producer or a consumer.
        touched = np.zeros(n, dtype=bool)
        touched[graph.edge_src] = touched[graph.edge_dst] = True
        assert touched.all()
    for attr in ("flops", "bytes_accessed", "output_bytes", "param_bytes", "edge_src", "edge_dst", "edge_bytes"):
        np.testing.assert_array_equal(getattr(graph, attr), getattr(again, attr))
        values = getattr(graph, attr)
        np.testing.assert_array_equal(values, np.round(values))  # integers: sums are exact
    if n >= 7:
        assert not np.array_equal(graph.flops, other.flops)
    # Plausible magnitudes: MFLOPs to hundreds of GFLOPs per op, KB to GB per tensor.
    assert np.all(graph.flops >= 1e6) and np.all(graph.flops <= 1e12)
    assert np.all(graph.output_bytes >= 1e6) and np.all(graph.output_bytes <= 1e9)


@pytest.mark.parametrize("family", list(SYNTHETIC_FAMILIES))
def test_synthetic_training_mirror(family: str) -> None:
    forward = synthetic_graph(f"synthetic:{family}:n=50:seed=1")
    graph = synthetic_graph(f"synthetic:{family}:n=50:seed=1:training=1")
    n = forward.num_ops
    owners = np.flatnonzero(forward.param_bytes > 0)
    assert graph.num_ops == 2 * n + 1 + owners.size
    assert graph.names[n] == "loss" and not graph.is_backward[n]
    np.testing.assert_array_equal(graph.is_backward, np.arange(graph.num_ops) > n)
    np.testing.assert_array_equal(graph.flops[:n], forward.flops)
    np.testing.assert_array_equal(graph.resident_bytes[:n], 4 * forward.param_bytes)
    for i in range(n):
        backward = graph.index_of(f"bwd{i}")
        assert graph.coloc[backward] == graph.coloc[i] != NO_CLASS
        expected = 2 * forward.flops[i] if forward.kinds[i] == "matmul" else forward.flops[i]
        assert graph.flops[backward] == expected
    for i in owners.tolist():
        update = graph.index_of(f"adam{i}")
        assert graph.coloc[update] == graph.coloc[i]
        assert graph.kinds[update] == "optimizer"
    # Every forward edge u -> v has the gradient edge bwd(v) -> bwd(u), same bytes.
    edges = {(int(s), int(d)): float(b) for s, d, b in zip(graph.edge_src, graph.edge_dst, graph.edge_bytes, strict=True)}
    for s, d, b in zip(forward.edge_src.tolist(), forward.edge_dst.tolist(), forward.edge_bytes.tolist(), strict=True):
        assert edges[(graph.index_of(f"bwd{d}"), graph.index_of(f"bwd{s}"))] == b
        assert edges[(s, d)] == b


def test_zoo_graph_training_flag_and_spec_precedence() -> None:
    assert load_model("synthetic:layered:n=20:seed=0").graph.num_ops > 41
    assert load_model("synthetic:layered:n=20:seed=0", inference=True).graph.num_ops == 20
    # A knob written in the spec wins over the caller's default.
    assert synthetic_graph("synthetic:layered:n=20:seed=0:training=0", training=True).num_ops == 20


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("synthetic:trees:n=5", "unknown synthetic family 'trees'"),
        ("synthetic:layered:n", "bad option 'n'"),
        ("synthetic:layered:depth=3", "has no option 'depth'"),
        ("synthetic:layered:n=abc", "n='abc' is not a valid int"),
        ("synthetic:layered:training=maybe", "training='maybe' is not a valid bool"),
        ("synthetic:layered:n=0", "needs n >= 1"),
        ("synthetic:fork-join:branches=0", "branches >= 1"),
    ],
)
def test_bad_synthetic_specs(spec: str, message: str) -> None:
    with pytest.raises(RlplaceError, match=message):
        synthetic_graph(spec)


def test_every_family_documents_its_knobs() -> None:
    assert set(FAMILY_PARAMS) == set(SYNTHETIC_FAMILIES)
    for family, knobs in FAMILY_PARAMS.items():
        assert {"n", "seed", "training"} <= set(knobs)
        assert parse_synthetic_spec(f"{family}:n=3") == (family, {"n": "3"})
        assert isinstance(synthetic_graph(family, n=3, seed=1), OpGraph)
