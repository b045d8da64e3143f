"""Own FGSM/PGD: bit-equal to torchattacks (when installed), inside the ε-ball and [0, 1], and effective."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeslice.data import normalize
from edgeslice.maintain import AttackConfig, accuracy, attack, fgsm, pgd

MEAN, STD = (0.3,), (0.35,)


def _prepare(x):
    return normalize(x, MEAN, STD)


class _Normalized(nn.Module):
    """The model with its normalisation inside, as torchattacks sees it."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(_prepare(x))


@pytest.fixture()
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(12, 1, 32, 32, generator=g), torch.randint(0, 10, (12,), generator=g)


def test_fgsm_matches_torchattacks(tiny_mnv3, batch):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = batch
    ours = fgsm(tiny_mnv3, x, y, 0.1, prepare=_prepare)
    theirs = torchattacks.FGSM(_Normalized(tiny_mnv3), eps=0.1)(x, y)
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours, x)


def test_pgd_matches_torchattacks(tiny_mnv3, batch):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = batch
    torch.manual_seed(7)  # torchattacks draws the random start from the global generator
    theirs = torchattacks.PGD(_Normalized(tiny_mnv3), eps=0.1, alpha=0.025, steps=5, random_start=True)(x, y)
    ours = pgd(tiny_mnv3, x, y, 0.1, alpha=0.025, steps=5, prepare=_prepare, generator=torch.Generator().manual_seed(7))
    assert torch.equal(ours, theirs)


def test_attacks_stay_in_the_ball_and_restore_the_mode(tiny_mnv3, batch):
    x, y = batch
    tiny_mnv3.train()
    for cfg in (AttackConfig("fgsm", eps=0.05), AttackConfig("pgd", eps=0.05, steps=3)):
        adv = attack(tiny_mnv3, x, y, cfg, prepare=_prepare, seed=1, batch_size=5)
        assert adv.shape == x.shape
        assert float((adv - x).abs().max()) <= 0.05 + 1e-6
        assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
        assert tiny_mnv3.training
    again = attack(tiny_mnv3, x, y, AttackConfig("pgd", eps=0.05, steps=3), prepare=_prepare, seed=1, batch_size=5)
    assert torch.equal(again, adv)  # seeded random start


@pytest.mark.learning
def test_pgd_is_at_least_as_strong_as_fgsm_on_a_trained_model(trained_digits, measure):
    model, meta, bundle = trained_digits
    from edgeslice.train import iterate_batches

    x, y = next(iterate_batches(bundle.test, 200))
    prepare = lambda t: normalize(t, meta.mean, meta.std)  # noqa: E731
    clean = accuracy(model, x, y, prepare=prepare)
    acc_fgsm = accuracy(model, attack(model, x, y, AttackConfig("fgsm", eps=0.1), prepare=prepare), y, prepare=prepare)
    acc_pgd = accuracy(model, attack(model, x, y, AttackConfig("pgd", eps=0.1), prepare=prepare), y, prepare=prepare)
    assert measure("clean accuracy %", clean, "> 60") > 60
    assert measure("clean - FGSM points", clean - acc_fgsm, "> 20") > 20
    assert measure("FGSM - PGD points", acc_fgsm - acc_pgd, ">= 0") >= 0


def test_config_validates():
    with pytest.raises(ValueError, match="unknown attack"):
        AttackConfig("cw")
    with pytest.raises(ValueError, match="eps"):
        AttackConfig("fgsm", eps=0)
    assert AttackConfig("pgd", eps=0.1).describe() == {
        "kind": "pgd", "eps": 0.1, "norm": "linf", "pixel_range": [0, 1], "alpha": 0.025, "steps": 10,
        "random_start": True,
    }  # fmt: skip
