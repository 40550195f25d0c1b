"""Small reference models for measurement tests, calibration checks and the fidelity benchmark.

Each factory returns ``(module, example_inputs)`` with seeded weights and inputs and is
addressed by a recipe spec such as ``rlplace.measure.models:mlp``. Sizes are chosen so a
CPU training step takes milliseconds (tests) to ~100 ms (benchmark, ``width``/``depth``).
"""

from __future__ import annotations

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
    """Conv + BatchNorm + ReLU stages, global average pooling, linear classifier.

    Shapes: input (batch, 3, size, size) -> output (batch, classes).
    """

    def __init__(self, channels: int = 16, stages: int = 3, classes: int = 10) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = 3
        for stage in range(stages):
            out = channels * (2**stage)
            blocks += [nn.Conv2d(width, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
            if stage < stages - 1:
                blocks.append(nn.MaxPool2d(2))
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
