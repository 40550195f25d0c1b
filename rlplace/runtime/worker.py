"""One rank of ``rlplace run``: build the pipeline stages with torch and train with a schedule.

Every rank rebuilds the model from its recipe (same seed, same weights), splits it with
``torch.distributed.pipelining.pipeline(module, mb_args=..., split_spec=...)`` (``torch.export``
on real tensors of one micro-batch), builds its own stages (``Pipe.build_stage``) and runs
``warmup + steps`` training steps with the schedule's ``step``. Rank r runs stage r
(``gpipe``, ``1f1b``) or stages r, r + R, r + 2R, ... of R ranks (``interleaved-1f1b``).

The loss: the last stage applies `rlplace.measure.program.default_loss` to each
micro-batch's output (the schedule's ``loss_fn(output, target)``; the target is a dummy);
torch scales gradients by 1/M (``scale_grads``), so the gradients are those of the mean of the
micro-batch losses, which equals the unpipelined loss for a per-sample mean. Each step's
time is the slowest rank's (ranks start together after a barrier), and beside it the longest
time any rank's main thread was ready to run but waited for a CPU in that step (Linux
schedstat run delay, as `rlplace.measure.ranks.time_assignment` reports it); per rank, the
median main-thread CPU time of a step.

The stage modules run their generated code, not ``torch.fx.Interpreter`` (`run_generated_code`).

Entry: ``python -m rlplace.runtime.worker --job JOB --out DIR`` with ``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT`` set (`rlplace.measure.distributed.launch_job` or torchrun).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from rlplace.errors import RlplaceError
from rlplace.measure.launch import report_rank_outcome


def stages_of_rank(rank: int, num_ranks: int, num_stages: int) -> list[int]:
    """Stage indices rank ``rank`` runs: r, r + R, ... (one stage each when S = R)."""
    return list(range(rank, num_stages, num_ranks))


def microbatch_inputs(inputs: Any, microbatches: int) -> tuple[tuple[Any, ...], dict[str, Any], tuple[Any, ...], dict[str, Any], int]:
    """Whole-batch args/kwargs, one micro-batch's args/kwargs (for tracing) and the batch size.

    Raises:
        RlplaceError: inputs that are not tensors, or a batch not divisible by ``microbatches``.
    """
    from rlplace.measure.program import split_inputs

    args, kwargs = split_inputs(inputs)
    tensors = [*args, *kwargs.values()]
    if not tensors or not all(isinstance(t, torch.Tensor) and t.dim() > 0 for t in tensors):
        raise RlplaceError("rlplace run splits the model's inputs into micro-batches along dim 0; every input must be a tensor with a batch dimension")
    batch = int(tensors[0].shape[0])
    if any(int(t.shape[0]) != batch for t in tensors) or batch % microbatches:
        raise RlplaceError(f"batch size {batch} is not divisible into {microbatches} micro-batches (every input's dim 0 must be the batch); change --microbatches or --batch-size")
    size = batch // microbatches
    return args, kwargs, tuple(t[:size] for t in args), {k: v[:size] for k, v in kwargs.items()}, batch


def run_generated_code(module: nn.Module) -> int:
    """Make ``pipeline()``'s unflattened submodules run their generated code; returns how many.

    ``pipeline()`` outlines every called submodule as a ``torch.export.unflatten``
    ``InterpreterModule``, which by default executes its graph node by node through
    ``torch.fx.Interpreter`` (for readable stack traces). On small CPU micro-batches that
    interpretation cost ~1 ms per stage call, several times the compute; the codegen path
    (what ``torch.export.unflatten._disable_interpreter`` selects) computes the same ops.
    """
    count = 0
    for sub in module.modules():
        if getattr(sub, "_run_with_interpreter", False):
            sub._run_with_interpreter = False
            count += 1
    return count


def make_schedule(schedule: str, stages: Sequence[Any], microbatches: int, loss_fn: Any) -> Any:
    """The torch schedule object of ``schedule`` for this rank's stages."""
    from torch.distributed.pipelining import Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

    if schedule == "interleaved-1f1b":
        return ScheduleInterleaved1F1B(list(stages), microbatches, loss_fn=loss_fn)
    if len(stages) != 1:
        raise RlplaceError(f"schedule {schedule} runs one stage per rank; this rank got {len(stages)} (use interleaved-1f1b)")
    kind = ScheduleGPipe if schedule == "gpipe" else Schedule1F1B
    return kind(stages[0], microbatches, loss_fn=loss_fn)


def pipeline_loss(output: Any, target: Any) -> torch.Tensor:
    """``loss_fn(output, target)`` of the schedule: the training loss of one micro-batch."""
    from rlplace.measure.program import default_loss

    del target  # the models train on their own output (see the module doc)
    return default_loss(output)


def run_rank(job: dict[str, Any], rank: int, world_size: int) -> dict[str, Any] | None:
    """Join the group, build this rank's stages, train; rank 0 returns the result."""
    from torch.distributed.pipelining import pipeline

    from rlplace.measure.executor import make_optimizer
    from rlplace.measure.ranks import rank_device, run_delay
    from rlplace.measure.recipe import ModelRecipe
    from rlplace.runtime.stages import SplitSpec

    spec = SplitSpec.from_json(job["split_spec"])
    if world_size != spec.num_ranks:
        raise RlplaceError(f"the split spec runs on {spec.num_ranks} ranks but {world_size} were started")
    if int(job.get("threads", 1)) > 0:
        torch.set_num_threads(int(job.get("threads", 1)))
    backend, schedule = str(job.get("backend", "gloo")), str(job["schedule"])
    device = rank_device(backend, rank)
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=max(1.0, float(job.get("timeout_s", 120)))))
    try:
        module, inputs = ModelRecipe.from_json(job["model"]).build()
        microbatches = int(job["microbatches"])
        args, kwargs, mb_args, mb_kwargs, batch = microbatch_inputs(inputs, microbatches)
        pipe = pipeline(module, mb_args=mb_args, mb_kwargs=mb_kwargs or None, split_spec=spec.torch_split_spec())
        if pipe.num_stages != spec.num_stages:
            raise RlplaceError(f"pipeline() split the model into {pipe.num_stages} stages, the split spec has {spec.num_stages}; a split module runs more than once or outside the forward")
        mine = stages_of_rank(rank, world_size, spec.num_stages)
        stages = [pipe.build_stage(index, device) for index in mine]
        for stage in stages:
            run_generated_code(stage.submod)
        parameters = _unique_parameters([stage.submod for stage in stages])
        optimizer = make_optimizer(str(job.get("optimizer", "adam")), parameters)
        step = make_schedule(schedule, stages, microbatches, pipeline_loss)
        first, last = 0 in mine, spec.num_stages - 1 in mine
        target = torch.zeros(batch, device=device)
        args = tuple(a.to(device) for a in args)
        kwargs = {k: v.to(device) for k, v in kwargs.items()}
        steps, warmup = int(job.get("steps", 10)), int(job.get("warmup", 2))
        times: list[float] = []
        waits: list[float] = []
        cpu_times: list[float] = []
        losses: list[torch.Tensor] = []
        for index in range(warmup + steps):
            for parameter in parameters:
                parameter.grad = None
            losses = []
            dist.barrier()
            started, wait_started, cpu_started = time.perf_counter(), run_delay(), time.thread_time()
            step.step(*(args if first else ()), **(kwargs if first else {}), target=target if last else None, losses=losses if last else None)
            if optimizer is not None:
                optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if index >= warmup:
                times.append(time.perf_counter() - started)
                waits.append(run_delay() - wait_started)
                cpu_times.append(time.thread_time() - cpu_started)
        slowest = torch.tensor(times, dtype=torch.float64, device=device)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        waited = torch.tensor(waits, dtype=torch.float64, device=device)
        dist.all_reduce(waited, op=dist.ReduceOp.MAX)
        busy = torch.zeros(world_size, dtype=torch.float64, device=device)
        busy[rank] = float(sorted(cpu_times)[len(cpu_times) // 2])
        dist.all_reduce(busy, op=dist.ReduceOp.SUM)
        loss = torch.tensor([float(torch.stack([x.detach().float() for x in losses]).mean()) if last else float("-inf")], dtype=torch.float64, device=device)
        dist.all_reduce(loss, op=dist.ReduceOp.MAX)
        state = None
        if job.get("return_state"):
            gathered: list[Any] = [None] * world_size
            dist.all_gather_object(gathered, _state([stage.submod for stage in stages]))
            state = {"parameters": {}, "grads": {}}
            for part in gathered:
                for group in state:
                    state[group].update(part[group])
        if rank != 0:
            return None
        return {
            "step_times": slowest.cpu().tolist(),
            "cpu_waits": [w for w in waited.cpu().tolist() if w == w],
            "cpu_times": busy.cpu().tolist(),
            "loss": float(loss.item()),
            "num_stages": pipe.num_stages,
            "world_size": world_size,
            "stage_parameters": _stage_parameter_counts(pipe),
            "state": state,
        }
    finally:
        dist.destroy_process_group()


def _unique_parameters(modules: Sequence[nn.Module]) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for module in modules:
        for parameter in module.parameters():
            if parameter.requires_grad:
                seen.setdefault(id(parameter), parameter)
    return list(seen.values())


def _state(modules: Sequence[nn.Module]) -> dict[str, dict[str, list[Any]]]:
    """Parameters and gradients by the original module's FQNs (tests compare them)."""
    state: dict[str, dict[str, list[Any]]] = {"parameters": {}, "grads": {}}
    for module in modules:
        for name, parameter in module.named_parameters():
            state["parameters"][name] = parameter.detach().double().tolist()
            if parameter.grad is not None:
                state["grads"][name] = parameter.grad.detach().double().tolist()
    return state


def _stage_parameter_counts(pipe: Any) -> list[int]:
    return [sum(p.numel() for p in pipe.get_stage_module(s).parameters()) for s in range(pipe.num_stages)]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry of one rank (see the module doc); writes DIR/result.json (rank 0) or DIR/error-<rank>.txt."""
    parser = argparse.ArgumentParser(prog="python -m rlplace.runtime.worker", description="one rank of rlplace run")
    parser.add_argument("--job", required=True)
    parser.add_argument("--out", required=True)
    parsed = parser.parse_args(argv)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    job = json.loads(Path(parsed.job).read_text(encoding="utf-8"))
    return report_rank_outcome(Path(parsed.out), lambda rank: run_rank(job, rank, world_size))


if __name__ == "__main__":
    status = main()
    # As in rlplace.measure.distributed: skip interpreter teardown (gloo threads may abort it).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
