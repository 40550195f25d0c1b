"""Implementations of the ``rlplace`` subcommands (argument parsing lives in ``rlplace.cli``)."""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from typing import Any

import numpy as np

from rlplace.errors import RlplaceError
from rlplace.io import check_output_paths, dumps_finite, print_json, write_outputs, write_stdout
from rlplace.limits import MAX_BUDGET_S, MAX_DEVICES, MAX_EVALUATIONS, MAX_MICROBATCHES, MAX_THREADS, check_count, check_seed
from rlplace.load import load_model, resolve_cluster
from rlplace.methods import SEARCH_METHODS, TIMED_METHODS
from rlplace.pipeline import Decision, decide, default_objective
from rlplace.portfolio import resolve_workers
from rlplace.report import console, decision_table, evaluation_table, graph_summary
from rlplace.units import show_bytes

#: Methods `rlplace evaluate` compares when --methods is not given (fast ones only).
DEFAULT_EVALUATE_METHODS = ("single", "round-robin", "metis", "m-topo", "m-etf", "m-sct", "heft", "critical-path", "dp", "local-search")


def require_positive(name: str, value: int) -> int:
    """Validate a positive integer option."""
    if value < 1:
        raise RlplaceError(f"{name} must be at least 1 (got {value})")
    return value


def check_microbatches(value: int) -> int:
    """``--microbatches``: 1 to `MAX_MICROBATCHES`."""
    return check_count(require_positive("--microbatches", value), MAX_MICROBATCHES, "MAX_MICROBATCHES", "--microbatches")


def _load(args: argparse.Namespace, spec: str):
    require_positive("--max-groups", args.max_groups)
    if args.batch_size is not None:
        require_positive("--batch-size", args.batch_size)
    from rlplace.feedback import phase

    with phase("capture" if spec.startswith("zoo:") or ".py:" in spec else "load", spec):
        return load_model(spec, inference=args.inference, batch_size=args.batch_size, optimizer=args.optimizer)


def _cluster(args: argparse.Namespace, spec: str | None, model):
    """The cluster of ``spec`` (or the model file's own), with ``--profile``'s calibration applied."""
    cluster = resolve_cluster(spec, model)
    if getattr(args, "profile", None):
        from rlplace.profile import apply_profile, load_profile

        cluster = apply_profile(cluster, load_profile(args.profile))
    return cluster


def run_graph(args: argparse.Namespace) -> int:
    check_output_paths([args.save])
    model = _load(args, args.model)
    summary = graph_summary(model.graph, args.max_groups)
    printed = dumps_finite(summary, "the graph summary") if args.json else None
    if args.save:
        write_outputs({args.save: dumps_finite(model.graph.to_json_dict(), "the graph")})
    if printed is not None:
        write_stdout(printed + "\n")
    else:
        console().print(_graph_text(summary))
    return 0


def _graph_text(summary: dict[str, Any]) -> str:
    return (
        f"[bold]{summary['name']}[/bold]: {summary['num_ops']:,} ops ({summary['num_backward_ops']:,} backward/optimizer), "
        f"{summary['num_edges']:,} edges, {summary['num_groups']:,} groups at G={summary['max_groups']}\n"
        f"  forward FLOPs {summary['forward_flops']:.4g}, total FLOPs {summary['total_flops']:.4g}\n"
        f"  parameters {show_bytes(summary['param_bytes'])}, resident (params + grads + optimizer) {show_bytes(summary['resident_bytes'])}, "
        f"activations {show_bytes(summary['activation_bytes'])}"
    )


def run_simulate(args: argparse.Namespace) -> int:
    from rlplace.costs import CostTable
    from rlplace.formats import load_placement_spec
    from rlplace.placement import check_constraints
    from rlplace.simulate import simulate

    check_output_paths([args.trace])
    check_microbatches(args.microbatches)
    model = _load(args, args.model)
    cluster = _cluster(args, args.cluster, model)
    placement = load_placement_spec(args.placement, model.graph, cluster)
    costs = CostTable.build(model.graph, cluster)
    check_constraints(model.graph, costs, placement)
    objective = args.objective or default_objective(model.graph)
    result = simulate(model.graph, cluster, costs, placement, objective=objective, microbatches=args.microbatches, schedule=args.schedule, record=bool(args.trace))
    decision = Decision("given", objective, model.graph, cluster, placement, 0.0, result)
    if result.oom:
        raise RlplaceError(_over_memory(decision))
    outputs = _decision_outputs(decision, trace=args.trace)
    printed = dumps_finite(decision.to_json(), "the result") if args.json else None
    write_outputs(outputs)
    if printed is not None:
        write_stdout(printed + "\n")
    else:
        console().print(decision_table(decision))
    return 0


def _over_memory(decision: Decision) -> str:
    """The error of a given placement that does not fit: the first device over capacity, by how much."""
    result = decision.result
    device = int(np.argmax(np.asarray(result.overflow_bytes) > 0))
    return (
        f"the placement does not fit: device {decision.cluster.device_names[device]} needs {show_bytes(float(result.peak_memory[device]))} "
        f"but has {show_bytes(float(result.capacity[device]))} (over by {show_bytes(float(result.overflow_bytes[device]))}); "
        "move ops off that device"
    )


def _decision_outputs(decision: Decision, *, trace: str | None = None, out: str | None = None) -> dict[str, str]:
    """The ``--trace`` and ``--out`` files of a decision, as text (nothing written yet)."""
    outputs: dict[str, str] = {}
    if out:
        outputs[out] = dumps_finite(decision.to_json(), f"--out {out}")
    if trace:
        from rlplace.trace import chrome_trace

        outputs[trace] = dumps_finite(chrome_trace(decision.result, decision.graph, decision.cluster), f"--trace {trace}")
    return outputs


def run_place(args: argparse.Namespace) -> int:
    check_output_paths([args.out, args.device_map, args.split_spec, args.trace, args.plot])
    check_microbatches(args.microbatches)
    check_seed(args.seed)
    if args.checkpoint is not None and args.method != "policy":
        raise RlplaceError(f"--checkpoint applies to the policy method only, not {args.method!r} (drop --checkpoint)")
    model = _load(args, args.model)
    cluster = _cluster(args, args.cluster, model)
    objective = args.objective or default_objective(model.graph)
    decision = decide(
        model, cluster, args.method, objective=objective, microbatches=args.microbatches, schedule=args.schedule, seed=args.seed,
        max_groups=args.max_groups, record=bool(args.trace or args.plot), method_options=_method_options(args),
    )
    outputs: dict[str, str | bytes] = dict(_decision_outputs(decision, trace=args.trace, out=args.out))
    if args.device_map:
        if decision.coarsening is None and model.module is None:
            raise RlplaceError("--device-map needs a PyTorch model (file.py:function or zoo:NAME)")
        outputs[args.device_map] = json.dumps(_device_map(decision), indent=1)
    if args.split_spec:
        from rlplace.runtime.stages import split_spec

        spec = split_spec(decision.graph, decision.placement, cluster, microbatches=args.microbatches, schedule=getattr(args, "schedule", None) or "gpipe", module=model.module)
        outputs[args.split_spec] = json.dumps(spec.to_json(), indent=1)
    if args.plot:
        from rlplace.plot import placement_png

        outputs[args.plot] = placement_png(decision)
    printed = dumps_finite(decision.to_json(), "the result") if args.json else None
    # Every output is computed above; only now touch the disk, all files or none.
    write_outputs(outputs)
    if printed is not None:
        write_stdout(printed + "\n")
    else:
        console().print(decision_table(decision))
    return 0


def _method_options(args: argparse.Namespace) -> dict[str, Any]:
    """Options of the searching methods: ``stages`` (dp, local-search), ``evaluations``
    (policy, local-search), ``budget_s`` (those and ilp), ``workers`` (policy, local-search),
    ``checkpoint`` (policy)."""
    options = _stage_options(args.method) if args.stages else {}
    budgets = {"--evaluations": (args.evaluations, SEARCH_METHODS), "--budget-s": (args.budget_s, TIMED_METHODS), "--workers": (args.workers, SEARCH_METHODS)}
    for flag, (value, takers) in budgets.items():
        if value is not None and args.method not in takers:
            raise RlplaceError(f"{flag} applies to the methods {', '.join(takers)}, not {args.method!r} (drop {flag})")
    if args.evaluations is not None:
        options["evaluations"] = check_count(require_positive("--evaluations", args.evaluations), MAX_EVALUATIONS, "MAX_EVALUATIONS", "--evaluations")
    if args.budget_s is not None:
        if not (math.isfinite(args.budget_s) and 0 < args.budget_s <= MAX_BUDGET_S):
            raise RlplaceError(f"--budget-s must be a number of seconds in (0, {MAX_BUDGET_S:g}], got {args.budget_s:g}")
        options["budget_s"] = args.budget_s
    if args.workers is not None:
        options["workers"] = resolve_workers(args.workers)
    if args.method == "policy" and args.checkpoint is not None:
        options["checkpoint"] = args.checkpoint
    return options


def _stage_options(method: str) -> dict[str, Any]:
    from rlplace.baselines import STAGE_AWARE

    if method not in STAGE_AWARE:
        raise RlplaceError(f"--stages works with the methods {', '.join(sorted(STAGE_AWARE))}, not {method!r}")
    return {"stages": True}


def _device_map(decision: Decision) -> dict[str, int | str]:
    from rlplace.devicemap import module_device_map

    return module_device_map(decision.graph, decision.placement, decision.cluster)


def run_evaluate(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    check_microbatches(args.microbatches)
    check_seed(args.seed)
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else list(DEFAULT_EVALUATE_METHODS)
    from rlplace.methods import check_method_names

    check_method_names(methods)
    if args.stages:
        for method in methods:
            _stage_options(method)
    models = [_load(args, spec) for spec in args.models]
    rows: list[dict[str, Any]] = []
    jobs = [(model, cluster_spec) for model in models for cluster_spec in (args.cluster or [None])]
    with Progress(console=console(stderr=True), transient=True, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task("evaluating", total=len(jobs) * len(methods))
        for model, cluster_spec in jobs:
            cluster = _cluster(args, cluster_spec, model)
            objective = args.objective or default_objective(model.graph)
            single_time = None
            for method in methods:
                progress.update(task, description=f"{model.graph.name} / {cluster.name} / {method}")
                rows.append(_evaluate_one(model, cluster, method, objective, args))
                if method == "single" and rows[-1]["step_time"] is not None:
                    single_time = rows[-1]["step_time"]
                progress.advance(task)
            _add_ratios([r for r in rows if r["model"] == model.spec and r["cluster"] == cluster.name], single_time)
    if args.json:
        print_json(rows)
    elif args.csv:
        write_stdout(_rows_csv(rows))
    else:
        console().print(evaluation_table(rows))
    return 0


def _evaluate_one(model, cluster, method: str, objective: str, args: argparse.Namespace) -> dict[str, Any]:
    try:
        decision = decide(
            model, cluster, method, objective=objective, microbatches=args.microbatches, schedule=args.schedule, seed=args.seed,
            max_groups=args.max_groups, method_options=_stage_options(method) if args.stages else None,
        )
    except RlplaceError as error:
        schedule = args.schedule if objective == "pipelined" else None  # as a Decision's row says it
        return {"model": model.spec, "cluster": cluster.name, "method": method, "objective": objective, "schedule": schedule, "step_time": None, "error": str(error)}
    row = decision.to_json()
    row.update(model=model.spec, cluster=cluster.name, error=None)
    return row


def _add_ratios(rows: list[dict[str, Any]], single_time: float | None) -> None:
    for row in rows:
        step = row.get("step_time")
        ok = step is not None and step > 0
        row["speedup_vs_single"] = (single_time / step) if ok and single_time is not None else None
        row["ratio_to_lower_bound"] = (step / row["lower_bound"]) if ok and row.get("lower_bound") else None


CSV_FIELDS = ("model", "cluster", "method", "objective", "step_time", "speedup_vs_single", "ratio_to_lower_bound", "max_peak_memory_bytes", "oom", "decide_s", "error")


def _rows_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        peak = row.get("peak_memory_bytes")
        writer.writerow({**row, "max_peak_memory_bytes": max(peak) if peak else None})
    return buffer.getvalue()


def run_measure(args: argparse.Namespace) -> int:
    from rlplace.measure.cli import run_measure_command

    check_seed(args.seed)
    check_count(require_positive("--threads", args.threads), MAX_THREADS, "MAX_THREADS", "--threads")
    return run_measure_command(args)


def run_run(args: argparse.Namespace) -> int:
    from rlplace.runtime.run import run_run_command

    return run_run_command(args)


def run_tune(args: argparse.Namespace) -> int:
    from rlplace.agents.tune import run_tune_command  # checks its own options (train_agent.py --reward measured calls it too)

    return run_tune_command(args)


def run_calibrate(args: argparse.Namespace) -> int:
    from rlplace.measure.cli import run_calibrate_command

    check_output_paths([args.out])
    check_count(require_positive("--devices", args.devices), MAX_DEVICES, "MAX_DEVICES", "--devices")
    check_count(require_positive("--threads", args.threads), MAX_THREADS, "MAX_THREADS", "--threads")
    return run_calibrate_command(args)


def run_methods(args: argparse.Namespace) -> int:
    from rlplace.methods import METHOD_DESCRIPTIONS

    for name, text in METHOD_DESCRIPTIONS.items():
        print(f"{name:15s} {text}")
    print(f"{'expert:FILE':15s} a human-expert split in the dnn-partitioning output format")
    return 0


def run_presets(args: argparse.Namespace) -> int:
    from rlplace.cluster_spec import PRESETS, load_cluster

    for name in PRESETS:
        cluster = load_cluster(name)
        kinds = ", ".join(sorted({d.kind for d in cluster.devices}))
        hosts = len({d.host for d in cluster.devices})
        print(f"{name:18s} {cluster.num_devices} devices ({kinds}) on {hosts} host(s), memory {show_bytes(float(np.sum(cluster.memory)))}")
    return 0


def run_zoo(args: argparse.Namespace) -> int:
    from rlplace.zoo import ZOO

    for name, entry in ZOO.items():
        print(f"zoo:{name:22s} {entry.family:12s} {entry.description}")
    print("synthetic:layered | synthetic:series-parallel | synthetic:fork-join  (options :n=OPS:seed=S)")
    return 0

