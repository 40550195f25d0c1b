"""The GNN policy for sb3-contrib's ``MaskablePPO``.

SB3 runs ``features_extractor -> mlp_extractor -> (action_net, value_net)``. Here the whole
`PlacementNetwork` lives in the features extractor, which returns the action logits and the
value side by side; the mlp extractor only splits them and ``action_net`` / ``value_net``
are identities. So the policy's trainable state is exactly the network's, which is what
checkpoints store (``policy.network``).

>>> from sb3_contrib import MaskablePPO
>>> model = MaskablePPO(GnnMaskablePolicy, env, policy_kwargs=dict(network=dict(hidden=64)))
"""

from __future__ import annotations

from typing import Any

import torch
from gymnasium import spaces
from sb3_contrib.common.maskable.distributions import MaskableCategorical, MaskableMultiCategoricalDistribution, MaybeMasks
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import Tensor, nn

from rlplace.errors import RlplaceError

from .network import NetworkConfig, PlacementNetwork


def action_form_of(action_space: spaces.Space) -> str:
    """``one-shot`` for the env's ``MultiDiscrete`` action, ``sequential`` for ``Discrete``."""
    if isinstance(action_space, spaces.MultiDiscrete):
        return "one-shot"
    if isinstance(action_space, spaces.Discrete):
        return "sequential"
    raise RlplaceError(f"the GNN policy needs the placement env's MultiDiscrete or Discrete action space, not {action_space}")


class EqualMultiCategoricalDistribution(MaskableMultiCategoricalDistribution):
    """``MaskableMultiCategoricalDistribution`` for N sub-actions of D choices each, as one batched
    ``MaskableCategorical`` of batch shape (B, N) instead of N separate ones (the same numbers,
    without a Python loop over the 128 sub-actions; SB3's version spends most of an update there).

    Shapes: logits (B, N * D) row-major by sub-action; masks (B, N * D); actions (B, N).
    """

    def __init__(self, num_actions: int, num_choices: int) -> None:
        super().__init__([num_choices] * num_actions)
        self.num_actions = num_actions
        self.num_choices = num_choices
        self.categorical: MaskableCategorical | None = None

    def proba_distribution(self, action_logits: Tensor) -> EqualMultiCategoricalDistribution:  # type: ignore[override]
        self.categorical = MaskableCategorical(logits=action_logits.reshape(-1, self.num_actions, self.num_choices))
        return self

    def _dist(self) -> MaskableCategorical:
        if self.categorical is None:
            raise RuntimeError("call proba_distribution() first")
        return self.categorical

    def apply_masking(self, masks: MaybeMasks) -> None:
        self._dist().apply_masking(masks)

    def log_prob(self, actions: Tensor) -> Tensor:
        return self._dist().log_prob(actions.reshape(-1, self.num_actions)).sum(dim=1)

    def entropy(self) -> Tensor:
        return self._dist().entropy().sum(dim=1)

    def sample(self) -> Tensor:
        return self._dist().sample()

    def mode(self) -> Tensor:
        return torch.argmax(self._dist().logits, dim=-1)


class GnnFeaturesExtractor(BaseFeaturesExtractor):
    """Runs the `PlacementNetwork`; features are ``[logits (action_dim), value (1)]``.

    Shapes: observation dict with batch B -> (B, action_dim + 1).
    """

    def __init__(self, observation_space: spaces.Dict, config: NetworkConfig) -> None:
        super().__init__(observation_space, features_dim=config.action_dim + 1)
        self.network = PlacementNetwork(config)

    def forward(self, observations: dict[str, Tensor]) -> Tensor:
        logits, value = self.network.action_logits(observations)
        return torch.cat([logits, value.unsqueeze(-1)], dim=-1)


class SplitLogitsAndValue(nn.Module):
    """SB3's mlp extractor slot: (B, action_dim + 1) -> (logits (B, action_dim), value (B, 1))."""

    def __init__(self, action_dim: int) -> None:
        super().__init__()
        self.latent_dim_pi = action_dim
        self.latent_dim_vf = 1

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward_actor(features), self.forward_critic(features)

    def forward_actor(self, features: Tensor) -> Tensor:
        return features[:, : self.latent_dim_pi]

    def forward_critic(self, features: Tensor) -> Tensor:
        return features[:, self.latent_dim_pi :]


class GnnMaskablePolicy(MaskableActorCriticPolicy):
    """``MaskableActorCriticPolicy`` whose logits come from the (group, device) pair scorer.

    Args:
        network: `NetworkConfig` sizes (``hidden``, ``layers``, ``scorer_hidden``) as a dict;
            the padding sizes, feature widths and action form come from the spaces.
        Everything else as for ``MaskableActorCriticPolicy``; ``ortho_init`` defaults to False
        (the network keeps PyTorch's default init and its near-uniform initial scorer).
    """

    def __init__(self, observation_space: spaces.Dict, action_space: spaces.Space, lr_schedule: Any, network: dict[str, Any] | None = None, **kwargs: Any) -> None:
        config = NetworkConfig.for_spaces(observation_space, action_form_of(action_space), **(network or {}))
        self.network_config = config
        kwargs.setdefault("ortho_init", False)
        kwargs["features_extractor_class"] = GnnFeaturesExtractor
        kwargs["features_extractor_kwargs"] = {"config": config}
        kwargs["share_features_extractor"] = True
        kwargs.setdefault("net_arch", [])
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    @property
    def network(self) -> PlacementNetwork:
        extractor = self.features_extractor
        assert isinstance(extractor, GnnFeaturesExtractor)
        return extractor.network

    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = SplitLogitsAndValue(self.network_config.action_dim)

    def _build(self, lr_schedule: Any) -> None:
        if isinstance(self.action_space, spaces.MultiDiscrete):
            self.action_dist = EqualMultiCategoricalDistribution(self.network_config.max_nodes, self.network_config.max_devices)
        self._build_mlp_extractor()
        self.action_net = nn.Identity()
        self.value_net = nn.Identity()
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.pop("features_extractor_class", None)
        data.pop("features_extractor_kwargs", None)
        data["network"] = {"hidden": self.network_config.hidden, "layers": self.network_config.layers, "scorer_hidden": self.network_config.scorer_hidden}
        return data
