"""Train the improvement policy (expert iteration, then MaskablePPO) and write a checkpoint.

    nice -n 10 python train_agent.py --out checkpoints/default --work-dir runs/improve --expert-time-s 1800
    python train_agent.py --rounds 1 --cases-per-round 2 --out /tmp/tiny --work-dir /tmp/tiny-run

The same as ``rlplace train``: the options and the loop live in `rlplace.agents.train_cli`
(one ``--name`` per field of `rlplace.agents.improve_train.TrainConfig`). Rerunning the same
command after a kill resumes from ``--work-dir``. The older one-shot / sequential trainer is
``rlplace.agents.train``.
"""

from __future__ import annotations

import sys

from rlplace.agents.train_cli import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
