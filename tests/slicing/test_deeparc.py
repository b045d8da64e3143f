"""DeepArc baseline: linear CKA, redundant same-shape blocks replaced by the identity."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from edgeslice.studies.deeparc import deeparc, find_blocks, linear_cka, remove_blocks_


def test_linear_cka_hand_values():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 6, generator=gen, dtype=torch.float64)
    assert linear_cka(x, x) == pytest.approx(1.0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    assert linear_cka(x, 3.0 * x @ q + 7.0) == pytest.approx(1.0)  # invariant to rotation, scale and shift
    # Two features on disjoint halves of the samples... centred and orthogonal: CKA 0.
    a = torch.tensor([[1.0], [-1.0], [0.0], [0.0]])
    b = torch.tensor([[0.0], [0.0], [1.0], [-1.0]])
    assert linear_cka(a, b) == pytest.approx(0.0)
    # Hand value: x = (1,2,3,4), y = (1,2,3,5) (one feature each) → CKA = corr² = (Σxy)²/(Σx² Σy²) centred.
    xv = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    yv = torch.tensor([[1.0], [2.0], [3.0], [5.0]])
    xc, yc = xv - xv.mean(), yv - yv.mean()
    expected = float((xc * yc).sum() ** 2 / ((xc**2).sum() * (yc**2).sum()))
    assert linear_cka(xv, yv) == pytest.approx(expected)
    # Many features (D ≥ n) takes the sample-Gram path and agrees.
    wide = torch.randn(5, 40, generator=gen, dtype=torch.float64)
    assert linear_cka(wide, wide * 2) == pytest.approx(1.0)


class Residual(nn.Module):
    def __init__(self, dim: int, scale: float):
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        with torch.no_grad():
            self.fc.weight.mul_(scale)
            self.fc.bias.mul_(scale)

    def forward(self, x):
        return x + torch.relu(self.fc(x))


class Net(nn.Module):
    """stem → blocks (a near-identity residual, a strong residual, a shape change) → head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(4, 8)
        self.blocks = nn.Sequential(
            nn.Sequential(Residual(8, 1e-4), Residual(8, 5.0)),
            nn.Sequential(nn.Linear(8, 6)),
        )
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def test_redundant_residual_block_is_removed():
    model = Net().eval()
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    assert find_blocks(model) == ["blocks.0.0", "blocks.0.1", "blocks.1.0"]
    report = deeparc(model, [(x[:40], None), (x[40:], None)], threshold=0.99, max_samples=50)
    rows = {r["block"]: r for r in report.similarities}
    assert rows["blocks.0.0"]["cka"] > 0.9999 and rows["blocks.0.0"]["same_shape"]
    assert rows["blocks.0.1"]["cka"] < 0.99
    assert not rows["blocks.1.0"]["same_shape"]
    assert report.redundant == ["blocks.0.0"]
    assert report.params_before - report.params_after == 8 * 8 + 8
    assert report.compression_rate == pytest.approx(72 / report.params_before)
    twin = remove_blocks_(copy.deepcopy(model), report.redundant)
    assert isinstance(twin.blocks[0][0], nn.Identity)
    with torch.no_grad():
        assert torch.allclose(twin(x), model(x), atol=1e-3)  # the removed block did (almost) nothing
    # A shape-changing block is never removed, whatever its similarity.
    assert deeparc(model, [(x, None)], threshold=1e-6).redundant == ["blocks.0.0", "blocks.0.1"]
    with pytest.raises(ValueError, match="threshold"):
        deeparc(model, [(x, None)], threshold=0.0)


def test_find_blocks_on_timm(tiny_mnv3):
    blocks = find_blocks(tiny_mnv3)
    assert blocks[0] == "blocks.0.0" and "blocks.2.1" in blocks and len(blocks) == 12
