"""``rlplace train`` and ``python train_agent.py``: train the improvement policy (expert
iteration, then MaskablePPO) and write a checkpoint.

Every option is a field of `rlplace.agents.improve_train.TrainConfig` (its help is the field's
description there). Rerunning the same command after a kill resumes from ``--work-dir``.
``--reward measured --model MODEL`` fine-tunes on measured step times instead
(`rlplace.agents.tune.train_with_reward`, as ``rlplace tune MODEL``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields

from rlplace.errors import RlplaceError


def build_parser() -> argparse.ArgumentParser:
    """One ``--name`` option per `TrainConfig` field, typed and described from the dataclass."""
    from rlplace.agents.improve_train import TrainConfig, field_help

    helps = field_help()
    parser = argparse.ArgumentParser(description="Train the rlplace improvement policy (expert iteration + MaskablePPO).")
    for item in fields(TrainConfig):
        default = item.default if item.default is not MISSING else None
        kind = type(default) if default is not None else str
        parser.add_argument(f"--{item.name.replace('_', '-')}", dest=item.name, type=kind, default=default, help=f"{helps.get(item.name, '')} (default {default!r})")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--reward" or a.startswith("--reward=") for a in argv):  # --reward measured: rlplace.agents.tune
        from rlplace.agents.tune import train_with_reward

        return train_with_reward(argv, main)
    args = build_parser().parse_args(argv)
    from rlplace.agents.improve_train import config_from_options, train

    try:
        config = config_from_options(vars(args))
        print(f"settings: {vars(args)}", flush=True)
        out = train(config, log=lambda line: print(line, flush=True))
    except RlplaceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
