"""Small reference models for measurement tests, calibration checks and the fidelity benchmark.

Each factory returns ``(module, example_inputs)`` with seeded weights and inputs and is
addressed by a recipe spec such as ``rlplace.measure.models:mlp``. Sizes are chosen so a
CPU training step takes milliseconds (tests) to ~100 ms (benchmark, ``width``/``depth``).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class MLP(nn.Module):
    """Linear + ReLU layers with a residual connection every other layer.

    Shapes: input (batch, width) -> output (batch, width).
    """

    def __init__(self, width: int = 64, depth: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            y = torch.relu(layer(x))
            x = x + y if index % 2 else y
        return self.head(x)


class TinyTransformer(nn.Module):
    """Embedding, pre-norm encoder blocks (multi-head attention + MLP), output head.

    Shapes: input (batch, seq) int64 token ids -> output (batch, seq, vocab).
    """

    def __init__(self, vocab: int = 128, dim: int = 64, heads: int = 4, layers: int = 2, hidden: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, hidden, dropout=0.0, batch_first=True, norm_first=True) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class SmallCNN(nn.Module):
    """Conv + BatchNorm + ReLU stages (stride 2 from the second on), global average pooling,
    linear classifier. Downsampling uses strided convolutions, not max-pooling: capture counts
    max-pooling as a reduction, but on CPUs it runs far below that kind's speed (see the
    calibration notes in `rlplace.measure.calibrate`).

    Shapes: input (batch, 3, size, size) -> output (batch, classes).
    """

    def __init__(self, channels: int = 16, stages: int = 3, classes: int = 10) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = 3
        for stage in range(stages):
            out = channels * (2**stage)
            blocks += [nn.Conv2d(width, out, 3, stride=1 if stage == 0 else 2, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
            width = out
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mlp(batch_size: int = 8, width: int = 64, depth: int = 4, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """A small MLP and one input batch."""
    torch.manual_seed(seed)
    return MLP(width, depth), (torch.randn(batch_size, width, generator=_generator(seed + 1)),)


def transformer(batch_size: int = 4, seq: int = 16, dim: int = 64, layers: int = 2, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """A small encoder-only transformer and one batch of token ids."""
    torch.manual_seed(seed)
    model = TinyTransformer(dim=dim, heads=4, layers=layers, hidden=2 * dim)
    return model, (torch.randint(0, 128, (batch_size, seq), generator=_generator(seed + 1)),)


def cnn(batch_size: int = 4, size: int = 16, channels: int = 8, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """A small CNN with batch norm and one image batch."""
    torch.manual_seed(seed)
    return SmallCNN(channels=channels), (torch.randn(batch_size, 3, size, size, generator=_generator(seed + 1)),)


# Sizes of the fidelity benchmark: one CPU step (1 thread) takes roughly 10-100 ms.
def bench_mlp(batch_size: int = 128) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """MLP of 6 layers of width 512."""
    return mlp(batch_size=batch_size, width=512, depth=6)


def bench_transformer(batch_size: int = 8) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """Transformer of 4 blocks, width 128, 64 tokens."""
    return transformer(batch_size=batch_size, seq=64, dim=128, layers=4)


def bench_cnn(batch_size: int = 8) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """CNN of 3 stages on 32x32 images."""
    return cnn(batch_size=batch_size, size=32, channels=16)


def tiny_transformer(batch_size: int = 2) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """One encoder block of width 32 on 8 tokens (tests)."""
    return transformer(batch_size=batch_size, seq=8, dim=32, layers=1)


class TwoBranch(nn.Module):
    """Two equal stacks of Linear + ReLU on the same input, concatenated into a linear head.

    Shapes: input (batch, width) -> output (batch, classes).
    """

    def __init__(self, width: int = 512, depth: int = 4, classes: int = 16) -> None:
        super().__init__()
        self.left = nn.Sequential(*(layer for _ in range(depth) for layer in (nn.Linear(width, width), nn.ReLU())))
        self.right = nn.Sequential(*(layer for _ in range(depth) for layer in (nn.Linear(width, width), nn.ReLU())))
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.left(x), self.right(x)], dim=1))


def two_branch(batch_size: int = 256, width: int = 512, depth: int = 4, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """Two parallel Linear + ReLU stacks feeding one head (issue 11's branchy model); batch 256."""
    torch.manual_seed(seed)
    return TwoBranch(width, depth), (torch.randn(batch_size, width, generator=_generator(seed + 1)),)


class ThreeBranch(nn.Module):
    """Inception-like: three Linear + GELU stacks of different widths and depths on one input,
    concatenated into a head.

    Shapes: input (batch, width) -> output (batch, classes).
    """

    def __init__(self, width: int = 256, classes: int = 16) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Linear(width, 512), nn.GELU(), nn.Linear(512, width))
        self.b = nn.Sequential(nn.Linear(width, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, width))
        self.c = nn.Sequential(nn.Linear(width, 128), nn.GELU())
        self.head = nn.Linear(2 * width + 128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.a(x), self.b(x), self.c(x)], dim=1))


class ResidualCNN(nn.Module):
    """A stem convolution and two residual blocks (conv, batch norm, ReLU, conv, batch norm,
    skip), the second strided with a 1x1 projection; pooling and a classifier.

    Shapes: input (batch, 3, size, size) -> output (batch, classes).
    """

    def __init__(self, channels: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels))
        self.block2 = nn.Sequential(
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1), nn.BatchNorm2d(2 * channels), nn.ReLU(), nn.Conv2d(2 * channels, 2 * channels, 3, padding=1), nn.BatchNorm2d(2 * channels)
        )
        self.project = nn.Conv2d(channels, 2 * channels, 1, stride=2)
        self.classifier = nn.Linear(2 * channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.block1(x))
        x = torch.relu(self.project(x) + self.block2(x))
        return self.classifier(x.mean(dim=(2, 3)))


class SoftMoE(nn.Module):
    """A mixture-of-experts layer between two dense layers: a softmax router weighs four expert
    MLPs (every expert runs on every token: dense gating, so the step is deterministic).

    Shapes: input (batch, width) -> output (batch, width).
    """

    def __init__(self, width: int = 256, experts: int = 4, hidden: int = 512) -> None:
        super().__init__()
        self.inp = nn.Linear(width, width)
        self.router = nn.Linear(width, experts)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width)) for _ in range(experts))
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.inp(x))
        gates = torch.softmax(self.router(x), dim=-1)
        mixed = sum(gates[:, e : e + 1] * expert(x) for e, expert in enumerate(self.experts))
        return self.out(x + mixed)


class EmbeddingHeavy(nn.Module):
    """DLRM-like: two large embedding tables looked up by id bags (mean-pooled), a dense
    feature MLP, and a top MLP over their concatenation.

    Shapes: ids (batch, bag) int64 in [0, rows) and dense (batch, 64) -> output (batch, 1).
    """

    def __init__(self, rows: int = 20000, dim: int = 64) -> None:
        super().__init__()
        self.users = nn.Embedding(rows, dim)
        self.items = nn.Embedding(rows, dim)
        self.dense = nn.Sequential(nn.Linear(64, dim), nn.ReLU())
        self.top = nn.Sequential(nn.Linear(3 * dim, 128), nn.ReLU(), nn.Linear(128, 1))

    def forward(self, ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return self.top(torch.cat([self.users(ids).mean(dim=1), self.items(ids.flip(1)).mean(dim=1), self.dense(dense)], dim=1))


def three_branch(batch_size: int = 128, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """`ThreeBranch` (unequal branches) and one batch (kept out of development)."""
    torch.manual_seed(seed)
    return ThreeBranch(), (torch.randn(batch_size, 256, generator=_generator(seed + 1)),)


def residual_cnn(batch_size: int = 8, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """`ResidualCNN` on 32x32 images (kept out of development)."""
    torch.manual_seed(seed)
    return ResidualCNN(), (torch.randn(batch_size, 3, 32, 32, generator=_generator(seed + 1)),)


def soft_moe(batch_size: int = 128, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """`SoftMoE` with four experts (kept out of development)."""
    torch.manual_seed(seed)
    return SoftMoE(), (torch.randn(batch_size, 256, generator=_generator(seed + 1)),)


def embedding_heavy(batch_size: int = 256, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """`EmbeddingHeavy` with bags of 8 ids (kept out of development)."""
    torch.manual_seed(seed)
    generator = _generator(seed + 1)
    return EmbeddingHeavy(), (torch.randint(0, 20000, (batch_size, 8), generator=generator), torch.randn(batch_size, 64, generator=generator))


def deep_transformer(batch_size: int = 4, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """Transformer of 6 narrow blocks (width 64, 32 tokens; kept out of development)."""
    return transformer(batch_size=batch_size, seq=32, dim=64, layers=6, seed=seed)


# ----------------------------------------------------------------------------- second held-out set
# Defined on 2026-11-30 before any of them was measured, after the first held-out half
# (three_branch ... deep_transformer) had been looked at under three message models; see
# benchmarks/fidelity.py.


class UNet(nn.Module):
    """A two-level U-Net: conv blocks down (max-pool), a bottleneck, a transposed-conv
    upsample whose output is concatenated with the skip, conv blocks and a 1x1 head.

    Shapes: input (batch, 3, size, size) -> output (batch, classes, size, size).
    """

    def __init__(self, channels: int = 16, classes: int = 4) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU())

        self.down = block(3, channels)
        self.bottom = block(channels, 2 * channels)
        self.up = nn.ConvTranspose2d(2 * channels, channels, 2, stride=2)
        self.merge = block(2 * channels, channels)
        self.head = nn.Conv2d(channels, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.down(x)
        deep = self.bottom(torch.max_pool2d(skip, 2))
        return self.head(self.merge(torch.cat([skip, self.up(deep)], dim=1)))


class TemporalCNN(nn.Module):
    """A temporal convolution network: dilated Conv1d residual blocks (dilation 1, 2, 4, 8)
    over a sequence, mean-pooled into a classifier.

    Shapes: input (batch, channels, length) -> output (batch, classes).
    """

    def __init__(self, channels: int = 32, classes: int = 10, levels: int = 4) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv1d(channels, channels, 3, padding=2**i, dilation=2**i), nn.ReLU(), nn.Conv1d(channels, channels, 1)) for i in range(levels)
        )
        self.classifier = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = torch.relu(x + block(x))
        return self.classifier(x.mean(dim=2))


class CausalBlock(nn.Module):
    """Pre-norm decoder block: causal multi-head self-attention written out (scores masked
    above the diagonal) and a GELU MLP, each with a residual.

    Shapes: (batch, seq, dim) -> (batch, seq, dim).
    """

    def __init__(self, dim: int, heads: int, seq: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.register_buffer("mask", torch.triu(torch.ones(seq, seq, dtype=torch.bool), diagonal=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(batch, seq, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(dim // self.heads)
        attention = torch.softmax(scores.masked_fill(self.mask[:seq, :seq], float("-inf")), dim=-1)
        x = x + self.proj((attention @ v).transpose(1, 2).reshape(batch, seq, dim))
        return x + self.mlp(self.norm2(x))


class GPTDecoder(nn.Module):
    """A decoder-only language model: token and position embeddings, `CausalBlock` s, a final
    norm and a vocabulary head.

    Shapes: input (batch, seq) int64 token ids -> output (batch, seq, vocab).
    """

    def __init__(self, vocab: int = 256, dim: int = 96, heads: int = 4, layers: int = 4, seq: int = 48) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(seq, dim)
        self.blocks = nn.ModuleList(CausalBlock(dim, heads, seq) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tokens(ids) + self.positions.weight[: ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class MultiTower(nn.Module):
    """A multi-task recommender: three embedding tables (mean-pooled bags) and a dense MLP feed
    a shared bottom, then three task towers of different depths whose outputs are
    concatenated.

    Shapes: ids (batch, bag) int64 in [0, rows) and dense (batch, 32) -> output (batch, 3).
    """

    def __init__(self, rows: int = 8000, dim: int = 48) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(rows, dim) for _ in range(3))
        self.dense = nn.Sequential(nn.Linear(32, dim), nn.ReLU())
        self.bottom = nn.Sequential(nn.Linear(4 * dim, 256), nn.ReLU())
        self.towers = nn.ModuleList(
            nn.Sequential(*[layer for _ in range(depth) for layer in (nn.Linear(256, 256), nn.ReLU())], nn.Linear(256, 1)) for depth in (1, 2, 3)
        )

    def forward(self, ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        pooled = [table(ids.roll(shift, dims=1)).mean(dim=1) for shift, table in enumerate(self.tables)]
        shared = self.bottom(torch.cat([*pooled, self.dense(dense)], dim=1))
        return torch.cat([tower(shared) for tower in self.towers], dim=1)


class StackedMoE(nn.Module):
    """Two dense-gated mixture-of-experts layers with residuals, three experts each of
    different hidden sizes, between an input and an output projection.

    Shapes: input (batch, width) -> output (batch, width).
    """

    def __init__(self, width: int = 192, hidden: tuple[int, ...] = (256, 384, 512)) -> None:
        super().__init__()
        self.inp = nn.Linear(width, width)
        self.routers = nn.ModuleList(nn.Linear(width, len(hidden)) for _ in range(2))
        self.experts = nn.ModuleList(nn.ModuleList(nn.Sequential(nn.Linear(width, h), nn.GELU(), nn.Linear(h, width)) for h in hidden) for _ in range(2))
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.inp(x))
        for router, experts in zip(self.routers, self.experts, strict=True):
            gates = torch.softmax(router(x), dim=-1)
            x = x + sum(gates[:, e : e + 1] * expert(x) for e, expert in enumerate(experts))
        return self.out(x)


def unet_cnn(batch_size: int = 8, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """`UNet` on 32x32 images (second held-out set)."""
    torch.manual_seed(seed)
    return UNet(), (torch.randn(batch_size, 3, 32, 32, generator=_generator(seed + 1)),)


def temporal_cnn(batch_size: int = 16, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """`TemporalCNN` on sequences of 256 steps (second held-out set)."""
    torch.manual_seed(seed)
    return TemporalCNN(), (torch.randn(batch_size, 32, 256, generator=_generator(seed + 1)),)


def gpt_decoder(batch_size: int = 4, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """`GPTDecoder`, 4 blocks of width 96 over 48 tokens (second held-out set)."""
    torch.manual_seed(seed)
    return GPTDecoder(), (torch.randint(0, 256, (batch_size, 48), generator=_generator(seed + 1)),)


def multi_tower(batch_size: int = 256, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """`MultiTower` with bags of 6 ids (second held-out set)."""
    torch.manual_seed(seed)
    generator = _generator(seed + 1)
    return MultiTower(), (torch.randint(0, 8000, (batch_size, 6), generator=generator), torch.randn(batch_size, 32, generator=generator))


def stacked_moe(batch_size: int = 128, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """`StackedMoE` (second held-out set)."""
    torch.manual_seed(seed)
    return StackedMoE(), (torch.randn(batch_size, 192, generator=_generator(seed + 1)),)


# ----------------------------------------------------------------------------- calibration
class _Chain(nn.Module):
    """Applies ``layers`` in order; the calibration models are built from it."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class _Pointwise(nn.Module):
    """A chain of element-wise ops with a learned scale (one element-wise op per line)."""

    def __init__(self, ops: int = 6) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * self.scale
        for index in range(self.ops):
            y = torch.tanh(y) if index % 3 == 0 else (torch.nn.functional.gelu(y) if index % 3 == 1 else y * x + 0.5)
        return y


class _Views(nn.Module):
    """A chain of views (transposes, unsqueezes, squeezes) of a tiny tensor with a learned
    scale: what every executor node costs beyond its kernel."""

    def __init__(self, ops: int = 30) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * self.scale
        for index in range(self.ops):
            y = y.transpose(1, 2) if index % 3 == 0 else (y.unsqueeze(1) if index % 3 == 1 else y.squeeze(1))
        return y


class _Softmaxes(nn.Module):
    """Softmax and mean reductions over the last dimension, with a learned bias."""

    def __init__(self, width: int, rounds: int = 3) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(width))
        self.rounds = rounds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x + self.bias
        for _ in range(self.rounds):
            y = torch.softmax(y, dim=-1) - y.mean(dim=-1, keepdim=True)
        return y


class _Attention(nn.Module):
    """One projection to queries, keys and values, then scaled dot-product attention.

    Shapes: input (batch, seq, heads * dim) -> output (batch, heads, seq, dim).
    """

    def __init__(self, heads: int, dim: int) -> None:
        super().__init__()
        self.heads, self.dim = heads, dim
        self.project = nn.Linear(heads * dim, 3 * heads * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        q, k, v = self.project(x).view(batch, seq, 3, self.heads, self.dim).permute(2, 0, 3, 1, 4)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)


class _Matrices(nn.Module):
    """Many weight matrices applied to a tiny batch: the optimizer update dominates."""

    def __init__(self, count: int, width: int) -> None:
        super().__init__()
        self.weights = nn.ParameterList(nn.Parameter(torch.randn(width, width) / width**0.5) for _ in range(count))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for weight in self.weights:
            x = x @ weight
        return x


class _Embed(nn.Module):
    """Token embedding averaged over the sequence."""

    def __init__(self, vocab: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embedding(tokens).mean(dim=1)


def _calibration_model(name: str) -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    g = _generator(1)
    if name == "linear-wide":
        return _Chain(*(nn.Linear(512, 512) for _ in range(3))), (torch.randn(256, 512, generator=g),)
    if name == "linear-narrow":
        return _Chain(*(nn.Linear(96, 96) for _ in range(6))), (torch.randn(1024, 96, generator=g),)
    if name == "conv":
        return _Chain(nn.Conv2d(16, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1)), (torch.randn(8, 16, 32, 32, generator=g),)
    if name == "conv-strided":
        return _Chain(nn.Conv2d(3, 24, 3, padding=1), nn.Conv2d(24, 48, 3, stride=2, padding=1)), (torch.randn(8, 3, 32, 32, generator=g),)
    if name == "conv-deep":
        return _Chain(nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.Conv2d(64, 64, 3, padding=1)), (torch.randn(8, 32, 16, 16, generator=g),)
    if name == "conv-block":
        layers = (nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        return _Chain(*layers), (torch.randn(8, 3, 32, 32, generator=g),)
    if name == "batchnorm":
        return _Chain(*(nn.BatchNorm2d(32) for _ in range(4))), (torch.randn(8, 32, 32, 32, generator=g),)
    if name == "layernorm":
        return _Chain(*(nn.LayerNorm(256) for _ in range(6))), (torch.randn(32, 64, 256, generator=g),)
    if name == "pointwise":
        return _Pointwise(9), (torch.randn(256, 1024, generator=g),)
    if name == "attention":
        return _Attention(4, 32), (torch.randn(8, 128, 128, generator=g),)
    if name == "reduction":
        return _Softmaxes(1024), (torch.randn(256, 1024, generator=g),)
    if name == "embedding":
        return _Embed(8192, 64), (torch.randint(0, 8192, (64, 128), generator=g),)
    if name == "optimizer":
        return _Matrices(8, 384), (torch.randn(2, 384, generator=g),)
    if name == "tiny-ops":
        return _Pointwise(30), (torch.randn(8, 8, generator=g),)
    if name == "views":
        return _Views(30), (torch.randn(4, 8, 8, generator=g),)
    if name == "tiny-matrices":
        return _Matrices(32, 16), (torch.randn(2, 16, generator=g),)
    if name == "tiny-linear":
        return _Chain(*(nn.Linear(32, 32) for _ in range(8))), (torch.randn(4, 32, generator=g),)
    if name == "tiny-conv":
        layers = (nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        return _Chain(*layers), (torch.randn(2, 4, 12, 12, generator=g),)
    raise KeyError(name)


#: Small models, each dominated by one op kind of `rlplace.costs`, that calibration runs to
#: fit per-kind efficiencies and the per-op overhead (`rlplace.measure.calibrate`).
CALIBRATION_MODELS = (
    "linear-wide",
    "linear-narrow",
    "conv",
    "conv-strided",
    "conv-deep",
    "conv-block",
    "batchnorm",
    "layernorm",
    "pointwise",
    "attention",
    "reduction",
    "embedding",
    "optimizer",
    "tiny-ops",
    "views",
    "tiny-matrices",
    "tiny-linear",
    "tiny-conv",
)


def calibration_model(name: str) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """The calibration model called ``name`` (one of `CALIBRATION_MODELS`) and its input."""
    return _calibration_model(name)


def crossing_chain(batch_size: int = 128) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """Twelve linear layers of width 256 (128 kB activations, the size of a small model's):
    split layer by layer over two devices, every layer boundary is a message, so comparing
    with the unsplit chain measures what a message costs a step through the executor
    (`rlplace.measure.calibrate.message_overhead`)."""
    torch.manual_seed(0)
    return _Chain(*(nn.Linear(256, 256) for _ in range(12))), (torch.randn(batch_size, 256, generator=_generator(1)),)


def crossing_chain_device(module_path: str) -> int:
    """Device (0 or 1) of an op of `crossing_chain` from its module path: layer i on device
    i mod 2, anything else (the input) on device 0."""
    parts = module_path.split(".")
    if len(parts) >= 2 and parts[0] == "layers" and parts[1].isdigit():
        return int(parts[1]) % 2
    return 0


class _Pair(nn.Module):
    """Two chains side by side on the same input, their outputs added."""

    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.a = a
        self.b = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(x)


def crossing_pair(batch_size: int = 128) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """Two `crossing_chain` chains (``a`` and ``b``) on one input, added. Placed by
    `crossing_pair_device`, both devices compute all the time and every layer boundary is a
    message each way, so comparing with one device measures what messages cost when their
    endpoints are busy (`rlplace.measure.calibrate.fit_message_cpu`)."""
    torch.manual_seed(0)
    chains = [_Chain(*(nn.Linear(256, 256) for _ in range(12))) for _ in range(2)]
    return _Pair(*chains), (torch.randn(batch_size, 256, generator=_generator(2)),)


def crossing_pair_device(module_path: str) -> int:
    """Device (0 or 1) of an op of `crossing_pair` from its module path: layer i of chain ``a``
    on device i mod 2, of chain ``b`` on device (i + 1) mod 2 (the two chains swap devices at
    every layer), anything else (the input, the sum) on device 0."""
    parts = module_path.split(".")
    if len(parts) >= 3 and parts[0] in ("a", "b") and parts[1] == "layers" and parts[2].isdigit():
        return (int(parts[2]) + (parts[0] == "b")) % 2
    return 0
