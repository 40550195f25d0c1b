"""The Gymnasium environment ``rlplace/Placement-v0`` (importing this package registers it).

>>> import gymnasium, rlplace.envs
>>> env = gymnasium.make("rlplace/Placement-v0", action_form="sequential")
"""

from __future__ import annotations

import gymnasium

from .placement_env import PlacementEnv
from .problem import PlacementProblem
from .reward import RewardSource, SimulatorRewardSource

ENV_ID = "rlplace/Placement-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="rlplace.envs:make_env")


def make_env(*args: object, action_form: str = "one-shot", **kwargs: object) -> gymnasium.Env:
    """``rlplace/Placement-v0``'s entry point: `ImproveEnv` for ``action_form="improve"``
    (``rlplace.envs.improve_env``), `PlacementEnv` for ``one-shot`` and ``sequential``."""
    if action_form == "improve":
        from .improve_env import ImproveEnv

        return ImproveEnv(*args, **kwargs)  # type: ignore[arg-type]
    return PlacementEnv(*args, action_form=action_form, **kwargs)  # type: ignore[arg-type]

__all__ = ["ENV_ID", "PlacementEnv", "PlacementProblem", "RewardSource", "SimulatorRewardSource", "make_env"]
