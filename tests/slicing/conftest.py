"""Shared toy models for the slicing tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class Toy(nn.Module):
    """x → Linear(4,4)=I → ReLU → Linear(4,2). The hidden layer's features are the inputs themselves."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(4, 4)
        self.act = nn.ReLU()
        self.classifier = nn.Linear(4, 2)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.eye(4))
            self.hidden.bias.zero_()

    def forward(self, x):
        return self.classifier(self.act(self.hidden(x)))


@pytest.fixture()
def toy() -> Toy:
    """A fresh identity-hidden-layer toy network (hand-computable features)."""
    return Toy()
