"""Accuracy and cost of capturing PyTorch models into OpGraph.

Part 1 (``--part small``), per model (an MLP, a 2-layer GPT-2, a small ResNet, all built on
the meta device): ``forward_flops`` (sum over the captured forward ops) against
FlopCounterMode over the whole module forward on fake tensors (target: within 1 %), and
``param_bytes`` against the exact sum of the parameters' sizes (target: equal), for the
inference graph and the training graph, with op/edge counts and capture seconds.

Part 2 (``--part llama``, run in a fresh subprocess by default so its peak RSS is its own):
a LLaMA-7B training graph (transformers ``LlamaConfig`` defaults: hidden 4096, 32 layers,
intermediate 11008, 32 heads, vocab 32000) at batch 1, sequence 2048 on meta; prints the
time of each capture phase (export, joint forward/backward trace, OpGraph), the time of
`rlplace.coarsen.coarsen` to 256 groups, and the peak RSS. Targets: capture + coarsen
<= 30 s, peak RSS <= 3 GB. Wall and CPU seconds are both printed: on a shared machine the
CPU seconds are the load-independent number.

    python benchmarks/bench_capture.py [--part all|small|llama] [--seq 2048] [--layers 32]
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rlplace.capture import capture_model


def whole_forward_flops(module: nn.Module, kwargs: dict[str, Any], training: bool) -> int:
    """FlopCounterMode over ``module(**kwargs)`` on fake copies of the (meta) inputs."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    module.train(training)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        with FlopCounterMode(display=False) as counter:
            module(**fake)
    return counter.get_total_flops()


def small_models() -> list[tuple[str, nn.Module, dict[str, Any]]]:
    from transformers import GPT2Config, GPT2LMHeadModel, ResNetConfig, ResNetForImageClassification

    with torch.device("meta"):
        mlp = nn.Sequential(nn.Linear(1024, 4096), nn.GELU(), nn.Linear(4096, 4096), nn.GELU(), nn.Linear(4096, 1024))
        gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=128, n_head=4, use_cache=False))
        resnet = ResNetForImageClassification(
            ResNetConfig(embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], layer_type="basic", num_labels=1000)
        )
    meta = torch.device("meta")
    return [
        ("mlp-1024x4096 b64", mlp, {"input": torch.zeros(64, 1024, device=meta)}),
        ("gpt2-2x128 b8 s128", gpt2, {"input_ids": torch.zeros(8, 128, dtype=torch.long, device=meta), "use_cache": False}),
        ("resnet-basic b8 224px", resnet, {"pixel_values": torch.zeros(8, 3, 224, 224, device=meta)}),
    ]


def run_small() -> None:
    header = f"{'model':24s} {'graph':9s} {'ops':>6s} {'edges':>6s} {'forward_flops':>14s} {'FlopCounter':>14s} {'ratio':>8s} {'param_bytes':>12s} {'exact':>12s} {'backward':>8s} {'s':>6s}"
    print(header)
    for name, module, inputs in small_models():
        exact = sum(p.numel() * p.element_size() for p in module.parameters())
        for training in (False, True):
            start = time.perf_counter()
            graph = capture_model(module, inputs, training=training, name=name)
            seconds = time.perf_counter() - start
            forward = float(graph.flops[~graph.is_backward].sum())
            reference = whole_forward_flops(module, inputs, training)
            ratio = forward / reference if reference else float("nan")
            print(
                f"{name:24s} {'training' if training else 'inference':9s} {graph.num_ops:6d} {graph.num_edges:6d} {forward:14.6g} {reference:14.6g} "
                f"{ratio:8.5f} {graph.param_bytes.sum():12.0f} {exact:12d} {graph.meta['backward']:>8s} {seconds:6.2f}"
            )


class _PhaseTimes(logging.Handler):
    """Collects the phase lines `rlplace.capture` logs at INFO."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run_llama(seq_len: int, layers: int) -> dict[str, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    handler = _PhaseTimes()
    capture_logger = logging.getLogger("rlplace.capture")
    capture_logger.addHandler(handler)
    capture_logger.setLevel(logging.INFO)
    config = LlamaConfig(use_cache=False, num_hidden_layers=layers)
    start = time.perf_counter()
    with torch.device("meta"):
        module = LlamaForCausalLM(config)
    inputs = {"input_ids": torch.zeros(1, seq_len, dtype=torch.long, device="meta"), "use_cache": False}
    built = time.perf_counter()
    cpu_start = time.process_time()
    graph = capture_model(module, inputs, training=True, name=f"llama-7b-L{layers}")
    captured = time.perf_counter()
    capture_cpu = time.process_time() - cpu_start
    coarsen_s: float | None = None
    coarsen_cpu = 0.0
    groups: int | None = None
    try:
        from rlplace.coarsen import coarsen
    except ImportError:
        coarsen = None
    if coarsen is not None:
        cpu_start = time.process_time()
        coarse = coarsen(graph, 256)
        coarsen_s = time.perf_counter() - captured
        coarsen_cpu = time.process_time() - cpu_start
        groups = coarse.num_groups
    return {
        "layers": layers,
        "seq_len": seq_len,
        "params": sum(p.numel() for p in module.parameters()),
        "num_ops": graph.num_ops,
        "num_edges": graph.num_edges,
        "forward_tflops": float(graph.flops[~graph.is_backward].sum()) / 1e12,
        "total_tflops": float(graph.flops.sum()) / 1e12,
        "param_gb": float(graph.param_bytes.sum()) / 1e9,
        "resident_gb": float(graph.resident_bytes.sum()) / 1e9,
        "backward": graph.meta["backward"],
        "build_s": built - start,
        "capture_s": captured - built,
        "capture_cpu_s": capture_cpu,
        "coarsen_s": coarsen_s,
        "coarsen_cpu_s": coarsen_cpu,
        "groups": groups,
        "phases": handler.lines,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,  # ru_maxrss is KiB on Linux
    }


def print_llama(result: dict[str, Any]) -> None:
    print(f"\nLLaMA-7B training graph, {result['layers']} layers, batch 1, sequence {result['seq_len']}, {result['params'] / 1e9:.2f} B parameters (meta)")
    print(f"  ops {result['num_ops']}, edges {result['num_edges']}, backward: {result['backward']}")
    print(f"  forward {result['forward_tflops']:.2f} TFLOP, step {result['total_tflops']:.2f} TFLOP")
    print(f"  param_bytes {result['param_gb']:.2f} GB, resident (Adam) {result['resident_gb']:.2f} GB")
    for line in result["phases"]:
        print(f"  {line}")
    coarsen = "n/a" if result["coarsen_s"] is None else f"{result['coarsen_s']:.2f} s ({result['groups']} groups)"
    total = result["capture_s"] + (result["coarsen_s"] or 0.0)
    print(f"  capture {result['capture_s']:.2f} s + coarsen {coarsen} = {total:.2f} s wall (target <= 30 s)")
    cpu_total = result["capture_cpu_s"] + result["coarsen_cpu_s"]
    print(f"  CPU time of this process: capture {result['capture_cpu_s']:.2f} s + coarsen {result['coarsen_cpu_s']:.2f} s = {cpu_total:.2f} s")
    print(f"  peak RSS {result['peak_rss_gb']:.2f} GB (target <= 3 GB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("all", "small", "llama", "llama-json"), default="all")
    parser.add_argument("--seq", type=int, default=2048, help="LLaMA sequence length (default 2048)")
    parser.add_argument("--layers", type=int, default=32, help="LLaMA decoder layers (default 32, the 7B model)")
    options = parser.parse_args()
    if options.part in ("all", "small"):
        run_small()
    if options.part == "llama-json":
        print(json.dumps(run_llama(options.seq, options.layers)))
    elif options.part in ("all", "llama"):
        command = [sys.executable, __file__, "--part", "llama-json", "--seq", str(options.seq), "--layers", str(options.layers)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        print_llama(json.loads(output.strip().splitlines()[-1]))


if __name__ == "__main__":
    main()
