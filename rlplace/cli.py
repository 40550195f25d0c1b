"""The ``rlplace`` command: graph, simulate, place, evaluate (see DESIGN.md's contract).

Every input problem surfaces as an `RlplaceError`: one line on stderr, exit status 2, no
traceback, and no output file written (outputs are written atomically, after the work).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from rlplace.errors import RlplaceError
from rlplace.interrupt import Terminated, signals_as_exceptions
from rlplace.io import reserved_stdout
from rlplace.objectives import OBJECTIVES, SCHEDULES

DEFAULT_METHOD = "local-search"


def _add_keep_awake_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keep-awake", action=argparse.BooleanOptionalAction, default=None,
        help="spin idle-priority loops on the host's cores while ranks run, so a waiting rank's core never halts "
        "(default off; measure follows --profile, whose calibration timed whether it helps on this host)",
    )  # fmt: skip


def _add_model_options(parser: argparse.ArgumentParser, *, many: bool = False) -> None:
    if many:
        parser.add_argument("models", nargs="+", metavar="MODEL", help="path/to/file.py:function, zoo:NAME, synthetic:FAMILY or a .json graph")
    else:
        parser.add_argument("model", metavar="MODEL", help="path/to/file.py:function, zoo:NAME, synthetic:FAMILY or a .json graph")
    parser.add_argument("--inference", action="store_true", help="forward graph only (default: training step with backward and optimizer)")
    parser.add_argument("--batch-size", type=int, default=None, metavar="B", help="batch size passed to the model function or zoo entry")
    parser.add_argument("--optimizer", choices=("adam", "sgd", "sgd-momentum"), default="adam", help="optimizer of the training graph (default adam)")
    parser.add_argument("--max-groups", type=int, default=256, metavar="G", help="coarsen captured graphs to at most G groups before placing (default 256)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each phase (capture, coarsen, compile, search) and its time on stderr")


def _add_objective_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", metavar="FILE", help="calibration profile written by `rlplace calibrate` (replaces the cost model's efficiencies)")
    parser.add_argument("--objective", choices=OBJECTIVES, default=None, help="latency (default for models), pipelined, or throughput (default for dnn-partitioning graphs)")
    parser.add_argument("--microbatches", type=int, default=4, metavar="M", help="micro-batches of the pipelined objective (default 4)")
    parser.add_argument("--schedule", choices=SCHEDULES, default="gpipe", help="pipeline schedule of the pipelined objective (default gpipe)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``rlplace`` command."""
    parser = _Parser(prog="rlplace", description="Place the ops of a deep-learning model on a cluster of accelerators.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    graph = commands.add_parser("graph", help="summarize a model's op graph")
    _add_model_options(graph)
    graph.add_argument("--save", metavar="FILE", help="write the graph as rlplace graph JSON")
    graph.add_argument("--json", action="store_true", help="print one JSON object")

    simulate = commands.add_parser("simulate", help="simulate one training step of a given placement")
    _add_model_options(simulate)
    simulate.add_argument("--placement", required=True, metavar="FILE", help="JSON list of device indices, {op: device} object, or expert:FILE")
    simulate.add_argument("--cluster", metavar="C", help="cluster YAML file or preset name")
    _add_objective_options(simulate)
    simulate.add_argument("--trace", metavar="OUT", help="write a Chrome trace (open in Perfetto)")
    simulate.add_argument("--json", action="store_true", help="print one JSON object")

    place = commands.add_parser("place", help="place a model on a cluster")
    _add_model_options(place)
    place.add_argument("--cluster", metavar="C", help="cluster YAML file or preset name")
    place.add_argument("--method", default=DEFAULT_METHOD, metavar="NAME", help=f"placement method (default {DEFAULT_METHOD}; see `rlplace methods`)")
    _add_objective_options(place)
    place.add_argument("--seed", type=int, default=0, help="seed of randomized methods")
    place.add_argument("--stages", action="store_true", help="dp/local-search: a contiguous split into pipeline stages, one device each")
    place.add_argument("--checkpoint", metavar="DIR", help="policy checkpoint folder (default checkpoints/default or $RLPLACE_CHECKPOINT)")
    place.add_argument("--budget-s", type=float, default=None, metavar="S", help="policy, local-search: decision time budget in seconds (policy default 1.8 s); ilp: the solver's time limit (default 10 s)")
    place.add_argument("--evaluations", type=int, default=None, metavar="N", help="policy, local-search: simulation budget (local-search default 2000); alone, a reproducible run")
    place.add_argument("--workers", type=int, default=None, metavar="N", help="policy, local-search: N searches of different seeds side by side, one per core, the best kept (policy default: one per core, at most 4; local-search default 1; Linux)")
    place.add_argument("--out", metavar="FILE", help="write the placement JSON")
    place.add_argument("--device-map", metavar="FILE", help="write an accelerate-style {module: device} map (PyTorch models)")
    place.add_argument("--split-spec", metavar="FILE", help="write torch.distributed.pipelining split points and stage devices (contiguous stage placements)")
    place.add_argument("--trace", metavar="FILE", help="write a Chrome trace of the simulated step")
    place.add_argument("--plot", metavar="FILE", help="write a picture of the placement (PNG)")
    place.add_argument("--json", action="store_true", help="print one JSON object")

    evaluate = commands.add_parser("evaluate", help="compare placement methods on models x clusters")
    _add_model_options(evaluate, many=True)
    evaluate.add_argument("--cluster", action="append", metavar="C", help="cluster YAML file or preset (repeatable)")
    evaluate.add_argument("--methods", default=None, metavar="a,b,...", help="comma-separated methods (default: every fast baseline)")
    _add_objective_options(evaluate)
    evaluate.add_argument("--seed", type=int, default=0, help="seed of randomized methods")
    evaluate.add_argument("--stages", action="store_true", help="dp/local-search: a contiguous split into pipeline stages, one device each")
    output = evaluate.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print a JSON list of rows")
    output.add_argument("--csv", action="store_true", help="print CSV rows")

    measure = commands.add_parser("measure", help="run a placement for real and time its training step")
    _add_model_options(measure)
    measure.add_argument("--placement", required=True, metavar="FILE", help="JSON list of device indices, {op: device} object, or expert:FILE")
    measure.add_argument("--cluster", metavar="C", help="cluster the simulator predicts for (default: the local CPU stand-in)")
    measure.add_argument("--profile", metavar="FILE", help="calibration profile written by `rlplace calibrate`")
    measure.add_argument("--backend", choices=("gloo", "nccl", "local"), default="gloo", help="gloo (CPU ranks), nccl (GPU ranks) or local (one process)")
    measure.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    measure.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps (default 3)")
    measure.add_argument("--rounds", type=int, default=1, help="repeat warm-up and timed steps this many times and pool the steps (default 1)")
    measure.add_argument(
        "--op-profile", action="store_true",
        help="predict with this model's own op times, each op timed in isolation and corrected on the calibration models (adds ~15 s)",
    )  # fmt: skip
    measure.add_argument("--timeout", type=float, default=120.0, metavar="S", help="seconds before a hung run is killed (default 120)")
    measure.add_argument("--threads", type=int, default=1, help="torch threads per rank (default 1)")
    measure.add_argument("--seed", type=int, default=0, help="seed of the model's weights and inputs")
    measure.add_argument("--json", action="store_true", help="print one JSON object")
    measure.add_argument("--trace", metavar="FILE", help="write one Perfetto/Chrome trace: a traced step of every rank beside the simulated schedule")
    _add_keep_awake_option(measure)

    run = commands.add_parser("run", help="train a stage placement with torch.distributed.pipelining and time it")
    _add_model_options(run)
    run.add_argument("--placement", required=True, metavar="FILE", help="stage placement (JSON list, place --out JSON) or a --split-spec file")
    run.add_argument("--schedule", choices=SCHEDULES, default="gpipe", help="pipeline schedule (default gpipe)")
    run.add_argument("--backend", choices=("gloo", "nccl"), default="gloo", help="gloo (CPU ranks) or nccl (GPU ranks)")
    run.add_argument("--microbatches", type=int, default=None, metavar="M", help="micro-batches per step (default: the split spec's, else 4)")
    run.add_argument("--cluster", metavar="C", help="cluster the simulator predicts for (default: the local CPU stand-in)")
    run.add_argument("--profile", metavar="FILE", help="calibration profile written by `rlplace calibrate`")
    run.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    run.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps (default 2)")
    run.add_argument("--timeout", type=float, default=120.0, metavar="S", help="seconds before a hung run is killed (default 120)")
    run.add_argument("--threads", type=int, default=1, help="torch threads per rank (default 1)")
    run.add_argument("--seed", type=int, default=0, help="seed of the model's weights and inputs")
    run.add_argument("--json", action="store_true", help="print one JSON object")

    tune = commands.add_parser("tune", help="fine-tune the policy on one model with step times measured on the real cluster")
    _add_model_options(tune)
    from rlplace.agents.tune_options import add_tune_arguments  # argparse only: nothing heavy is imported

    add_tune_arguments(tune)
    _add_keep_awake_option(tune)

    calibrate = commands.add_parser("calibrate", help="profile op speed and links of the local devices into a cost-model profile")
    calibrate.add_argument("--out", metavar="FILE", help="write the profile JSON here")
    calibrate.add_argument("--backend", choices=("gloo", "nccl"), default="gloo", help="backend of the link measurement")
    calibrate.add_argument("--devices", type=int, default=2, help="ranks to profile (default 2)")
    calibrate.add_argument("--threads", type=int, default=1, help="torch threads per rank (default 1)")
    calibrate.add_argument("--timeout", type=float, default=300.0, metavar="S", help="seconds before the profiling run is killed")
    calibrate.add_argument("--json", action="store_true", help="print the profile as JSON")
    calibrate.add_argument(
        "--receive-cost", action="store_true",
        help="also fit what a message costs the rank that receives it, on measured splits of five small models (2+ gloo ranks; about a minute more)",
    )  # fmt: skip
    _add_keep_awake_option(calibrate)

    # Parsed by train_agent.py's own parser (see main); listed here for `rlplace --help`.
    commands.add_parser("train", help="train the placement policy (the options of train_agent.py: rlplace train --help)", add_help=False)
    commands.add_parser("methods", help="list the placement methods")
    commands.add_parser("presets", help="list the cluster presets")
    commands.add_parser("zoo", help="list the named models")
    return parser


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one ``error: ...`` line and exit status 2 (no usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rlplace`` console script; returns the exit status.

    Bad input: one ``error:`` line on stderr, status 2. Ctrl-C: 130; SIGTERM and SIGHUP
    likewise clean up and give 128 + the signal number (143, 129).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        from rlplace.agents.train_cli import main as train_main  # the same main as train_agent.py

        return int(train_main(argv[1:]) or 0)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2, already printed)
        return exit_.code if isinstance(exit_.code, int) else 2
    machine_output = bool(getattr(args, "json", False) or getattr(args, "csv", False))
    with signals_as_exceptions():
        try:
            from rlplace import commands
            from rlplace.feedback import reporting

            handler = getattr(commands, f"run_{args.command}")
            with reporting(verbose=getattr(args, "verbose", False)), reserved_stdout() if machine_output else contextlib.nullcontext():
                return int(handler(args) or 0)
        except RlplaceError as error:
            print(f"error: {_one_line(str(error))}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except Terminated as terminated:
            print(f"{terminated}", file=sys.stderr)
            return terminated.exit_status
        except BrokenPipeError:
            # The reader (e.g. `head`) went away; silence the interpreter's own flush error too.
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
            return 0


def _one_line(message: str) -> str:
    return " ".join(message.split("\n")) if "\n" in message else message


if __name__ == "__main__":
    sys.exit(main())
