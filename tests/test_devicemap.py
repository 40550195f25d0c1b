"""accelerate device maps: values accelerate takes, tied parameters, modules kept whole, loading."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rlplace.api import cluster_from_max_memory
from rlplace.devicemap import accelerate_devices, keep_modules_whole, module_device_map, no_split_paths
from rlplace.graph import NO_CLASS, OpGraph


def chain_graph(paths: list[str], params: list[list[str]], coloc: list[int | None] | None = None, **meta: object) -> OpGraph:
    """A chain of ops, op i owning ``params[i]`` (1 KiB each when non-empty)."""
    ops = [
        {"name": f"op{i}", "kind": "matmul", "flops": 1.0, "output_bytes": 4.0, "param_bytes": 1024.0 * bool(params[i]),
         "coloc": None if coloc is None else coloc[i]}
        for i in range(len(paths))
    ]  # fmt: skip
    edges = [{"src": f"op{i}", "dst": f"op{i + 1}", "bytes": 4.0} for i in range(len(paths) - 1)]
    return OpGraph.build(ops, edges, name="chain", meta={"module_paths": paths, "op_params": params, **meta})


def test_values_are_accelerator_indices_and_cpu() -> None:
    cluster = cluster_from_max_memory({0: "16GiB", 1: "16GiB", "cpu": "64GiB"}, device_kind="T4")
    assert cluster.device_names == ["gpu0", "gpu1", "cpu"]
    assert accelerate_devices(cluster) == [0, 1, "cpu"]
    graph = chain_graph(["embed", "body", "head"], [["embed.weight"], ["body.weight"], ["head.weight"]])
    assert module_device_map(graph, [0, 1, 2], cluster) == {"body": 1, "embed": 0, "head": "cpu"}
    assert module_device_map(graph, [2, 2, 2], cluster) == {"": "cpu"}


def test_tied_and_unused_tensors_are_covered_and_modules_stay_whole() -> None:
    cluster = cluster_from_max_memory({0: "16GiB", 1: "16GiB"}, device_kind="T4")
    # head.weight is embed.weight (tied, like GPT-2's lm_head); head.bias is its own parameter.
    graph = chain_graph(
        ["embed", "body", "head"], [["embed.weight"], ["body.weight"], ["head.bias"]], param_aliases={"embed.weight": ["head.weight"]}
    )
    # head.bias (owned, device 1) leads module head, so the tied head.weight joins it there.
    got = module_device_map(graph, [0, 1, 1], cluster, state_dict_keys=["embed.weight", "body.weight", "body.scale", "head.weight", "head.bias"])
    assert got == {"body": 1, "embed": 0, "head": 1}
    # Without an owned tensor in head, the alias follows its canonical parameter.
    graph = chain_graph(["embed", "body", "head"], [["embed.weight"], ["body.weight"], []], param_aliases={"embed.weight": ["head.weight"]})
    assert module_device_map(graph, [0, 1, 1], cluster) == {"body": 1, "embed": 0, "head": 0}


def test_keep_modules_whole_merges_ops_and_existing_classes_exactly() -> None:
    # ops: 0 embed, 1-2 block.0, 3 block.1, 4 head, 5 backward of op 1 (class 7 with op 1), 6 loose
    paths = ["embed", "h.0.attn", "h.0.mlp", "h.1", "head", "h.0.attn", "head"]
    graph = chain_graph(paths, [[]] * 7, coloc=[None, 7, None, None, 9, 7, None])
    whole = keep_modules_whole(graph, ["h.0", "h.1"])
    assert whole.coloc.tolist() == [NO_CLASS, 0, 0, 1, 2, 0, NO_CLASS]
    assert whole.meta["kept_whole"] == ["h.0", "h.1"]
    assert keep_modules_whole(graph, ["absent"]) is graph


def tiny_hf(family: str) -> Any:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if family == "gpt2":
        config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=64, n_positions=32, use_cache=False, bos_token_id=0, eos_token_id=0)
        return transformers.GPT2LMHeadModel(config)
    if family == "bert":
        config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=64, max_position_embeddings=32)
        return transformers.BertForMaskedLM(config)
    config = transformers.LlamaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64, vocab_size=64,
        max_position_embeddings=32, use_cache=False, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config)


def test_gpt2_split_after_block_0_has_the_exact_accelerate_map() -> None:
    torch = pytest.importorskip("torch")
    from accelerate.utils import check_device_map

    from rlplace.capture import capture_model

    model = tiny_hf("gpt2")
    ids = torch.zeros(2, 8, dtype=torch.long)
    graph = capture_model(model, {"input_ids": ids, "labels": ids}, training=True, name="gpt2-tiny")
    later = ("transformer.h.1", "transformer.ln_f", "lm_head")
    placement = np.array([int(str(p).startswith(later)) for p in graph.meta["module_paths"]])
    cluster = cluster_from_max_memory({0: "16GiB", 1: "16GiB"}, device_kind="T4")
    got = module_device_map(graph, placement, cluster, state_dict_keys=model.state_dict())
    # lm_head.weight is transformer.wte.weight: it stays with the embedding on device 0.
    assert got == {"lm_head": 0, "transformer.h.0": 0, "transformer.h.1": 1, "transformer.ln_f": 1, "transformer.wpe": 0, "transformer.wte": 0}
    check_device_map(model, got)
    assert no_split_paths(model) == ["transformer.h.0", "transformer.h.1"]


@pytest.mark.parametrize("family", ["gpt2", "bert", "llama"])
def test_placed_map_passes_check_loads_and_trains(family: str, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from accelerate import dispatch_model
    from accelerate.utils import check_device_map

    import rlplace

    model = tiny_hf(family)
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    result = rlplace.place(
        model, {"input_ids": ids, "labels": ids}, cluster={0: "16GiB", 1: "16GiB"}, device_kind="T4", objective="pipelined", method="local-search"
    )
    device_map = result.device_map()
    assert set(device_map.values()) <= {0, 1}
    for whole in no_split_paths(model):  # no key below a _no_split_modules instance
        assert not any(key.startswith(whole + ".") for key in device_map), (whole, device_map)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # BERT's cls.predictions.bias is a parameter key
        check_device_map(model, device_map)
    model.save_pretrained(tmp_path)
    on_cpu = {key: "cpu" for key in device_map}  # this machine has no GPU: every device index becomes the CPU
    loaded = type(model).from_pretrained(tmp_path, device_map=on_cpu)
    loaded = dispatch_model(loaded, device_map=on_cpu)
    loaded.train()
    optimizer = torch.optim.Adam(loaded.parameters(), lr=1e-3)
    loss = loaded(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert isinstance(loaded, transformers.PreTrainedModel)


def test_keep_whole_is_on_by_default_and_can_be_turned_off() -> None:
    torch = pytest.importorskip("torch")

    import rlplace

    model = tiny_hf("llama")
    ids = torch.zeros(2, 8, dtype=torch.long)
    options = {"cluster": {0: "16GiB", 1: "16GiB"}, "device_kind": "T4", "objective": "pipelined", "method": "local-search"}
    kept = rlplace.place(model, {"input_ids": ids, "labels": ids}, **options)
    loose = rlplace.place(model, {"input_ids": ids, "labels": ids}, keep_whole=False, **options)
    assert kept.graph.meta["kept_whole"] == ["model.layers.0", "model.layers.1"]
    assert "kept_whole" not in loose.graph.meta
    paths = kept.graph.meta["module_paths"]
    for layer in ("model.layers.0", "model.layers.1"):
        devices = {int(kept.placement[op]) for op, path in enumerate(paths) if path == layer or path.startswith(layer + ".")}
        assert len(devices) == 1
