"""`ImproveMaskablePolicy`: the `MoveScorer` as an sb3-contrib ``MaskablePPO`` policy.

SB3 runs ``features_extractor -> mlp_extractor -> (action_net, value_net)``. The whole
`MoveScorer` lives in the features extractor, which returns ``[logits (N*D+1), value]``; the
mlp extractor splits them, ``action_net`` / ``value_net`` are identities. The action is the
env's flat ``Discrete(max_nodes * max_devices + 1)``; masks come from ``env.action_masks()``.

>>> from sb3_contrib import MaskablePPO
>>> model = MaskablePPO(ImproveMaskablePolicy, env, policy_kwargs=dict(scorer=dict(hidden=32)))
"""

from __future__ import annotations

from typing import Any

import torch
from gymnasium import spaces
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import Tensor, nn

from .policy import SplitLogitsAndValue
from .scorer import MoveScorer, ScorerConfig


class ScorerExtractor(BaseFeaturesExtractor):
    """Runs the `MoveScorer`: observation dict (batch B) -> (B, action_dim + 1)."""

    def __init__(self, observation_space: spaces.Dict, config: ScorerConfig, action_dim: int) -> None:
        super().__init__(observation_space, features_dim=action_dim + 1)
        self.scorer = MoveScorer(config)

    def forward(self, observations: dict[str, Tensor]) -> Tensor:
        logits, value = self.scorer(observations)
        return torch.cat([logits, value.unsqueeze(-1)], dim=-1)


class ImproveMaskablePolicy(MaskableActorCriticPolicy):
    """``MaskableActorCriticPolicy`` whose logits and value come from the `MoveScorer`.

    Args:
        scorer: `ScorerConfig` fields as a dict (``hidden``, ``layers``, ``conv``, ``scorer_hidden``).
        Everything else as for ``MaskableActorCriticPolicy``; ``ortho_init`` defaults to False.
    """

    def __init__(self, observation_space: spaces.Dict, action_space: spaces.Discrete, lr_schedule: Any, scorer: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.scorer_config = ScorerConfig(**(scorer or {}))
        self.action_dim = int(action_space.n)
        kwargs.setdefault("ortho_init", False)
        kwargs["features_extractor_class"] = ScorerExtractor
        kwargs["features_extractor_kwargs"] = {"config": self.scorer_config, "action_dim": self.action_dim}
        kwargs["share_features_extractor"] = True
        kwargs.setdefault("net_arch", [])
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    @property
    def scorer(self) -> MoveScorer:
        extractor = self.features_extractor
        assert isinstance(extractor, ScorerExtractor)
        return extractor.scorer

    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = SplitLogitsAndValue(self.action_dim)

    def _build(self, lr_schedule: Any) -> None:
        self._build_mlp_extractor()
        self.action_net = nn.Identity()
        self.value_net = nn.Identity()
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.pop("features_extractor_class", None)
        data.pop("features_extractor_kwargs", None)
        data["scorer"] = self.scorer_config.to_dict()
        return data
