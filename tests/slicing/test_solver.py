"""The exact all-θ solver against hand-computed cases and the paper's linear scan."""

from __future__ import annotations

import math

import pytest
import torch

from edgeslice.slicing.solver import linear_scan, min_k, prefix_similarity, similarity_gram


def _sim_from_features(f: torch.Tensor, subset: torch.Tensor) -> float:
    """Eq. 2 computed the slow way, from sample Gram matrices K = F Fᵀ."""
    k_s = f[:, subset] @ f[:, subset].T
    k_all = f @ f.T
    return float((k_s * k_all).sum() / (k_s.norm() * k_all.norm()))


def test_orthogonal_channels_hand_computed():
    # G = diag(4, 3, 2, 1): sim of the top-k prefix is sqrt(cumsum(d²)/sum(d²)) with d² = 16, 9, 4, 1 over 30.
    f = torch.diag(torch.tensor([2.0, math.sqrt(3), math.sqrt(2), 1.0], dtype=torch.float64))
    g = f.T @ f
    sim = prefix_similarity(g, torch.arange(4))
    expected = torch.tensor([16 / 30, 25 / 30, 29 / 30, 1.0], dtype=torch.float64).sqrt()
    assert torch.allclose(sim, expected)
    # θ just under / over each step.
    ks = min_k(sim, [0.5, 0.73, 0.74, 0.91, 0.92, 0.983, 0.984, 1.0])
    assert ks.tolist() == [1, 1, 2, 2, 3, 3, 4, 4]


def test_prefix_matches_direct_features():
    gen = torch.Generator().manual_seed(3)
    f = torch.rand(40, 17, generator=gen, dtype=torch.float64) * torch.rand(17, generator=gen, dtype=torch.float64)
    order = torch.randperm(17, generator=gen)
    sim = prefix_similarity(f.T @ f, order)
    for k in (1, 5, 11, 17):
        assert sim[k - 1].item() == pytest.approx(_sim_from_features(f, order[:k]), rel=1e-10)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("similarity", ["gram", "cka"])
def test_exact_equals_linear_scan_interval_1(seed, similarity):
    gen = torch.Generator().manual_seed(seed)
    n, ch = 30, 1 + seed * 13
    f = torch.relu(torch.randn(n, ch, generator=gen, dtype=torch.float64) + 0.3)
    g = similarity_gram(f.T @ f, f.sum(0), torch.tensor(float(n)), similarity)
    order = torch.randperm(ch, generator=gen)
    sim = prefix_similarity(g, order)
    thetas = [0.5, 0.8, 0.9, 0.95, 0.97, 0.99, 0.999, 1.0]
    assert min_k(sim, thetas).tolist() == [linear_scan(g, order, t, interval=1) for t in thetas]


def test_linear_scan_interval_gives_multiple_of_interval():
    gen = torch.Generator().manual_seed(0)
    f = torch.rand(20, 30, generator=gen, dtype=torch.float64)
    g = f.T @ f
    order = torch.arange(30)
    exact = int(min_k(prefix_similarity(g, order), 0.999)[0])
    k8 = linear_scan(g, order, 0.999, interval=8)
    assert k8 % 8 == 0 or k8 == 30
    assert exact <= k8 < exact + 8 or k8 == 30


def test_centered_gram_is_centered_features():
    gen = torch.Generator().manual_seed(1)
    f = torch.rand(12, 5, generator=gen, dtype=torch.float64) + 2.0
    fc = f - f.mean(0)
    got = similarity_gram(f.T @ f, f.sum(0), torch.tensor(12.0), "cka")
    assert torch.allclose(got, fc.T @ fc)
    with pytest.raises(ValueError, match="valid: cka, gram"):
        similarity_gram(f.T @ f, f.sum(0), torch.tensor(12.0), "rbf")


def test_dead_layer_needs_one_channel():
    sim = prefix_similarity(torch.zeros(4, 4, dtype=torch.float64), torch.arange(4))
    assert min_k(sim, 0.99).tolist() == [1]
