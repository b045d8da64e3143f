"""The training loop for partial training under exact freezing, with the on-device cost measured.

One loop serves re-adaptation (train the critical channels, Eq. 6–7) and incremental development (train the
non-critical ones, Eq. 8–9): the caller gives the :class:`~edgeslice.ondevice.freeze.TrainPlan`, the batches and the
loss. Only torch (torch.distributed included) and the standard library are imported.

Under torchrun the loop trains DistributedDataParallel: every rank builds the same batch stream and takes the
batches at positions r, r+W, … (:func:`edgeslice.distributed.shard_batches`), gradients are averaged, and the
freezer restores the frozen rows on every rank after every step, so they stay bit-identical everywhere.
"""

from __future__ import annotations

import math
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .. import distributed
from .freeze import FROZEN_BN, ExactFreezer, TrainPlan

OPTIMIZERS = ("adamw", "sgd")
LOOP_VERSION = 1


@dataclass(frozen=True)
class LoopConfig:
    """Optimiser settings of a partial-training run.

    Attributes:
        epochs: passes over the batches (whole passes; the batch source is asked once per epoch).
        lr: peak learning rate (cosine decay to 0 over the run).
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay.
        optimizer: ``adamw`` or ``sgd`` (SGD uses Nesterov-free momentum 0.9).
        momentum: SGD momentum.
        frozen_bn: ``eval``: frozen channels' BatchNorm uses its running statistics while training, as at inference
            (see :mod:`.freeze`); ``batch``: plain train-mode BatchNorm.
    """

    epochs: int = 3
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    momentum: float = 0.9
    frozen_bn: str = "eval"
    version: int = LOOP_VERSION

    @classmethod
    def of(cls, settings: Any) -> LoopConfig:
        """The loop part of a larger config (re-adaptation, increment): its epochs, lr, weight decay, optimizer and
        frozen-BN mode."""
        return cls(
            epochs=settings.epochs,
            lr=settings.lr,
            weight_decay=settings.weight_decay,
            optimizer=settings.optimizer,
            frozen_bn=settings.frozen_bn,
        )

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.frozen_bn not in FROZEN_BN:
            raise ValueError(f"unknown frozen_bn {self.frozen_bn!r}; valid: {', '.join(FROZEN_BN)}")
        if not self.lr > 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError("lr must be > 0, weight_decay >= 0, momentum in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoopConfig:
        return cls(**d)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _optimizer(params: list[nn.Parameter], cfg: LoopConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _state_bytes(opt: torch.optim.Optimizer) -> int:
    return int(
        sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor))
    )


def train_partial(
    model: nn.Module,
    plan: TrainPlan,
    batches: Callable[[int], Iterable[Any]],
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    cfg: LoopConfig,
    *,
    steps_per_epoch: int,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train the rows ``plan`` allows, keeping every other row bit-identical.

    Args:
        model: trained in place (left in eval mode).
        plan: which rows may change.
        batches: ``epoch -> iterable of batches``, called at the start of each epoch (so a batch source may depend
            on the model as trained so far); each batch is passed to ``loss_fn`` unchanged.
        loss_fn: ``(model, batch) -> scalar loss``; called with the model in train mode (under torchrun, with its
            DistributedDataParallel wrapper).
        cfg: optimiser settings.
        steps_per_epoch: batches per epoch, for the learning-rate schedule (all of them: under torchrun each rank
            takes ``ceil(steps_per_epoch / world_size)``).
        on_step: ``(step, loss)`` callback (progress bars).

    Returns:
        ``steps``, ``final_loss``, ``train_seconds``, ``step_ms_median``, ``step_ms_p90``, ``peak_rss_bytes`` (the
        process's peak resident memory, runtime included; ``peak_rss_before_bytes`` is the peak before training),
        ``cuda_peak_bytes``, ``optimizer_state_bytes``, ``max_drift`` (0.0: the frozen rows are bit-identical) and
        the plan summary.
    """
    step_ms: list[float] = []
    losses: list[float] = []
    t_all = time.perf_counter()
    rss_before = peak_rss_bytes()
    with ExactFreezer(model, plan, frozen_bn=cfg.frozen_bn) as freezer:
        params = freezer.trainable_parameters()
        if not params:
            raise ValueError("the plan trains nothing: every parameter is frozen")
        net = distributed.wrap_ddp(model)  # after the freezer: DDP only registers the parameters that train
        opt = _optimizer(params, cfg)
        total = max(1, distributed.sharded_steps(steps_per_epoch) * cfg.epochs)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total))
        )
        step = 0
        for epoch in range(cfg.epochs):
            model.train()
            for batch in distributed.shard_batches(batches(epoch)):
                t = time.perf_counter()
                loss = loss_fn(net, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                freezer.restore_()
                step_ms.append((time.perf_counter() - t) * 1e3)
                losses.append(float(loss.detach()))
                step += 1
                if on_step is not None:
                    on_step(step, losses[-1])
        distributed.broadcast_module_(model)  # BN statistics of the trainable channels: rank 0's everywhere
        model.eval()
        drift = freezer.max_drift()
        state_bytes = _state_bytes(opt)
    step_ms.sort()
    return {
        "steps": step,
        "final_loss": statistics.fmean(losses[-10:]) if losses else float("nan"),
        "train_seconds": time.perf_counter() - t_all,
        "step_ms_median": statistics.median(step_ms) if step_ms else 0.0,
        "step_ms_p90": step_ms[int(0.9 * (len(step_ms) - 1))] if step_ms else 0.0,
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_rss_before_bytes": rss_before,
        "cuda_peak_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
        "optimizer_state_bytes": state_bytes,
        "max_drift": drift,
        "loop": cfg.to_dict(),
        "plan": plan.summary(),
    }
