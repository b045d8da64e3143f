"""Tiny seeded networks shared by the pruning tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

INPUT_SHAPE = (2, 3, 8, 8)  # (batch, channels, height, width) the toy net expects


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine two OpenMP threads per process can be ~50x slower."""
    torch.set_num_threads(1)


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


@pytest.fixture(scope="session")
def digits28():
    """scikit-learn digits at 28 px (the MLP's default input): 1438 train / 359 test images."""
    from edgeslice.data import load_data

    return load_data("digits", image_size=28, seed=0)


@pytest.fixture(scope="session")
def trained_mlp_state(digits28, learning_seed):
    """(state dict, meta) of the paper's MLP trained one epoch on digits (about 90% test accuracy)."""
    from edgeslice.pipeline import train_baseline

    torch.set_num_threads(1)
    model, meta = train_baseline(
        "mlp", digits28, epochs=1, seed=learning_seed, device=torch.device("cpu"), batch_size=64
    )
    return {k: v.clone() for k, v in model.state_dict().items()}, meta


@pytest.fixture
def trained_mlp(trained_mlp_state):
    """A fresh copy of the trained MLP and its meta."""
    import copy

    from edgeslice.models import create_model

    state, meta = trained_mlp_state
    model = create_model("mlp", num_classes=10, in_chans=1)
    model.load_state_dict(state)
    return model.eval(), copy.deepcopy(meta)
