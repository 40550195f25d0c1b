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
    gymnasium.register(id=ENV_ID, entry_point="rlplace.envs.placement_env:PlacementEnv")

__all__ = ["ENV_ID", "PlacementEnv", "PlacementProblem", "RewardSource", "SimulatorRewardSource"]
