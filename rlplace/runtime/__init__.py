"""Run placements with real runtimes: ``torch.distributed.pipelining`` stages.

- `rlplace.runtime.stages`: stage placements -> split specs (module FQN -> ``SplitPoint``,
  stage -> device), the cuts snapped to module boundaries and the cost of snapping simulated
  (torch-free apart from `SplitSpec.torch_split_spec`).
- `rlplace.runtime.worker`: one rank of ``rlplace run``: ``pipeline()``, ``build_stage``,
  the ``Schedule*`` of the chosen schedule, timed training steps.
- `rlplace.runtime.run`: the launcher and the ``rlplace run`` command.
"""

from __future__ import annotations

from rlplace.objectives import SCHEDULES
from rlplace.runtime.stages import SplitSpec, split_spec

__all__ = ["SCHEDULES", "SplitSpec", "split_spec"]
