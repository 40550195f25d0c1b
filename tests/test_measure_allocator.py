"""The steady allocator: glibc keeps freed memory for reuse."""

from __future__ import annotations

import ctypes
import ctypes.util

import pytest

from rlplace.measure.allocator import steady_allocator


@pytest.mark.skipif(ctypes.util.find_library("c") is None, reason="no C library to configure")
def test_steady_allocator_is_idempotent_and_keeps_training_working() -> None:
    import torch

    first = steady_allocator()
    assert steady_allocator() is first  # cached: configured once per process
    layer = torch.nn.LayerNorm(64)
    x = torch.randn(128, 64)
    for _ in range(3):
        layer(x).square().mean().backward()
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()
