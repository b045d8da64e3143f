"""The semantic-slicing solver: the fewest top-ranked channels whose Gram similarity to the whole layer reaches θ.

With F the (n × N) features of one class at one layer and G = FᵀF the channel Gram matrix, the sample Gram matrix of
a channel subset S is K_S = Σ_{i∈S} f_i f_iᵀ and, as ⟨f_i f_iᵀ, f_j f_jᵀ⟩ = G_ij² (docs/slicing.md),

    ⟨K_S, K_all⟩ = Σ_{i∈S} r_i,  r_i = Σ_j G_ij²;   ‖K_S‖² = Σ_{i,j∈S} G_ij²;   ‖K_all‖² = Σ_{i,j} G_ij².

Ordering the channels by contribution, every prefix k is scored at once with prefix sums, so one G answers every θ
exactly in O(N²). :func:`linear_scan` is the paper's Algorithm 1, kept as the reference.
"""

from __future__ import annotations

import torch

SIMILARITIES = ("cka", "gram")


def similarity_gram(gram: torch.Tensor, total: torch.Tensor, count: torch.Tensor, similarity: str) -> torch.Tensor:
    """The channel Gram matrix the similarity is computed on.

    Args:
        gram: Σ f fᵀ over the samples, (N, N) float64.
        total: Σ f over the samples, (N,).
        count: number of samples.
        similarity: ``gram`` (the paper's Eq. 2, uncentered) or ``cka`` (centered linear CKA: features are
            column-centered first, G − n μμᵀ).
    """
    if similarity == "gram":
        return gram
    if similarity == "cka":
        n = float(count)
        if n <= 0:
            return torch.zeros_like(gram)
        mu = total / n
        return gram - n * torch.outer(mu, mu)
    raise ValueError(f"unknown similarity {similarity!r}; valid: {', '.join(SIMILARITIES)}")


def prefix_similarity(g: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """sim_k for every prefix k = 1..N of ``order`` (channels by descending contribution).

    Args:
        g: channel Gram matrix (N, N), float64.
        order: permutation of range(N).

    Returns:
        (N,) float64; sim_k is the similarity of the top-k channels to the whole layer. A layer whose Gram matrix is
        zero (no signal) scores 1 for every k: any subset represents it.
    """
    h = (g * g)[order][:, order]  # (N, N)
    total = h.sum()
    if float(total) <= 0.0:
        return torch.ones(len(order), dtype=torch.float64)
    num = torch.cumsum(h.sum(1), 0)
    lower = torch.tril(h, diagonal=-1).sum(1)
    den = torch.cumsum(2.0 * lower + torch.diagonal(h), 0)
    sim = torch.where(den > 0, num / torch.sqrt(den.clamp_min(1e-300) * total), torch.zeros_like(num))
    sim[-1] = 1.0  # all channels: exactly the layer (removes rounding at the top end)
    return sim.clamp(max=1.0)


def min_k(sim: torch.Tensor, thetas: torch.Tensor | list[float] | float) -> torch.Tensor:
    """Smallest k with sim_k ≥ θ, for every θ at once (the first-hit rule of Algorithm 1).

    Args:
        sim: (N,) prefix similarities from :func:`prefix_similarity`.
        thetas: one or many θ in (0, 1].

    Returns:
        int64 tensor of k (1..N), one per θ.
    """
    th = torch.as_tensor(thetas, dtype=torch.float64).reshape(-1)
    running = torch.cummax(sim, 0).values
    k = torch.searchsorted(running.contiguous(), th.contiguous(), side="left") + 1
    return k.clamp(max=len(sim))


def linear_scan(g: torch.Tensor, order: torch.Tensor, theta: float, interval: int = 1) -> int:
    """The paper's Algorithm 1: grow the top set by ``interval`` channels until sim ≥ θ. Reference implementation.

    Each step recomputes the similarity of the current subset from scratch (O(k²)), as the paper's scan does.
    """
    if interval < 1:
        raise ValueError("interval must be >= 1")
    n = len(order)
    g2 = g * g
    total = g2.sum()
    if float(total) <= 0.0:
        return min(interval, n)
    row = g2.sum(1)
    k = min(interval, n)
    while True:
        s = order[:k]
        den = g2[s][:, s].sum()
        sim = float(row[s].sum() / torch.sqrt(den * total)) if float(den) > 0 else 0.0
        if sim >= theta or k >= n:
            return k
        k = min(k + interval, n)
