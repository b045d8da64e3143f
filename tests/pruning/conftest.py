"""Tiny seeded networks shared by the pruning tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

INPUT_SHAPE = (2, 3, 8, 8)  # (batch, channels, height, width) the toy net expects


def make_toy_net(seed: int = 0) -> nn.Sequential:
    """Conv(3->8) 216 w, Conv(8->16) 1152 w, Conv(16->16) 2304 w, Linear(64->10) 640 w: 4312 prunable weights."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3),
        nn.Flatten(),
        nn.Linear(16 * 2 * 2, 10),
    )


@pytest.fixture
def toy_net() -> nn.Sequential:
    return make_toy_net()


@pytest.fixture
def toy_net_factory() -> Callable[..., nn.Sequential]:
    return make_toy_net


@pytest.fixture
def toy_input() -> torch.Tensor:
    return torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(123))
