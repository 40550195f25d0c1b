"""The placement network: graph encoder, (group, device) pair scorer and value head, plain torch.

One network serves any cluster of up to ``max_devices`` devices and both action forms: it
scores every (group, device) pair with one shared MLP of (group embedding, graph embedding,
device embedding, pair features). One-shot logits are the (N, D) pair scores flattened row by
row (the order of the env's ``MultiDiscrete`` action and its flat mask); sequential logits
are the row of the group placed now. The value head reads the pooled graph embedding.

This module imports neither stable-baselines3 nor torch_geometric, so inference
(`rlplace.agents.infer`) starts fast; `rlplace.agents.policy` wraps it for MaskablePPO.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from rlplace.errors import RlplaceError

from .gnn import GraphEncoder, flatten_observation

#: Logit of a pair the network itself rules out (an absent device); finite so entropies stay finite.
MASKED_LOGIT = -1e8
ACTION_FORMS = ("one-shot", "sequential")
#: Extra device inputs besides the env's device features: relative position, three link statistics.
_DEVICE_EXTRA = 4
#: Pair features: communication time with placed producers / consumers on the device.
PAIR_FEATURES = 2


@dataclass(frozen=True)
class NetworkConfig:
    """Sizes of a `PlacementNetwork` (stored in checkpoints).

    Attributes:
        max_nodes, max_devices: the env's padding sizes (N, D).
        node_features, edge_features, device_features, global_features: widths of the env's
            observation arrays (13, 3, 7, 12 for ``rlplace.envs`` today).
        action_form: ``one-shot`` or ``sequential``.
        hidden: width of node and graph embeddings.
        layers: message-passing layers.
        scorer_hidden: width of the pair scorer's hidden layers.
    """

    max_nodes: int
    max_devices: int
    node_features: int = 13
    edge_features: int = 3
    device_features: int = 7
    global_features: int = 12
    action_form: str = "one-shot"
    hidden: int = 64
    layers: int = 3
    scorer_hidden: int = 32

    def __post_init__(self) -> None:
        if self.action_form not in ACTION_FORMS:
            raise RlplaceError(f"unknown action_form {self.action_form!r}; use one of {', '.join(ACTION_FORMS)}")
        for field in fields(self):
            value = getattr(self, field.name)
            if field.type == "int" and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise RlplaceError(f"network setting {field.name} must be a whole number >= 1 (got {value!r})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RlplaceError(f"network config has unknown settings {unknown}; it was written by another rlplace version")
        return cls(**data)

    @property
    def action_dim(self) -> int:
        """Logits per observation: N * D (one-shot) or D (sequential)."""
        return self.max_nodes * self.max_devices if self.action_form == "one-shot" else self.max_devices

    @classmethod
    def for_spaces(cls, observation_space: Any, action_form: str, **sizes: Any) -> NetworkConfig:
        """The config matching an env's ``Dict`` observation space."""
        shapes = {key: space.shape for key, space in observation_space.spaces.items()}
        max_nodes, node_features = shapes["node_features"]
        max_devices, device_features = shapes["device_features"]
        return cls(
            max_nodes=int(max_nodes),
            max_devices=int(max_devices),
            node_features=int(node_features),
            edge_features=int(shapes["edge_features"][1]),
            device_features=int(device_features),
            global_features=int(shapes["global_features"][0]),
            action_form=action_form,
            **sizes,
        )


def device_inputs(obs: dict[str, Tensor]) -> Tensor:
    """Per-device inputs: env device features, relative position d / (k - 1), one-hot index,
    mean link time to the other devices, link time to the next and from the previous device.

    Shapes: obs["device_features"] (B, D, Fd), obs["device_mask"] (B, D),
    obs["link_time"] (B, D, D) -> (B, D, Fd + 4 + D).
    """
    features = obs["device_features"].float()
    batch, max_devices, _ = features.shape
    mask = obs["device_mask"].float()
    count = mask.sum(dim=1, keepdim=True)
    index = torch.arange(max_devices, dtype=features.dtype, device=features.device).unsqueeze(0)
    position = (index / (count - 1).clamp(min=1.0)) * mask
    link = obs["link_time"].float()
    mean_link = (link * mask.unsqueeze(1)).sum(dim=2) / (count - 1).clamp(min=1.0)
    to_next = torch.zeros_like(position)
    to_next[:, :-1] = torch.diagonal(link, offset=1, dim1=1, dim2=2)
    from_previous = torch.zeros_like(position)
    from_previous[:, 1:] = torch.diagonal(link, offset=-1, dim1=1, dim2=2)
    onehot = torch.eye(max_devices, dtype=features.dtype, device=features.device).expand(batch, -1, -1) * mask.unsqueeze(-1)
    extra = torch.stack([position, mean_link * mask, to_next * mask, from_previous * mask], dim=-1)
    return torch.cat([features, extra, onehot], dim=-1)


def pair_features(obs: dict[str, Tensor], max_devices: int) -> Tensor:
    """Communication between each group and the groups already placed on each device.

    ``[b, n, d, 0]``: summed ``comm`` edge feature of edges ``u -> n`` with u on device d;
    ``[b, n, d, 1]``: the same for edges ``n -> v`` with v on d. Zero in one-shot form.

    Shapes: obs as in `flatten_observation` -> (B, N, D, 2).
    """
    node_device = obs["node_device"].round().long()
    batch, num_nodes = node_device.shape
    edge_index = obs["edge_index"].round().long()
    keep = obs["edge_mask"] > 0.5
    comm = obs["edge_features"][..., 0].float() * keep
    src, dst = edge_index[:, 0], edge_index[:, 1]  # (B, E)
    src_device = torch.gather(node_device, 1, src)
    dst_device = torch.gather(node_device, 1, dst)
    out = torch.zeros(batch, num_nodes * max_devices, PAIR_FEATURES, dtype=comm.dtype, device=comm.device)
    incoming = (src_device >= 0) & keep
    out[..., 0].scatter_add_(1, dst * max_devices + src_device.clamp(min=0), comm * incoming)
    outgoing = (dst_device >= 0) & keep
    out[..., 1].scatter_add_(1, src * max_devices + dst_device.clamp(min=0), comm * outgoing)
    return out.view(batch, num_nodes, max_devices, PAIR_FEATURES)


def trim_padding(obs: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the node and edge padding that no observation of the batch uses.

    The env puts real groups and real edges first, so slicing to the batch's largest counts
    keeps every real entry; padded edges (``0 -> 0``) stay valid. Shapes: N -> N' and E -> E'.
    """
    nodes = max(int(obs["node_mask"].sum(dim=1).max().item()), 1)
    edges = max(int(obs["edge_mask"].sum(dim=1).max().item()), 1)
    trimmed = dict(obs)
    for key in ("node_features", "node_device", "node_mask"):
        trimmed[key] = obs[key][:, :nodes]
    trimmed["edge_index"] = obs["edge_index"][..., :edges]
    trimmed["edge_features"] = obs["edge_features"][:, :edges]
    trimmed["edge_mask"] = obs["edge_mask"][:, :edges]
    return trimmed


class PairScorer(nn.Module):
    """Score of every (group, device) pair by one MLP of the concatenated inputs.

    The MLP's first layer is applied to each part separately and summed (exactly a linear
    layer on the concatenation), so the (B, N, D, *) tensor is formed only after it.

    Shapes:
        nodes (B, N, H), graph (B, H), devices (B, D, Fdev), pairs (B, N, D, P) -> (B, N, D)
    """

    def __init__(self, hidden: int, device_dim: int, scorer_hidden: int) -> None:
        super().__init__()
        self.node = nn.Linear(hidden, scorer_hidden)
        self.graph = nn.Linear(hidden, scorer_hidden, bias=False)
        self.device = nn.Sequential(nn.Linear(device_dim, scorer_hidden), nn.ReLU(), nn.Linear(scorer_hidden, scorer_hidden, bias=False))
        self.pair = nn.Linear(PAIR_FEATURES, scorer_hidden, bias=False)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(scorer_hidden, scorer_hidden), nn.ReLU(), nn.Linear(scorer_hidden, 1))
        with torch.no_grad():  # start close to uniform over devices
            self.head[-1].weight.mul_(0.01)
            self.head[-1].bias.zero_()

    def forward(self, nodes: Tensor, graph: Tensor, devices: Tensor, pairs: Tensor) -> Tensor:
        first = (self.node(nodes) + self.graph(graph).unsqueeze(1)).unsqueeze(2) + self.device(devices).unsqueeze(1) + self.pair(pairs)
        return self.head(first).squeeze(-1)


class PlacementNetwork(nn.Module):
    """Observation dict -> (pair logits, value).

    Shapes:
        input: the env's observation dict as tensors with a batch dimension B.
        output: logits (B, N, D) with absent devices at `MASKED_LOGIT`; value (B,).
    """

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        node_input_dim = config.node_features + config.max_devices + config.global_features
        self.encoder = GraphEncoder(node_input_dim, config.edge_features, config.global_features, config.hidden, config.layers)
        self.scorer = PairScorer(config.hidden, config.device_features + _DEVICE_EXTRA + config.max_devices, config.scorer_hidden)
        self.value = nn.Sequential(nn.Linear(config.hidden, config.hidden), nn.ReLU(), nn.Linear(config.hidden, 1))

    def forward(self, obs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        max_nodes, max_devices = obs["node_features"].shape[1], self.config.max_devices
        obs = trim_padding(obs)
        graph = flatten_observation(obs, max_devices)
        nodes, graph_embedding = self.encoder(graph, obs["global_features"])
        scores = self.scorer(nodes, graph_embedding, device_inputs(obs), pair_features(obs, max_devices))
        present = (obs["device_mask"] > 0.5).unsqueeze(1)
        logits = scores.masked_fill(~present, MASKED_LOGIT)
        # padding slots take device 0, as the env's mask says (whatever else is in the batch)
        padding_row = torch.full((max_devices,), MASKED_LOGIT, dtype=logits.dtype, device=logits.device)
        padding_row[0] = 0.0
        logits = torch.where(graph.node_mask.unsqueeze(-1), logits, padding_row)
        if logits.shape[1] < max_nodes:
            logits = torch.cat([logits, padding_row.expand(logits.shape[0], max_nodes - logits.shape[1], max_devices)], dim=1)
        return logits, self.value(graph_embedding).squeeze(-1)

    def action_logits(self, obs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(flat logits (B, action_dim), value (B,)) in the layout of the env's action space."""
        logits, value = self(obs)
        if self.config.action_form == "one-shot":
            return logits.reshape(logits.shape[0], -1), value
        current = obs["current_node"].round().long().view(-1, 1, 1).expand(-1, 1, logits.shape[-1])
        return torch.gather(logits, 1, current).squeeze(1), value
