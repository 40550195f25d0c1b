"""Capture of PyTorch models into OpGraph: exact counts on tiny modules, training passes, specs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rlplace.capture import OPTIMIZERS, capture_model, op_kind
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph
from rlplace.load import is_python_spec, load_model, model_and_inputs
from rlplace.modelspec import parse_python_spec

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY = FIXTURES / "tiny_models.py"
F32 = 4  # bytes per fp32 element


def on_meta(factory):
    with torch.device("meta"):
        return factory()


def x_meta(*shape: int) -> torch.Tensor:
    return torch.zeros(*shape, device="meta")


def op(graph: OpGraph, name: str) -> int:
    return graph.index_of(name)


def edge_bytes(graph: OpGraph) -> dict[tuple[str, str], float]:
    return {(graph.names[s], graph.names[d]): float(b) for s, d, b in zip(graph.edge_src, graph.edge_dst, graph.edge_bytes, strict=True)}


def forward_mask(graph: OpGraph) -> np.ndarray:
    return ~graph.is_backward


# ------------------------------------------------------------------ inference graphs, by hand
def test_linear_inference_exact_numbers():
    """Linear(4, 3) on a (2, 4) batch: flops 2*B*in*out, params (12+3)*4 B, output 2*3*4 B."""
    graph = capture_model(on_meta(lambda: nn.Linear(4, 3)), (x_meta(2, 4),), training=False)
    assert graph.names == ("input", "linear")
    assert graph.kinds == ("input", "matmul")
    linear = op(graph, "linear")
    assert graph.flops[linear] == 2 * 2 * 4 * 3
    assert graph.param_bytes[linear] == (12 + 3) * F32
    assert graph.resident_bytes[linear] == (12 + 3) * F32  # inference: no gradient, no optimizer state
    assert graph.output_bytes[linear] == 2 * 3 * F32
    assert graph.output_bytes[op(graph, "input")] == 2 * 4 * F32
    # reads input (32) + weight (48) + bias (12), writes output (24)
    assert graph.bytes_accessed[linear] == 32 + 48 + 12 + 24
    assert edge_bytes(graph) == {("input", "linear"): 2 * 4 * F32}
    assert not graph.is_backward.any()
    assert (graph.coloc == -1).all()
    assert graph.meta["aten_targets"] == ["input", "aten.linear.default"]
    assert graph.meta["op_params"] == [[], ["weight", "bias"]]
    assert graph.meta["precision"] == "fp32"
    assert graph.meta["batch_size"] == 2
    assert graph.meta["training"] is False


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_mlp_inference_exact_numbers():
    graph = capture_model(on_meta(mlp), (x_meta(2, 4),), training=False)
    assert graph.num_ops == 4 and graph.num_edges == 3
    assert list(graph.kinds) == ["input", "matmul", "elementwise", "matmul"]
    assert list(graph.flops) == [0, 2 * 2 * 4 * 8, 0, 2 * 2 * 8 * 3]
    assert list(graph.param_bytes) == [0, (32 + 8) * F32, 0, (24 + 3) * F32]
    assert list(graph.output_bytes) == [32, 2 * 8 * F32, 2 * 8 * F32, 2 * 3 * F32]
    assert graph.bytes_accessed[2] == 64 + 64  # relu reads and writes (2, 8) fp32
    assert sorted(edge_bytes(graph).values()) == [32, 64, 64]
    assert graph.meta["module_paths"] == ["", "0", "1", "2"]
    assert graph.meta["op_params"] == [[], ["0.weight", "0.bias"], [], ["2.weight", "2.bias"]]


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(torch.relu(self.fc1(x)))


def test_residual_block_exact_numbers():
    graph = capture_model(on_meta(Residual), (x_meta(2, 4),), training=False)
    names = list(graph.names)
    assert names == ["x", "linear", "relu", "linear_1", "add"]
    activation = 2 * 4 * F32
    assert edge_bytes(graph) == {
        ("x", "linear"): activation,
        ("linear", "relu"): activation,
        ("relu", "linear_1"): activation,
        ("linear_1", "add"): activation,
        ("x", "add"): activation,  # the skip connection
    }
    add = op(graph, "add")
    assert graph.kinds[add] == "elementwise"
    assert graph.flops[add] == 0  # FlopCounterMode counts matmuls, convolutions and attention only
    assert graph.bytes_accessed[add] == 3 * activation
    assert graph.flops.sum() == 2 * (2 * 2 * 4 * 4)
    assert graph.param_bytes.sum() == 2 * (16 + 4) * F32
    assert graph.meta["module_paths"] == ["", "fc1", "", "fc2", ""]


class Reshaper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.view(4, 4).transpose(0, 1))


def test_views_cost_nothing():
    graph = capture_model(on_meta(Reshaper), (x_meta(2, 8),), training=False)
    views = [i for i, kind in enumerate(graph.kinds) if kind == "view"]
    assert [graph.names[i] for i in views] == ["view", "transpose"]
    assert all(graph.flops[i] == 0 and graph.bytes_accessed[i] == 0 for i in views)
    assert all(graph.output_bytes[i] == 16 * F32 for i in views)  # a view is at most its base


class SharedLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.fc(x))


def test_parameter_used_twice_is_counted_once_and_sent_to_the_second_user():
    graph = capture_model(on_meta(SharedLayer), (x_meta(2, 4),), training=False)
    params = (16 + 4) * F32
    assert list(graph.param_bytes) == [0, params, 0]
    # the second call reads the activation (2*4*4 B) and the parameters held by the first
    assert edge_bytes(graph)[("linear", "linear_1")] == 2 * 4 * F32 + params


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Linear(4, 4, bias=False)
        self.decode = nn.Linear(4, 4, bias=False)
        self.decode.weight = self.encode.weight
        self.unused = nn.Parameter(torch.zeros(10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(torch.relu(self.encode(x)))


@pytest.mark.parametrize("training", [False, True])
def test_tied_and_unused_parameters_sum_exactly(training: bool):
    module = on_meta(Tied)
    graph = capture_model(module, (x_meta(2, 4),), training=training)
    assert graph.param_bytes.sum() == sum(p.numel() * p.element_size() for p in module.parameters()) == (16 + 10) * F32
    assert graph.meta["param_aliases"] == {"encode.weight": ["decode.weight"]}
    owners = [names for names in graph.meta["op_params"] if names]
    assert sorted(name for names in owners for name in names) == ["encode.weight", "unused"]
    if training:
        optimizer_ops = [graph.names[i] for i, kind in enumerate(graph.kinds) if kind == "optimizer"]
        assert optimizer_ops == ["adam.encode.weight"]  # the unused parameter gets no gradient


# ------------------------------------------------------------------ training graphs
def test_linear_training_joint_graph():
    graph = capture_model(on_meta(lambda: nn.Linear(4, 3)), (x_meta(2, 4),))
    assert graph.meta["backward"] == "joint"
    forward = forward_mask(graph)
    assert graph.flops[forward].sum() == 2 * 2 * 4 * 3
    matmul = np.array([kind == "matmul" for kind in graph.kinds])
    # backward: only dW = dY^T X (the input needs no gradient): 2 * 3 * 2 * 4
    assert graph.flops[graph.is_backward & matmul].sum() == 2 * 3 * 2 * 4
    owner = int(np.argmax(graph.param_bytes))
    assert graph.param_bytes[owner] == 15 * F32
    assert graph.resident_bytes[owner] == 15 * F32 * 4  # Adam, fp32: param + grad + 2 states
    assert graph.resident_bytes.sum() == 15 * F32 * 4
    updates = {graph.names[i]: i for i, kind in enumerate(graph.kinds) if kind == "optimizer"}
    assert set(updates) == {"adam.weight", "adam.bias"}
    weight_update = updates["adam.weight"]
    assert graph.flops[weight_update] == OPTIMIZERS["adam"].flops_per_element * 12
    assert graph.bytes_accessed[weight_update] == 2 * 48 + 48 + 2 * (2 * 4 * 12)  # param r/w, grad r, states r/w
    assert graph.is_backward[weight_update]
    assert all(graph.coloc[i] == graph.coloc[owner] != -1 for i in updates.values())
    assert graph.meta["optimizer"] == "adam"
    assert len(graph.meta["module_paths"]) == len(graph.meta["aten_targets"]) == graph.num_ops


def test_mlp_training_joint_graph():
    module = on_meta(mlp)
    graph = capture_model(module, (x_meta(2, 4),))
    forward = forward_mask(graph)
    matmul = np.array([kind == "matmul" for kind in graph.kinds])
    assert graph.flops[forward].sum() == 2 * 2 * 4 * 8 + 2 * 2 * 8 * 3
    # layer 2: dW (2*3*2*8) and dX (2*2*3*8); layer 1: dW only (2*8*2*4)
    assert graph.flops[graph.is_backward & matmul].sum() == 96 + 96 + 128
    assert graph.param_bytes.sum() == (40 + 27) * F32
    assert graph.resident_bytes.sum() == (40 + 27) * F32 * 4
    assert sum(kind == "optimizer" for kind in graph.kinds) == 4
    # saved activations: a backward matmul reads the ReLU output kept from the forward pass
    relu = op(graph, "relu")
    consumers = graph.successors()[relu]
    assert any(graph.is_backward[c] and graph.kinds[c] == "matmul" for c in consumers)
    # every backward matmul sits in the colocation class of a forward matmul of its layer
    for i in np.flatnonzero(graph.is_backward & matmul):
        partners = np.flatnonzero((graph.coloc == graph.coloc[i]) & forward & matmul)
        assert graph.coloc[i] != -1 and len(partners) == 1
        assert graph.meta["module_paths"][i] == graph.meta["module_paths"][partners[0]]


class Classifier(nn.Module):
    """Computes its own loss, as the zoo models do."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(self.fc(x), target)


def test_training_graph_through_a_cross_entropy_loss():
    """The loss's backward is traced (on meta, AOTAutograd would drop nll_loss's derivative)."""
    graph = capture_model(on_meta(Classifier), {"x": x_meta(2, 4), "target": torch.zeros(2, dtype=torch.long, device="meta")})
    assert graph.meta["backward"] == "joint"
    targets = graph.meta["aten_targets"]
    assert "aten.nll_loss_backward.default" in targets and "aten._log_softmax_backward_data.default" in targets
    matmul = np.array([kind == "matmul" for kind in graph.kinds])
    assert graph.flops[graph.is_backward & matmul].sum() == 2 * 3 * 2 * 4  # dW
    assert sorted(graph.names[i] for i, kind in enumerate(graph.kinds) if kind == "optimizer") == ["adam.fc.bias", "adam.fc.weight"]


def test_grouped_convolution_backward_flops():
    """dX and dW of a depthwise conv each cost its forward FLOPs (FlopCounterMode's own
    formula would count dW as a dense conv, 8x too many here)."""
    module = on_meta(lambda: nn.Sequential(nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8)))
    graph = capture_model(module, (x_meta(2, 8, 16, 16),))
    conv = np.array([kind == "conv" for kind in graph.kinds])
    pointwise = 2 * 2 * 16 * 16 * 8 * 8  # 2 * N * H * W * C_out * C_in
    depthwise = 2 * 2 * 16 * 16 * 9 * 8  # 2 * N * H * W * k^2 * C_out * (C_in / groups)
    assert graph.flops[~graph.is_backward & conv].sum() == pointwise + depthwise
    assert graph.flops[graph.is_backward & conv].sum() == pointwise + 2 * depthwise  # first conv: dW only


@pytest.mark.parametrize(("optimizer", "factor"), [("adam", 4), ("adamw", 4), ("sgd-momentum", 3), ("sgd", 2)])
def test_optimizer_state_memory(optimizer: str, factor: int):
    graph = capture_model(on_meta(mlp), (x_meta(2, 4),), optimizer=optimizer)
    assert graph.resident_bytes.sum() == (40 + 27) * F32 * factor


def test_bf16_precision_and_fp32_optimizer_state():
    module = nn.Linear(4, 3, device="meta", dtype=torch.bfloat16)
    graph = capture_model(module, (torch.zeros(2, 4, device="meta", dtype=torch.bfloat16),))
    assert graph.meta["precision"] == "bf16"
    assert graph.param_bytes.sum() == 15 * 2
    assert graph.resident_bytes.sum() == 15 * 2 + 15 * 2 + 2 * 15 * F32  # param, grad (bf16), 2 fp32 states


def test_inference_graph_has_no_backward_or_optimizer():
    graph = capture_model(on_meta(mlp), (x_meta(2, 4),), training=False)
    assert not graph.is_backward.any()
    assert "optimizer" not in graph.kinds
    assert graph.meta["backward"] == "none" and graph.meta["optimizer"] is None


def test_backward_by_rule_exact_graph():
    """The documented 2x rule, forced: every forward op f gets f.grad; edges reversed."""
    graph = capture_model(on_meta(mlp), (x_meta(2, 4),), backward="rule")
    assert graph.meta["backward"] == "rule"
    assert graph.num_ops == 4 + 3 + 4
    edges = edge_bytes(graph)
    assert edges == {
        ("input", "linear"): 32,
        ("linear", "relu"): 64,
        ("relu", "linear_1"): 64,
        ("linear", "linear.grad"): 64,  # saved activations
        ("relu", "relu.grad"): 64,
        ("linear_1", "linear_1.grad"): 24,
        ("linear_1.grad", "relu.grad"): 64,  # gradients flow back
        ("relu.grad", "linear.grad"): 64,
        ("linear_1.grad", "adam.2.weight"): 96,
        ("linear_1.grad", "adam.2.bias"): 12,
        ("linear.grad", "adam.0.weight"): 128,
        ("linear.grad", "adam.0.bias"): 32,
    }
    assert graph.flops[op(graph, "linear.grad")] == 2 * (2 * 2 * 4 * 8)
    assert graph.flops[op(graph, "linear_1.grad")] == 2 * (2 * 2 * 8 * 3)
    assert graph.flops[op(graph, "relu.grad")] == 0
    for name in ("linear", "relu", "linear_1"):
        assert graph.coloc[op(graph, name)] == graph.coloc[op(graph, f"{name}.grad")] != -1
        assert graph.is_backward[op(graph, f"{name}.grad")] and not graph.is_backward[op(graph, name)]
    assert graph.coloc[op(graph, "adam.0.weight")] == graph.coloc[op(graph, "linear")]
    assert graph.resident_bytes.sum() == (40 + 27) * F32 * 4


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(16, 48)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).view(2, 8, 3, 2, 8).permute(2, 0, 3, 1, 4)
        return nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def whole_forward_flops(module: nn.Module, args: tuple, kwargs: dict | None = None) -> int:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake_args = tuple(mode.from_tensor(a) for a in args)
        fake_kwargs = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in (kwargs or {}).items()}
        with FlopCounterMode(display=False) as counter:
            module(*fake_args, **fake_kwargs)
    return counter.get_total_flops()


def test_attention_is_one_fused_op_each_way():
    module = on_meta(Attention)
    graph = capture_model(module, (x_meta(2, 8, 16),))
    attention = [i for i, kind in enumerate(graph.kinds) if kind == "attention"]
    assert [bool(graph.is_backward[i]) for i in attention] == [False, True]
    sdpa_flops = 4 * 2 * 2 * 8 * 8 * 8  # QK^T and PV: 2 * (2 * b * h * s * s * d)
    assert graph.flops[attention[0]] == sdpa_flops
    assert graph.flops[forward_mask(graph)].sum() == whole_forward_flops(module, (x_meta(2, 8, 16),))
    assert graph.coloc[attention[0]] == graph.coloc[attention[1]] != -1


def test_small_gpt2_matches_flop_counter_and_parameter_sizes():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=16, use_cache=False)
    module = on_meta(lambda: transformers.GPT2LMHeadModel(config))
    ids = torch.zeros(2, 16, dtype=torch.long, device="meta")
    inputs = {"input_ids": ids, "use_cache": False}
    expected_params = sum(p.numel() * p.element_size() for p in module.parameters())
    for training in (False, True):
        graph = capture_model(module, inputs, training=training)
        assert graph.flops[forward_mask(graph)].sum() == whole_forward_flops(module.train(training), (), inputs)
        assert graph.param_bytes.sum() == expected_params
    assert graph.meta["backward"] == "joint"
    assert graph.flops.sum() > 2.5 * graph.flops[forward_mask(graph)].sum()  # backward ~ 2x forward


def test_real_and_meta_inputs_agree():
    real = capture_model(nn.Linear(4, 3), (torch.randn(2, 4),), training=False)
    mixed = capture_model(nn.Linear(4, 3), (x_meta(2, 4),), training=False)  # meta input, real module
    meta = capture_model(on_meta(lambda: nn.Linear(4, 3)), (torch.randn(2, 4),), training=False)
    for graph in (mixed, meta):
        assert graph.names == real.names
        np.testing.assert_array_equal(graph.flops, real.flops)
        np.testing.assert_array_equal(graph.bytes_accessed, real.bytes_accessed)


def test_capture_restores_module_mode_and_graph_serializes():
    module = on_meta(mlp).eval()
    graph = capture_model(module, (x_meta(2, 4),), training=True)
    assert not module.training
    again = OpGraph.from_json_dict(json.loads(json.dumps(graph.to_json_dict())))
    assert again.names == graph.names and again.meta == graph.meta


def test_op_kind_categories():
    aten = torch.ops.aten
    assert op_kind(aten.addmm.default) == "matmul"
    assert op_kind(aten.convolution.default) == "conv"
    assert op_kind(aten._scaled_dot_product_efficient_attention.default) == "attention"
    assert op_kind(aten.embedding.default) == "embedding"
    assert op_kind(aten.native_layer_norm.default) == "norm"
    assert op_kind(aten.sum.dim_IntList) == "reduction"
    assert op_kind(aten.mul.Tensor) == "elementwise"
    assert op_kind(aten.cat.default) == "other"


# ------------------------------------------------------------------ errors
def test_data_dependent_control_flow_is_explained():
    module, inputs = model_and_inputs(f"{TINY}:data_dependent")
    with pytest.raises(RlplaceError) as info:
        capture_model(module, inputs)
    message = str(info.value)
    assert "data-dependent control flow" in message
    assert "tiny_models.py" in message  # where in the user's code
    assert "torch.cond" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"optimizer": "lamb"}, "unknown optimizer 'lamb'"), ({"backward": "magic"}, "unknown backward mode")],
)
def test_bad_capture_arguments(kwargs: dict, fragment: str):
    with pytest.raises(RlplaceError, match=fragment):
        capture_model(on_meta(mlp), (x_meta(2, 4),), **kwargs)


def test_bad_inputs_and_module():
    with pytest.raises(RlplaceError, match="example inputs must be"):
        capture_model(on_meta(mlp), 3)  # type: ignore[arg-type]
    with pytest.raises(RlplaceError, match=r"needs a torch\.nn\.Module"):
        capture_model("mlp", (x_meta(2, 4),))  # type: ignore[arg-type]


# ------------------------------------------------------------------ MODEL specs
def test_spec_parsing():
    assert parse_python_spec("models/gpt.py:build") == (Path("models/gpt.py"), "build")
    assert is_python_spec("a/b.py:f") and not is_python_spec("zoo:gpt2") and not is_python_spec("graph.json")
    for bad in ("model.py", "model.txt:build", "model.py:", "model.py:not-a-name"):
        with pytest.raises(RlplaceError):
            parse_python_spec(bad)


def test_spec_loads_with_and_without_batch_size():
    module, inputs = model_and_inputs(f"{TINY}:mlp")
    assert isinstance(module, nn.Sequential) and inputs[0].shape == (2, 4)
    assert load_model(f"{TINY}:mlp", inference=True).graph.name == "tiny_models"
    assert model_and_inputs(f"{TINY}:mlp", batch_size=5)[1][0].shape == (5, 4)
    assert model_and_inputs(f"{TINY}:fixed_batch")[1][0].shape == (3, 4)
    module, inputs = model_and_inputs(f"{TINY}:mlp_keyword_inputs", batch_size=6)
    assert isinstance(module, nn.Sequential) and inputs["input"].shape == (6, 4)


def test_load_model_positional_keyword_and_none_inputs():
    positional = load_model(f"{TINY}:mlp", batch_size=3, inference=True).graph
    keyword = load_model(f"{TINY}:mlp_keyword_inputs", batch_size=3, inference=True).graph
    assert positional.meta["batch_size"] == 3
    np.testing.assert_array_equal(positional.flops, keyword.flops)
    assert positional.flops.sum() == 2 * 3 * 4 * 8 + 2 * 3 * 8 * 3
    with_none = load_model(f"{TINY}:optional_none", inference=True).graph
    assert list(with_none.kinds) == ["input", "matmul"]


@pytest.mark.parametrize(
    ("spec", "batch_size", "fragment"),
    [
        (f"{FIXTURES}/missing.py:mlp", None, "does not exist"),
        (f"{TINY}:nope", None, "defines no 'nope'; functions defined there: .*mlp"),
        (f"{TINY}:NOT_A_FUNCTION", None, "is a int, not a function"),
        (f"{TINY}:raises", None, r"raises\(\) raised ValueError: weights file not found"),
        (f"{TINY}:returns_module_only", None, r"must return \(module, example_inputs\)"),
        (f"{TINY}:returns_bad_inputs", None, "its second item is a int"),
        (f"{TINY}:returns_non_module", None, "its first item is a str"),
        (f"{TINY}:fixed_batch", 4, "takes no batch_size argument"),
        (f"{TINY}:mlp", 0, "batch size must be a positive integer"),
        (f"{FIXTURES}/broken_import.py:build", None, "raised ImportError: this model file needs"),
    ],
)
def test_spec_errors(spec: str, batch_size: int | None, fragment: str):
    with pytest.raises(RlplaceError, match=fragment) as info:
        model_and_inputs(spec, batch_size=batch_size)
    assert "\n" not in str(info.value)
