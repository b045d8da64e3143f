"""FGSM and PGD (L∞, random start) on inputs in [0, 1], with the model's normalisation inside the attacked function.

These are line-for-line the algorithms of torchattacks 3.5 (``FGSM``, ``PGD``): same loss (mean cross-entropy),
same sign step, same clipping order, and the random start drawn with ``uniform_(-ε, ε)`` from a generator. A test
checks bit-equality with torchattacks when it is installed. torchattacks is not a dependency because installing it
pins ``requests~=2.25.1`` (it downgrades ``requests``).

The model is attacked in eval mode (BatchNorm running statistics, no dropout), as torchattacks does by default.

Example:
    >>> cfg = AttackConfig(kind="pgd", eps=0.1)          # α = ε/4, 10 steps, random start
    >>> adv = attack(model, x, y, cfg, prepare=lambda x: normalize(x, mean, std), seed=0)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..torchutil import eval_mode

ATTACKS = ("fgsm", "pgd")
ATTACK_VERSION = 1
#: Fashion-MNIST has no canonical ε; 0.1 on the [0, 1] pixel scale is our default (MNIST work often uses 0.1–0.3).
DEFAULT_EPS = 0.1

Prepare = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class AttackConfig:
    """An L∞ evasion attack.

    Attributes:
        kind: ``fgsm`` or ``pgd``.
        eps: L∞ budget on the [0, 1] pixel scale.
        alpha: PGD step size; None means ε/4 (torchattacks' default ratio, 2/255 for 8/255).
        steps: PGD iterations.
        random_start: PGD starts from a uniform point in the ε-ball.
    """

    kind: str = "fgsm"
    eps: float = DEFAULT_EPS
    alpha: float | None = None
    steps: int = 10
    random_start: bool = True
    version: int = ATTACK_VERSION

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise ValueError(f"unknown attack {self.kind!r}; valid: {', '.join(ATTACKS)}")
        if not 0.0 < self.eps <= 1.0:
            raise ValueError(f"eps must be in (0, 1], got {self.eps}")
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")

    @property
    def step_size(self) -> float:
        return self.alpha if self.alpha is not None else self.eps / 4

    def describe(self) -> dict[str, Any]:
        """What every report states: kind, ε, and for PGD the step size, steps and random start."""
        d: dict[str, Any] = {"kind": self.kind, "eps": self.eps, "norm": "linf", "pixel_range": [0, 1]}
        if self.kind == "pgd":
            d.update(alpha=self.step_size, steps=self.steps, random_start=self.random_start)
        return d

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AttackConfig:
        return cls(**d)


def _logits(model: nn.Module, x: torch.Tensor, prepare: Prepare | None) -> torch.Tensor:
    return model(prepare(x) if prepare is not None else x)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, prepare: Prepare | None = None):
    """Fast gradient sign method: x + ε·sign(∇ₓ CE), clipped to [0, 1]."""
    with eval_mode(model):
        images = x.clone().detach()
        images.requires_grad = True
        cost = F.cross_entropy(_logits(model, images, prepare), y)
        grad = torch.autograd.grad(cost, images, retain_graph=False, create_graph=False)[0]
        adv = images + eps * grad.sign()
        return torch.clamp(adv, min=0, max=1).detach()


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    alpha: float,
    steps: int,
    random_start: bool = True,
    prepare: Prepare | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected gradient descent (Madry et al.) in the L∞ ε-ball around ``x``, within [0, 1]."""
    with eval_mode(model):
        images = x.clone().detach()
        adv = images.clone().detach()
        if random_start:
            adv = adv + torch.empty_like(adv).uniform_(-eps, eps, generator=generator)
            adv = torch.clamp(adv, min=0, max=1).detach()
        for _ in range(steps):
            adv.requires_grad = True
            cost = F.cross_entropy(_logits(model, adv, prepare), y)
            grad = torch.autograd.grad(cost, adv, retain_graph=False, create_graph=False)[0]
            adv = adv.detach() + alpha * grad.sign()
            delta = torch.clamp(adv - images, min=-eps, max=eps)
            adv = torch.clamp(images + delta, min=0, max=1).detach()
        return adv


def attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: AttackConfig,
    *,
    prepare: Prepare | None = None,
    seed: int = 0,
    batch_size: int = 250,
) -> torch.Tensor:
    """Adversarial counterparts of ``x`` (inputs in [0, 1]) under ``cfg``, in batches; PGD's random start is seeded.

    Args:
        model: the attacked model (its mode is restored afterwards).
        x: (n, C, H, W) images in [0, 1], on the model's device.
        y: (n,) labels.
        cfg: the attack.
        prepare: the model's normalisation, applied inside the attacked function.
        seed: seed of PGD's random start.
        batch_size: images per attack batch.
    """
    gen = torch.Generator(device=x.device).manual_seed(seed)
    out = []
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        if cfg.kind == "fgsm":
            out.append(fgsm(model, xb, yb, cfg.eps, prepare=prepare))
        else:
            out.append(
                pgd(
                    model,
                    xb,
                    yb,
                    cfg.eps,
                    alpha=cfg.step_size,
                    steps=cfg.steps,
                    random_start=cfg.random_start,
                    prepare=prepare,
                    generator=gen,
                )
            )
    return torch.cat(out) if out else x.clone()


@torch.no_grad()
def accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, prepare: Prepare | None = None, batch_size: int = 500
) -> float:
    """Top-1 accuracy in percent of ``model`` on in-memory (x, y) in [0, 1]."""
    correct = 0
    with eval_mode(model):
        for start in range(0, len(x), batch_size):
            logits = _logits(model, x[start : start + batch_size], prepare)
            correct += int((logits.argmax(1) == y[start : start + batch_size]).sum())
    return 100.0 * correct / max(len(x), 1)
