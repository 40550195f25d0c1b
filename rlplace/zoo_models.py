"""Plain-torch models of the zoo: MLP towers, GNMT, an Inception-like CNN, DLRM, a GShard MoE.

Each factory returns ``(module, example keyword inputs)``; built under
``torch.device("meta")`` (as `rlplace.zoo` does) they hold no weight memory. Every model
computes its own loss from a ``target`` input, so a training capture ends at the loss. All
shapes are static (no data-dependent control flow), which ``torch.export`` needs.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

ModelAndInputs = tuple[nn.Module, dict[str, Any]]


# =========================================================================== MLP tower
class MLPTower(nn.Module):
    """``depth`` Linear + GELU layers of ``width`` features, then a classifier.

    Shapes: x (B, in_features) float -> logits (B, classes); target (B,) int64.
    """

    def __init__(self, in_features: int, width: int, depth: int, classes: int) -> None:
        super().__init__()
        sizes = [in_features] + [width] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = F.gelu(layer(x))
        return F.cross_entropy(self.head(x), target)


def mlp_tower(
    *, batch: int, seq_len: int | None, image_size: int | None, width: int, depth: int, in_features: int = 1024, classes: int = 1000
) -> ModelAndInputs:
    model = MLPTower(in_features, width, depth, classes)
    return model, {"x": torch.zeros(batch, in_features), "target": torch.zeros(batch, dtype=torch.long)}


# =========================================================================== GNMT
class GNMT(nn.Module):
    """GNMT-like translation model (Wu et al. 2016), one module per LSTM layer.

    Encoder: embedding, ``layers`` LSTM layers (residual from the third). Decoder (teacher
    forcing): embedding, a first LSTM layer, Luong attention over the encoder outputs, then
    LSTM layers fed ``[hidden, context]`` (residual from the third), and the vocabulary
    projection.

    Shapes: source (B, S) int64, target (B, T) int64 -> scalar loss.
    """

    def __init__(self, vocab: int = 32000, hidden: int = 1024, layers: int = 4) -> None:
        super().__init__()
        self.source_embedding = nn.Embedding(vocab, hidden)
        self.target_embedding = nn.Embedding(vocab, hidden)
        self.encoder = nn.ModuleList(nn.LSTM(hidden, hidden, batch_first=True) for _ in range(layers))
        self.decoder_first = nn.LSTM(hidden, hidden, batch_first=True)
        self.attention_query = nn.Linear(hidden, hidden, bias=False)
        self.decoder = nn.ModuleList(nn.LSTM(2 * hidden, hidden, batch_first=True) for _ in range(layers - 1))
        self.projection = nn.Linear(hidden, vocab)

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = self.source_embedding(source)
        for index, lstm in enumerate(self.encoder):
            out, _ = lstm(x)
            x = out + x if index >= 2 else out
        memory = x
        y, _ = self.decoder_first(self.target_embedding(target))
        scores = torch.bmm(self.attention_query(y), memory.transpose(1, 2)) / math.sqrt(memory.shape[-1])
        context = torch.bmm(torch.softmax(scores, dim=-1), memory)
        for index, lstm in enumerate(self.decoder):
            out, _ = lstm(torch.cat([y, context], dim=-1))
            y = out + y if index >= 1 else out
        logits = self.projection(y)
        return F.cross_entropy(logits.flatten(0, 1), target.flatten())


def gnmt(*, batch: int, seq_len: int | None, image_size: int | None, vocab: int = 32000, hidden: int = 1024, layers: int = 4) -> ModelAndInputs:
    tokens = torch.zeros(batch, seq_len or 50, dtype=torch.long)
    return GNMT(vocab, hidden, layers), {"source": tokens, "target": tokens}


# =========================================================================== Inception
class ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class InceptionBlock(nn.Module):
    """Four branches concatenated: 1x1; 1x1 -> 3x3; 1x1 -> 3x3 -> 3x3; max-pool -> 1x1."""

    def __init__(self, cin: int, c1: int, c3_reduce: int, c3: int, c5_reduce: int, c5: int, pool_proj: int) -> None:
        super().__init__()
        self.branch1 = ConvBN(cin, c1, 1)
        self.branch3 = nn.Sequential(ConvBN(cin, c3_reduce, 1), ConvBN(c3_reduce, c3, 3))
        self.branch5 = nn.Sequential(ConvBN(cin, c5_reduce, 1), ConvBN(c5_reduce, c5, 3), ConvBN(c5, c5, 3))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), ConvBN(cin, pool_proj, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x), self.branch_pool(x)], dim=1)


#: GoogLeNet's nine blocks: (c1, c3_reduce, c3, c5_reduce, c5, pool_proj), None = max-pool.
_GOOGLENET = [
    (64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64), None,
    (192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64), (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128), None,
    (256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128),
]  # fmt: skip


class InceptionNet(nn.Module):
    """GoogLeNet-like multi-branch CNN. Shapes: image (B, 3, H, W), target (B,) -> scalar loss."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(ConvBN(3, 64, 7, stride=2), nn.MaxPool2d(3, 2, 1), ConvBN(64, 64, 1), ConvBN(64, 192, 3), nn.MaxPool2d(3, 2, 1))
        blocks: list[nn.Module] = []
        channels = 192
        for spec in _GOOGLENET:
            if spec is None:
                blocks.append(nn.MaxPool2d(3, 2, 1))
                continue
            blocks.append(InceptionBlock(channels, *spec))
            channels = spec[0] + spec[2] + spec[4] + spec[5]
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, classes)

    def forward(self, image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        features = self.blocks(self.stem(image)).mean(dim=(2, 3))
        return F.cross_entropy(self.head(features), target)


def inception_net(*, batch: int, seq_len: int | None, image_size: int | None, classes: int = 1000) -> ModelAndInputs:
    side = image_size or 224
    return InceptionNet(classes), {"image": torch.zeros(batch, 3, side, side), "target": torch.zeros(batch, dtype=torch.long)}


# =========================================================================== DLRM
def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if index < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DLRM(nn.Module):
    """DLRM-like click model (Naumov et al. 2019): bottom MLP on dense features, one
    embedding table per sparse feature, pairwise dot-product interaction, top MLP.

    Shapes: dense (B, dense_features) float, sparse (B, tables) int64, target (B,) float
    -> scalar binary cross-entropy.
    """

    def __init__(self, dense_features: int = 13, tables: int = 8, rows: int = 1_000_000, dim: int = 64) -> None:
        super().__init__()
        self.bottom = _mlp([dense_features, 512, 256, dim])
        self.embeddings = nn.ModuleList(nn.Embedding(rows, dim) for _ in range(tables))
        features = tables + 1
        pairs = features * (features - 1) // 2
        self.top = _mlp([dim + pairs, 512, 256, 1])
        upper = torch.triu_indices(features, features, offset=1)
        self.register_buffer("pair_rows", upper[0], persistent=False)
        self.register_buffer("pair_cols", upper[1], persistent=False)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = self.bottom(dense)
        vectors = torch.stack([x, *(table(sparse[:, i]) for i, table in enumerate(self.embeddings))], dim=1)
        dots = torch.bmm(vectors, vectors.transpose(1, 2))
        interactions = dots[:, self.pair_rows, self.pair_cols]
        logits = self.top(torch.cat([x, interactions], dim=1)).squeeze(1)
        return F.binary_cross_entropy_with_logits(logits, target)


def dlrm(*, batch: int, seq_len: int | None, image_size: int | None, tables: int = 8, rows: int = 1_000_000, dim: int = 64) -> ModelAndInputs:
    model = DLRM(tables=tables, rows=rows, dim=dim)
    inputs = {"dense": torch.zeros(batch, 13), "sparse": torch.zeros(batch, tables, dtype=torch.long), "target": torch.zeros(batch)}
    return model, inputs


# =========================================================================== GShard MoE
class MoELayer(nn.Module):
    """Top-k mixture of experts with fixed expert capacity (GShard / Switch dispatch).

    Tokens are routed by one-hot dispatch and combine tensors, so every shape is static and
    the expert FLOPs are those of ``capacity`` tokens per expert, as on real MoE systems.

    Shapes: x (N, d) -> (N, d); capacity C = ceil(capacity_factor * k * N / experts).
    """

    def __init__(self, dim: int, hidden: int, experts: int, top_k: int, capacity_factor: float) -> None:
        super().__init__()
        self.router = nn.Linear(dim, experts, bias=False)
        self.w_in = nn.Parameter(torch.empty(experts, dim, hidden))
        self.w_out = nn.Parameter(torch.empty(experts, hidden, dim))
        self.experts = experts
        self.top_k = top_k
        self.capacity_factor = capacity_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.shape[0]
        capacity = max(1, math.ceil(self.capacity_factor * self.top_k * tokens / self.experts))
        probs = torch.softmax(self.router(x), dim=-1)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        mask = F.one_hot(chosen, self.experts).to(x.dtype)  # (N, k, E)
        position = torch.cumsum(mask.flatten(0, 1), dim=0).view_as(mask) * mask - 1  # slot of each token in its expert
        keep = mask * (position < capacity).to(x.dtype)
        slots = F.one_hot(position.clamp(0, capacity - 1).long(), capacity).to(x.dtype) * keep.unsqueeze(-1)  # (N, k, E, C)
        dispatch = slots.sum(dim=1)  # (N, E, C)
        combine = (slots * weights[..., None, None]).sum(dim=1)
        expert_in = torch.einsum("nec,nd->ecd", dispatch, x)
        expert_out = torch.bmm(F.gelu(torch.bmm(expert_in, self.w_in)), self.w_out)
        return torch.einsum("nec,ecd->nd", combine, expert_out)


class MoEBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, experts: int, top_k: int, capacity_factor: float) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.moe_norm = nn.LayerNorm(dim)
        self.moe = MoELayer(dim, hidden, experts, top_k, capacity_factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.attention_norm(x)
        x = x + self.attention(h, h, h, need_weights=False)[0]
        batch, seq, dim = x.shape
        return x + self.moe(self.moe_norm(x).reshape(batch * seq, dim)).view(batch, seq, dim)


class MoETransformer(nn.Module):
    """Decoder-only transformer whose feed-forward layers are `MoELayer`s.

    Shapes: tokens (B, T) int64 -> scalar next-token loss against target (B, T).
    """

    def __init__(
        self,
        vocab: int = 32000,
        dim: int = 1024,
        layers: int = 4,
        heads: int = 16,
        hidden: int = 4096,
        experts: int = 8,
        top_k: int = 2,
        capacity_factor: float = 1.25,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(MoEBlock(dim, heads, hidden, experts, top_k, capacity_factor) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = self.embedding(tokens)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.flatten(0, 1), target.flatten())


def moe_transformer(*, batch: int, seq_len: int | None, image_size: int | None, **kwargs: Any) -> ModelAndInputs:
    tokens = torch.zeros(batch, seq_len or 512, dtype=torch.long)
    return MoETransformer(**kwargs), {"tokens": tokens, "target": tokens}
