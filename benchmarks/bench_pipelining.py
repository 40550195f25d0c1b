"""Measured vs simulated step time of torch.distributed.pipelining schedules on 2 gloo ranks.

For each model, stage placements are cut at module boundaries so that the stages' forward
compute (the cost model's, on rank 0) is balanced: 2 stages for ``gpipe`` and ``1f1b``, 4
looped stages (0, 1, 0, 1) for ``interleaved-1f1b``. Each is trained with ``rlplace run``'s
machinery (`rlplace.runtime.run.run_pipeline`: one process per rank, ``pipeline()`` +
``Schedule*``) and simulated with the pipelined objective on the local CPU cluster
(uncalibrated unless ``--profile`` gives a `rlplace calibrate` profile). The simulator runs
the named schedule when it knows schedules, else GPipe order (the ``sim order`` column).

Each row is run ``--repeats`` times (a fresh pair of ranks each time) and shows the median
of those runs' median step times with their range, the ranks' CPU wait per step (the longest
rank's schedstat run delay: what other processes on the host added) and the measured time
minus those waits (an estimate of an idle host, labelled as such, never the headline). The
ranks follow the profile's keep-awake decision, as ``rlplace measure`` does. Two more columns
compare work, not time, and hardly move with the load: ``rank cpu`` is the busiest rank's
main-thread CPU time per step (median), ``sim busy`` the busiest device's busy time in the
simulation (its ops, every micro-batch, with the profile's per-stage-action overhead).

    python benchmarks/bench_pipelining.py [--models mlp,transformer] [--schedules gpipe,1f1b,interleaved-1f1b]
                                          [--microbatches 4] [--steps 10] [--warmup 2] [--repeats 3]
                                          [--profile FILE] [--json OUT]

Timings on a shared host are noisy; run it under ``nice -n -5`` as root (the ranks inherit the
priority for their sessions) and read the load average printed before and after the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from rlplace.costs import CostTable
from rlplace.graph import OpGraph
from rlplace.runtime.overhead import modeled_busy
from rlplace.runtime.stages import (
    forward_sequence,
    module_boundaries,
    snapped_placement,
    split_spec,
    stage_action_ops,
    stage_overhead,
    stage_runs,
    with_stage_overhead,
)


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention and a 4x MLP."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (y.reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for y in self.qkv(self.norm1(x)).split(d, dim=-1))
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class Transformer(nn.Module):
    """Decoder-only transformer: embedding, ``layers`` blocks, norm, untied head."""

    def __init__(self, vocab: int = 1024, d: int = 128, heads: int = 4, layers: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))


def transformer(batch_size: int = 16) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """4 blocks of width 128 on (batch_size, 64) tokens (~1.1 M parameters)."""
    return Transformer(), (torch.randint(0, 1024, (batch_size, 64)),)


def mlp(batch_size: int = 32) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """8 Linear(512, 512) + ReLU layers on a (batch_size, 512) input (~2.1 M parameters)."""
    layers: list[nn.Module] = []
    for _ in range(8):
        layers += [nn.Linear(512, 512), nn.ReLU()]
    return nn.Sequential(*layers), (torch.randn(batch_size, 512),)


MODELS = {"mlp": f"{__file__}:mlp", "transformer": f"{__file__}:transformer"}


def balanced_cuts(graph: OpGraph, costs: CostTable, module: nn.Module, stages: int) -> list[int]:
    """Positions of ``stages - 1`` module boundaries that split the forward compute (on
    device 0) most evenly: each cut is the boundary nearest its quantile of the cumulative cost."""
    sequence = forward_sequence(graph)
    cumulative = np.concatenate([[0.0], np.cumsum(costs.op_time[sequence, 0])])
    total = cumulative[-1]
    candidates = sorted({b.position for b in module_boundaries(graph, module)})
    cuts: list[int] = []
    for k in range(1, stages):
        allowed = [p for p in candidates if not cuts or p > cuts[-1]]
        cuts.append(min(allowed, key=lambda p: abs(cumulative[p] - total * k / stages)))
    return cuts


def bench_one(name: str, spec_name: str, schedule: str, args: argparse.Namespace) -> dict[str, Any]:
    from rlplace.capture import capture_model
    from rlplace.measure.recipe import ModelRecipe
    from rlplace.measure.session import local_cpu_cluster
    from rlplace.profile import load_profile
    from rlplace.runtime.run import run_pipeline

    recipe = ModelRecipe(spec_name)
    module, inputs = recipe.build()
    graph = capture_model(module, inputs, training=True, optimizer="adam", name=name)
    cluster = local_cpu_cluster(2, load_profile(args.profile) if args.profile else None)
    costs = CostTable.build(graph, cluster)
    interleaved = schedule == "interleaved-1f1b"
    cuts = balanced_cuts(graph, costs, module, 4 if interleaved else 2)
    placement = snapped_placement(graph, cuts, [0, 1, 0, 1] if interleaved else [0, 1])
    spec = split_spec(graph, placement, cluster, microbatches=args.microbatches, schedule=schedule, costs=costs, module=module)
    profile = load_profile(args.profile) if args.profile else None
    runs = []
    started = time.perf_counter()
    for _ in range(args.repeats):
        runs.append(run_pipeline(recipe, spec, steps=args.steps, warmup=args.warmup, optimizer="adam", timeout_s=600, keep_awake=profile.keep_awake if profile else None))
    medians = sorted(run.measured_step_time for run in runs)
    snapped = np.asarray(spec.placement)
    charged = with_stage_overhead(costs, stage_action_ops(graph, stage_runs(graph, snapped, interleaved=True)), stage_overhead(cluster))
    busy = modeled_busy(charged, snapped, spec.microbatches)
    unloaded = [run.unloaded_step_time for run in runs]
    return {
        "model": name,
        "schedule": schedule,
        "stages": spec.num_stages,
        "microbatches": spec.microbatches,
        "batch": int(inputs[0].shape[0]),
        "split_spec": spec.split_points,
        "measured_step_time": statistics.median(medians),
        "measured_runs": medians,
        "cpu_wait": statistics.median(statistics.median(run.cpu_waits) if run.cpu_waits else float("nan") for run in runs),
        "unloaded_step_time": statistics.median(u for u in unloaded if u is not None) if any(u is not None for u in unloaded) else None,
        "simulated_step_time": spec.snapped_step_time,
        "rank_cpu": statistics.median(max(run.cpu_times) for run in runs),
        "simulated_busy": float(busy.max()),
        "simulated_schedule": spec.simulated_schedule,
        "wall_s": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,transformer")
    parser.add_argument("--schedules", default="gpipe,1f1b,interleaved-1f1b")
    parser.add_argument("--microbatches", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each row (fresh ranks each time)")
    parser.add_argument("--profile", default=None, help="calibration profile (rlplace calibrate --out FILE)")
    parser.add_argument("--json", default=None, metavar="OUT")
    args = parser.parse_args(argv)
    rows = []
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores; nice {os.getpriority(os.PRIO_PROCESS, 0)}")
    print(
        f"{'model':12s} {'schedule':17s} {'stages':>6s} {'M':>3s} {'measured ms':>12s} {'range of runs':>15s} {'cpu-wait ms':>12s} "
        f"{'minus waits':>12s} {'simulated ms':>13s} {'rank cpu ms':>12s} {'sim busy ms':>12s} {'sim order':>10s}  split points"
    )
    for name in args.models.split(","):
        for schedule in args.schedules.split(","):
            row = bench_one(name, MODELS[name], schedule, args)
            rows.append(row)
            points = ", ".join(f"{k} {v.removeprefix('SplitPoint.')}" for k, v in row["split_spec"].items())
            spread = f"{row['measured_runs'][0] * 1e3:.1f}-{row['measured_runs'][-1] * 1e3:.1f}"
            unloaded = row["unloaded_step_time"]
            print(
                f"{name:12s} {schedule:17s} {row['stages']:6d} {row['microbatches']:3d} {row['measured_step_time'] * 1e3:12.2f} {spread:>15s} "
                f"{row['cpu_wait'] * 1e3:12.2f} {(unloaded if unloaded is not None else float('nan')) * 1e3:12.2f} "
                f"{row['simulated_step_time'] * 1e3:13.3f} {row['rank_cpu'] * 1e3:12.2f} {row['simulated_busy'] * 1e3:12.2f} {row['simulated_schedule']:>10s}  {points}",
                flush=True,
            )
    print(
        f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}; {args.repeats} runs x {args.steps} timed steps after {args.warmup} warm-up, "
        f"1 thread per rank, adam; profile {args.profile or 'none (uncalibrated)'}"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as stream:
            json.dump(rows, stream, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
