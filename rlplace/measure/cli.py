"""``rlplace measure`` and ``rlplace calibrate``: handlers the ``rlplace`` command calls.

Argument parsing lives in ``rlplace.cli``; these functions read the parsed namespace
(attribute names below) and return the exit status. Missing optional attributes take their
defaults, so a parser may leave options out.

``rlplace measure MODEL --placement P`` reads: ``model``, ``placement`` (file or
``expert:FILE``), ``cluster`` (None), ``profile`` (None), ``backend`` (``gloo``), ``steps``
(10), ``warmup`` (3), ``rounds`` (1), ``op_profile`` (False), ``timeout`` (120 s), ``threads`` (1), ``batch_size`` (None),
``optimizer`` (``adam``), ``seed`` (0), ``json`` (False), ``keep_awake`` (None: the profile's
choice, else off), ``trace`` (None: no trace file).

``rlplace calibrate`` reads: ``out`` (None: print only), ``backend`` (``gloo``), ``devices``
(2), ``threads`` (1), ``timeout`` (300 s), ``json`` (False), ``keep_awake`` (None),
``receive_cost`` (False: with it, fit what a message costs its receiver on measured splits of
`rlplace.measure.receive_fit.RECEIVE_CALIBRATION_MODELS`, about a minute more).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from rlplace.errors import RlplaceError
from rlplace.io import check_output_paths, print_json


def _option(args: argparse.Namespace, name: str, default: Any) -> Any:
    value = getattr(args, name, None)
    return default if value is None else value


def _devices_in_placement(spec: str) -> int | None:
    """Devices a placement file refers to, read before any cluster exists (None if unknown).

    Raises `RlplaceError` for a negative index; the caller range-checks the count (against
    the cluster, or `MAX_DEVICES` when the count of ranks comes from it) before anything is built.
    """
    if spec.startswith("expert:") or not os.path.isfile(spec):
        return None
    from rlplace.io import read_json

    data = read_json(spec)
    if isinstance(data, dict) and isinstance(data.get("placement"), list):
        data = data["placement"]
    devices = None
    if isinstance(data, list) and data and all(isinstance(v, int) and not isinstance(v, bool) for v in data):
        if min(data) < 0:
            raise RlplaceError(f"{spec}: device index {min(data)} is negative; devices are numbered from 0")
        devices = max(data) + 1
    elif isinstance(data, dict) and data and all(isinstance(v, str) and v.startswith("rank") and v[4:].isdigit() for v in data.values()):
        devices = max(int(v[4:]) for v in data.values()) + 1
    return devices


def check_writable(path: str) -> None:
    """`RlplaceError` unless ``path``'s folder exists (checked before minutes of measuring)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise RlplaceError(f"cannot write {path}: folder {folder} does not exist")


def run_measure_command(args: argparse.Namespace) -> int:
    """Time training steps of a placed model and print them beside the simulator's prediction."""
    if getattr(args, "inference", False):
        raise RlplaceError("rlplace measure times training steps (forward, backward, optimizer); drop --inference")
    steps, warmup, rounds = int(_option(args, "steps", 10)), int(_option(args, "warmup", 3)), int(_option(args, "rounds", 1))
    timeout = float(_option(args, "timeout", 120.0))
    backend = str(_option(args, "backend", "gloo"))
    threads = int(_option(args, "threads", 1))
    if steps < 1 or warmup < 0 or rounds < 1:
        raise RlplaceError(f"--steps and --rounds must be at least 1 and --warmup at least 0 (got {steps}, {rounds} and {warmup})")
    if not timeout > 0:
        raise RlplaceError(f"--timeout must be positive (got {timeout})")
    batch_size = getattr(args, "batch_size", None)
    if batch_size is not None and batch_size < 1:
        raise RlplaceError(f"--batch-size must be at least 1 (got {batch_size})")
    from rlplace.load import is_module_spec
    from rlplace.modelspec import is_dotted_spec

    if not (is_module_spec(str(args.model)) or is_dotted_spec(str(args.model))):
        raise RlplaceError(
            f"cannot measure model spec {args.model!r}: measurement runs PyTorch code; use zoo:NAME, path/to/file.py:function or package.module:function"
        )
    used = _devices_in_placement(args.placement)  # range-checked before torch is imported or anything is built
    if used is not None and not getattr(args, "cluster", None):
        from rlplace.limits import MAX_DEVICES, check_count

        check_count(used, MAX_DEVICES, "MAX_DEVICES", f"{args.placement}: the placement's largest device index + 1 (one rank per device)")
    from rlplace.measure.recipe import ModelRecipe
    from rlplace.measure.session import MeasureSetup, local_cpu_cluster, measure, relative_error
    from rlplace.profile import apply_profile, load_profile

    profile = load_profile(args.profile) if getattr(args, "profile", None) else None
    cluster_spec = getattr(args, "cluster", None)
    if cluster_spec:
        from rlplace.load import resolve_cluster

        cluster = resolve_cluster(cluster_spec)
        if profile is not None:
            cluster = apply_profile(cluster, profile)
        if used is not None and used > cluster.num_devices:
            raise RlplaceError(f"{args.placement}: the placement uses device {used - 1}, but cluster {cluster.name!r} has devices 0..{cluster.num_devices - 1}")
    else:
        cluster = local_cpu_cluster(used or (len(profile.devices) if profile is not None else 2), profile)
    recipe = ModelRecipe(str(args.model), batch_size, int(_option(args, "seed", 0)))
    setup = MeasureSetup.prepare(recipe, cluster, optimizer=str(_option(args, "optimizer", "adam")))
    if getattr(args, "op_profile", False):
        setup = setup.with_op_profile(threads=threads)
    from rlplace.formats import load_placement_spec

    placement = setup.check(load_placement_spec(args.placement, setup.graph, cluster))
    executed = setup.executed(placement)
    simulated = setup.simulate(placement)
    assignment = setup.assignment(placement)
    trace_path = getattr(args, "trace", None)
    if trace_path:
        check_writable(trace_path)
        if backend == "local":
            raise RlplaceError("--trace records one process per rank; use --backend gloo or nccl")
    keep_awake = getattr(args, "keep_awake", None)
    if keep_awake is None:
        keep_awake = bool(profile.keep_awake) if profile is not None else False
    (measurement,) = measure(
        setup, [placement], backend=backend, steps=steps, warmup=warmup, rounds=rounds, threads=threads, timeout_s=timeout, keep_awake=keep_awake, trace=bool(trace_path)
    )
    if trace_path and measurement.trace is not None:
        from rlplace.measure.timeline import write_merged_trace
        from rlplace.trace import chrome_trace

        recorded = setup.simulate(placement, record=True)
        write_merged_trace(
            trace_path, chrome_trace(recorded, setup.graph, cluster), measurement.trace,
            meta={"measured_step_time_s": measurement.measured_step_time, "simulated_step_time_s": float(simulated.step_time), "keep_awake": keep_awake},
        )  # fmt: skip
    payload = {
        "measured_step_time": measurement.measured_step_time,
        "simulated_step_time": float(simulated.step_time),
        "relative_error": relative_error(float(simulated.step_time), measurement.measured_step_time),
        "step_times": list(measurement.step_times),
        "steps": steps,
        "warmup": warmup,
        "rounds": rounds,
        "op_profile": bool(getattr(args, "op_profile", False)),
        "backend": backend,
        "threads": threads,
        "world_size": cluster.num_devices,
        "device_names": cluster.device_names,
        "cluster": cluster.name,
        "profile": getattr(args, "profile", None),
        "keep_awake": keep_awake,
        "trace": trace_path,
        "model": str(args.model),
        "graph": setup.graph.name,
        "num_ops": setup.graph.num_ops,
        "executor_nodes": assignment.num_nodes,
        "nodes_matched_by_name": assignment.matched_by_name,
        "segments": measurement.segments,
        "messages_per_step": measurement.messages,
        "loss": measurement.loss,
        "placement": [int(d) for d in placement],
        "ops_moved_to_executed_placement": int((executed != placement).sum()),
    }
    if getattr(args, "json", False):
        print_json(payload)
    else:
        print(
            f"measured step time   {payload['measured_step_time'] * 1e3:.3f} ms  (median of {steps * rounds} steps after {warmup} warm-up"
            f"{f' in each of {rounds} rounds' if rounds > 1 else ''}, "
            f"{backend}, {cluster.num_devices} devices, {threads} thread(s) each)\n"
            f"simulated step time  {payload['simulated_step_time'] * 1e3:.3f} ms  (latency objective, cluster {cluster.name})\n"
            f"relative error       {payload['relative_error'] * 100:.1f} %\n"
            f"segments {measurement.segments}, messages per step {measurement.messages}, loss {measurement.loss:.6g}"
            f"{', cores kept awake' if keep_awake else ''}"
        )
        if trace_path:
            print(f"trace written to {trace_path} (open in https://ui.perfetto.dev): one track per rank beside one per simulated device")
    return 0


def run_calibrate_command(args: argparse.Namespace) -> int:
    """Profile the local devices and links; write the profile JSON when ``--out`` is given."""
    from rlplace.measure.calibrate import calibrate
    from rlplace.profile import profile_summary, write_profile

    out = getattr(args, "out", None)
    check_output_paths([out])
    devices = int(_option(args, "devices", 2))
    receive_cost = bool(getattr(args, "receive_cost", False))
    if receive_cost and (devices < 2 or str(_option(args, "backend", "gloo")) != "gloo"):
        raise RlplaceError("--receive-cost needs two or more gloo ranks (it measures split steps on CPU ranks); drop it or use --devices 2 --backend gloo")
    profile = calibrate(
        devices, backend=str(_option(args, "backend", "gloo")), threads=int(_option(args, "threads", 1)), timeout_s=float(_option(args, "timeout", 300.0)),
        keep_awake=getattr(args, "keep_awake", None),
    )
    if devices >= 2 and profile.backend == "gloo":  # torch's pipeline cost per stage action, for rlplace run's prediction
        import dataclasses

        from rlplace.runtime.overhead import measure_stage_overhead

        overhead = measure_stage_overhead(profile, timeout_s=float(_option(args, "timeout", 300.0)), keep_awake=profile.keep_awake)
        profile = dataclasses.replace(profile, stage_overhead_s=overhead)
    if receive_cost:
        from rlplace.measure.receive_fit import calibrate_receive_cost

        profile = calibrate_receive_cost(profile, timeout_s=float(_option(args, "timeout", 300.0)))
    if out:
        write_profile(profile, out)
    if getattr(args, "json", False):
        print_json(profile.to_json())
    else:
        print("\n".join(profile_summary(profile)))
        if out:
            print(f"profile written to {out}; pass it with --profile {out}")
    return 0
