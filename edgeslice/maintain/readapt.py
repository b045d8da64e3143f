"""Model re-adaptation (paper §4.2, Eq. 6–7): repair a model by training only its critical channels.

Protocol (paper §5.4, made precise):

1. The *repair set*: a seeded, class-stratified sample of ``samples`` (default 1,000) training images; their
   adversarial counterparts are generated once against the deployed model (FGSM or PGD, :mod:`.attacks`).
2. Re-adaptation: ``epochs`` passes over the (x, adv_x, y) triples with L = CE(x, y) + CE(adv_x, y) (Eq. 6), AdamW,
   cosine schedule; only the rows of the trainable channels move (Eq. 7) — every other parameter and BatchNorm
   statistic stays bit-identical (:class:`~edgeslice.ondevice.ExactFreezer`). With ``regenerate`` the adversarial
   examples are made afresh against the current model every epoch (adversarial training) instead.
3. Metrics (paper Table 6, plus checks): **TPR** = trained parameters / all parameters; **RA** = accuracy on the
   repair set's adversarial examples after repair; **RAA** = accuracy under a fresh attack (same kind and ε)
   generated against the repaired model, on ``eval_samples`` held-out test images; **PGD-20** = a 20-step PGD
   re-attack on the same held-out images; clean test accuracy before/after; wall time. The "before" values
   (RA, RAA, PGD-20 against the deployed model) are reported beside them.

The classifier's rows are trained with the critical channels by default (each row is one class's output neuron,
and every class is in the index); ``train_classifier=False`` leaves it frozen.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset

from ..data import calibration_indices
from ..ondevice.freeze import ChannelGroup, TrainPlan, make_plan
from ..ondevice.loop import LoopConfig, train_partial
from ..train import evaluate, iterate_batches
from .attacks import AttackConfig, accuracy, attack

READAPT_VERSION = 1
Prepare = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ReadaptConfig:
    """Everything a re-adaptation run does, validated on construction.

    Attributes:
        attack: the attack the repair targets (and the re-attack of RAA).
        epochs: passes over the repair set (the same budget for every method compared).
        batch_size: clean/adversarial pairs per step.
        lr: peak AdamW learning rate (cosine decay).
        weight_decay: AdamW weight decay.
        optimizer: ``adamw`` or ``sgd``.
        samples: adversarial samples the repair targets (from the training split).
        eval_samples: held-out test images for RAA and the PGD-20 re-attack.
        clean_eval_samples: test images for clean accuracy (None: the whole test split).
        train_classifier: train the classifier rows together with the critical channels.
        regenerate: make fresh adversarial examples against the current model each epoch.
        reattack_steps: steps of the stronger PGD re-attack (α = 2.5·ε / steps).
        frozen_bn: ``eval``: frozen channels keep inference-mode BatchNorm while training (see
            :mod:`edgeslice.ondevice.freeze`); ``batch``: plain train-mode BatchNorm.
        seed: sampling and PGD random starts.
    """

    attack: AttackConfig = field(default_factory=AttackConfig)
    epochs: int = 5
    batch_size: int = 50
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    samples: int = 1000
    eval_samples: int = 1000
    clean_eval_samples: int | None = None
    train_classifier: bool = True
    regenerate: bool = False
    reattack_steps: int = 20
    frozen_bn: str = "eval"
    seed: int = 0
    version: int = READAPT_VERSION

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.samples < 1 or self.eval_samples < 1 or self.reattack_steps < 1:
            raise ValueError("batch_size, samples, eval_samples and reattack_steps must be >= 1")
        if self.clean_eval_samples is not None and self.clean_eval_samples < 1:
            raise ValueError("clean_eval_samples must be >= 1 (or None for the whole test split)")
        self.loop()

    def loop(self) -> LoopConfig:
        return LoopConfig.of(self)

    @property
    def reattack(self) -> AttackConfig:
        """The stronger check: PGD with ``reattack_steps`` steps, α = 2.5·ε/steps, random start."""
        eps = self.attack.eps
        return AttackConfig("pgd", eps=eps, alpha=2.5 * eps / self.reattack_steps, steps=self.reattack_steps)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReadaptConfig:
        d = dict(d)
        if isinstance(d.get("attack"), dict):
            d["attack"] = AttackConfig.from_dict(d["attack"])
        return cls(**d)


def stratified_sample(dataset: Dataset, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded, class-stratified sample of ``n`` items (⌈n / classes⌉ per class, truncated) as (x in [0,1], y)."""
    from ..data import targets_of

    classes = len(torch.unique(targets_of(dataset)))
    idx = calibration_indices(dataset, math.ceil(n / max(classes, 1)), seed)
    # Interleave classes before truncating, so a short sample stays balanced.
    gen = torch.Generator().manual_seed(seed)
    idx = [idx[i] for i in torch.randperm(len(idx), generator=gen).tolist()][:n]
    x, y = next(iterate_batches(Subset(dataset, sorted(idx)), len(idx)))
    return x, y


def critical_plan(
    model: nn.Module,
    groups: list[ChannelGroup],
    trainable: dict[str, torch.Tensor],
    *,
    train_classifier: bool = True,
    info: dict[str, Any] | None = None,
) -> TrainPlan:
    """Train exactly the channels ``trainable`` marks (Eq. 7), plus the classifier if asked."""
    return make_plan(model, groups, trainable, classifier=train_classifier, info=info)


def readapt_(
    model: nn.Module,
    plan: TrainPlan,
    x: torch.Tensor,
    y: torch.Tensor,
    adv: torch.Tensor,
    cfg: ReadaptConfig,
    *,
    prepare: Prepare,
) -> dict[str, Any]:
    """Train ``model`` in place on L = CE(x, y) + CE(adv_x, y) (Eq. 6), moving only the rows ``plan`` allows.

    Args:
        model: the model (x, y, adv on its device).
        plan: trainable rows.
        x: (n, C, H, W) clean images in [0, 1].
        y: (n,) labels.
        adv: (n, C, H, W) their adversarial counterparts (replaced each epoch with ``cfg.regenerate``).
        cfg: the run's settings.
        prepare: the model's normalisation.

    Returns:
        The training loop's statistics (steps, time per step, memory, drift of frozen rows: 0.0).
    """
    current = {"adv": adv}

    def batches(epoch: int):
        if cfg.regenerate and epoch > 0:
            current["adv"] = attack(model, x, y, cfg.attack, prepare=prepare, seed=cfg.seed + epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        order = torch.randperm(len(x), generator=gen).to(x.device)
        for start in range(0, len(x), cfg.batch_size):
            sel = order[start : start + cfg.batch_size]
            yield x[sel], current["adv"][sel], y[sel]

    def loss_fn(net: nn.Module, batch):
        xb, ab, yb = batch
        # One forward over [x; adv] would mix their BatchNorm batch statistics: two passes keep Eq. 6 literal.
        return F.cross_entropy(net(prepare(xb)), yb) + F.cross_entropy(net(prepare(ab)), yb)

    steps = math.ceil(len(x) / cfg.batch_size)
    return train_partial(model, plan, batches, loss_fn, cfg.loop(), steps_per_epoch=steps)


def run_readapt(
    model: nn.Module,
    plan: TrainPlan,
    train: Dataset,
    test: Dataset,
    cfg: ReadaptConfig,
    *,
    prepare: Prepare,
    device: torch.device | str = "cpu",
    repair: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    before: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The whole protocol on one model: attack, measure, repair in place, measure again.

    Args:
        model: repaired in place.
        plan: its trainable rows.
        train: split the repair set is drawn from.
        test: split for clean accuracy, RAA and PGD-20.
        cfg: settings.
        prepare: the model's normalisation.
        device: where to run.
        repair: (x, y, adv) to reuse (comparisons of several methods on the same adversarial samples).
        before: the "before" metrics to reuse (same model, same samples).

    Returns:
        The report: TPR, RA, RAA, PGD-20 and clean accuracy before/after, attack settings, timings.
    """
    t_all = time.perf_counter()
    model.to(device)
    if repair is None:
        repair = make_repair_set(model, train, cfg, prepare=prepare, device=device)
    x, y, adv = (t.to(device) for t in repair)
    xe, ye, clean_set = evaluation_sets(test, cfg, device=device)
    if before is None:
        before = measure(model, x, y, adv, xe, ye, clean_set, cfg, prepare=prepare, device=device)
    t = time.perf_counter()
    stats = readapt_(model, plan, x, y, adv, cfg, prepare=prepare)
    train_seconds = time.perf_counter() - t
    after = measure(model, x, y, adv, xe, ye, clean_set, cfg, prepare=prepare, device=device)
    return {
        "tpr": plan.tpr,
        "trainable_parameters": plan.trainable_parameters,
        "total_parameters": plan.total_parameters,
        "ra": after["ra"],
        "raa": after["raa"],
        "pgd20": after["pgd"],
        "clean_after": after["clean"],
        "ra_before": before["ra"],
        "raa_before": before["raa"],
        "pgd20_before": before["pgd"],
        "clean_before": before["clean"],
        "attack": cfg.attack.describe(),
        "reattack": cfg.reattack.describe(),
        "samples": {"repair": len(x), "reattack": len(xe), "clean": len(clean_set)},
        "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - t_all,
        "training": stats,
        "plan": plan.summary(),
        "config": cfg.to_dict(),
    }


def make_repair_set(
    model: nn.Module, train: Dataset, cfg: ReadaptConfig, *, prepare: Prepare, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, y, adv_x): the stratified repair sample and its adversarial examples against ``model``."""
    x, y = (t.to(device) for t in stratified_sample(train, cfg.samples, cfg.seed))
    return x, y, attack(model, x, y, cfg.attack, prepare=prepare, seed=cfg.seed)


def measure(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    adv: torch.Tensor,
    xe: torch.Tensor,
    ye: torch.Tensor,
    clean_set: Dataset,
    cfg: ReadaptConfig,
    *,
    prepare: Prepare,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """RA on the fixed adversarial repair set; fresh-attack (RAA) and PGD-k accuracy on held-out images; clean."""
    fresh = attack(model, xe, ye, cfg.attack, prepare=prepare, seed=cfg.seed + 11)
    strong = attack(model, xe, ye, cfg.reattack, prepare=prepare, seed=cfg.seed + 12)
    return {
        "ra": accuracy(model, adv, y, prepare=prepare),
        "raa": accuracy(model, fresh, ye, prepare=prepare),
        "pgd": accuracy(model, strong, ye, prepare=prepare),
        "clean": evaluate(model, clean_set, prepare=prepare, device=device, description="clean accuracy"),
    }


def evaluation_sets(
    test: Dataset, cfg: ReadaptConfig, *, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, Dataset]:
    """(x, y) of the held-out re-attack images and the clean-accuracy set, both seeded from ``cfg.seed``."""
    xe, ye = (t.to(device) for t in stratified_sample(test, cfg.eval_samples, cfg.seed + 1))
    clean: Dataset = test
    if cfg.clean_eval_samples is not None and cfg.clean_eval_samples < len(test):
        gen = torch.Generator().manual_seed(cfg.seed + 2)
        clean = Subset(test, sorted(torch.randperm(len(test), generator=gen)[: cfg.clean_eval_samples].tolist()))
    return xe, ye, clean
