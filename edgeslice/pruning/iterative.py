"""Iterative magnitude pruning with fine-tuning and an accuracy budget.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from edgeslice.pruning import IterativePruneConfig, iterative_prune_
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    >>> config = IterativePruneConfig(pruner="global", prune_step=0.5, max_iterations=2, finetune_steps=0)
    >>> records = iterative_prune_(model, config, evaluate=lambda m: 90.0, finetune=lambda m, n: None,
    ...                            baseline_accuracy=90.0)
    >>> [round(r.sparsity, 2) for r in records]
    [0.5, 0.75]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .allocators import PrunerLimitError, get_pruner
from .masks import apply_masks_, compute_masks, current_masks, is_masked, make_permanent_, refresh_weight

#: ``IterativePruneConfig.pruner`` value meaning "do not prune".
NO_PRUNER = "none"


@dataclass(frozen=True)
class IterativePruneConfig:
    """Settings of :func:`iterative_prune_`.

    Attributes:
        pruner: Layer-wise allocation, one of :func:`~edgeslice.pruning.list_pruners`, or ``"none"``: no pruning
            (:func:`iterative_prune_` returns at once; lets a pipeline such as ``compress`` skip the step).
        prune_step: Fraction of the remaining prunable weights removed per iteration, in ``(0, 1)``.
        max_iterations: Upper bound on the number of prune + fine-tune iterations, ``>= 1``.
        max_acc_drop: Largest accepted drop below the baseline accuracy, in accuracy points, ``>= 0``.
        finetune_steps: Passed to the ``finetune`` callback after each pruning step, ``>= 0``.
    """

    VERSION: ClassVar[int] = 1

    pruner: str = "lamp"
    prune_step: float = 0.2
    max_iterations: int = 10
    max_acc_drop: float = 1.0
    finetune_steps: int = 200

    def __post_init__(self) -> None:
        if self.pruner != NO_PRUNER:
            try:
                get_pruner(self.pruner)
            except ValueError as e:
                raise ValueError(f"{e} (or {NO_PRUNER!r} to skip pruning)") from None
        if not _is_real(self.prune_step) or not 0.0 < self.prune_step < 1.0:
            raise ValueError(f"prune_step must be a number in (0, 1), got {self.prune_step!r}")
        if not _is_int(self.max_iterations) or self.max_iterations < 1:
            raise ValueError(f"max_iterations must be an integer >= 1, got {self.max_iterations!r}")
        if not _is_real(self.max_acc_drop) or not 0.0 <= self.max_acc_drop < math.inf:
            raise ValueError(f"max_acc_drop must be a finite number >= 0, got {self.max_acc_drop!r}")
        if not _is_int(self.finetune_steps) or self.finetune_steps < 0:
            raise ValueError(f"finetune_steps must be an integer >= 0, got {self.finetune_steps!r}")

    @property
    def enabled(self) -> bool:
        """False for ``pruner="none"``."""
        return self.pruner != NO_PRUNER

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON/TOML-friendly dict, including ``"version"``."""
        return {"version": self.VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IterativePruneConfig:
        """Builds a config from :meth:`to_dict` output or a recipe section.

        Args:
            data: Field values; ``"version"`` may be omitted and otherwise must equal :attr:`VERSION`.

        Returns:
            The validated config; missing fields take their defaults.

        Raises:
            ValueError: On an unknown key, an unsupported version or an invalid value.
        """
        values = dict(data)
        version = values.pop("version", cls.VERSION)
        if version != cls.VERSION:
            raise ValueError(f"unsupported IterativePruneConfig version {version!r}; expected {cls.VERSION}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"unknown IterativePruneConfig keys {unknown}; valid keys: {', '.join(names)}")
        return cls(**values)


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class IterationRecord:
    """Outcome of one iteration of :func:`iterative_prune_`.

    Attributes:
        iteration: 1-based iteration number.
        sparsity: Fraction of the prunable weights that are pruned after this iteration.
        n_nonzero_params: Non-zero parameters of the whole model (biases and normalisation included).
        accuracy: What ``evaluate`` returned after fine-tuning, in percent.
        kept: False for the iteration that exceeded the accuracy budget and was rolled back.
    """

    iteration: int
    sparsity: float
    n_nonzero_params: int
    accuracy: float
    kept: bool


def iterative_prune_(
    model: nn.Module,
    config: IterativePruneConfig,
    *,
    evaluate: Callable[[nn.Module], float],
    finetune: Callable[[nn.Module, int], None],
    baseline_accuracy: float,
    on_iteration: Callable[[IterationRecord], None] | None = None,
    start_iteration: int = 1,
) -> list[IterationRecord]:
    """Prunes, fine-tunes and evaluates in a loop until the accuracy budget or the iteration limit is hit.

    Each iteration raises the sparsity ``s`` of the prunable weights to ``1 - (1 - s) * (1 - prune_step)`` with
    :func:`~edgeslice.pruning.compute_masks` (already-pruned weights stay pruned), applies the masks, calls
    ``finetune(model, finetune_steps)`` and ``acc = evaluate(model)``. If ``baseline_accuracy - acc`` exceeds
    ``max_acc_drop`` (or ``acc`` is not finite), the iteration is rejected: the whole state dict (weights, masks,
    normalisation statistics) of the last kept iteration, or of the start, is restored and the loop stops. The masks
    are finally made permanent with :func:`~edgeslice.pruning.make_permanent_`.

    Masks the model already carries (see :func:`~edgeslice.pruning.current_masks`) are the starting point. One copy
    of the state dict is held in memory for the rollback. If a callback raises, the model is left masked
    (reparametrized) as it was at that moment. If the pruner cannot reach the next target
    (:class:`~edgeslice.pruning.PrunerLimitError`, e.g. Uniform+'s layer rules), the loop stops there with the last
    kept state, like at the iteration limit. With ``config.pruner == "none"`` nothing happens and ``[]`` is returned.

    Args:
        model: The model to prune in place.
        config: Pruner, step, limits.
        evaluate: Returns the model's accuracy in percent.
        finetune: Trains the model for the given number of steps; masked weights stay zero while it does.
        baseline_accuracy: Accuracy of the unpruned model, in percent.
        on_iteration: Called with each record, after a rejected iteration has been rolled back.
        start_iteration: Number of the first iteration (records count from it); ``config.max_iterations`` is the
            number of iterations this call may run. Used to resume an interrupted run.

    Returns:
        One record per iteration run, the rejected one included (``kept=False``).

    Raises:
        ValueError: If the model has no prunable layers.
    """
    if not config.enabled:
        return []
    masks = current_masks(model)
    total = sum(m.numel() for m in masks.values())
    if total == 0:
        raise ValueError("model has no prunable Conv2d/Linear weights")
    # Reparametrize every layer up front so that the state-dict layout is the same for every snapshot.
    apply_masks_(model, masks)
    good_state = _snapshot(model)
    records = []
    for iteration in range(start_iteration, start_iteration + config.max_iterations):
        n_alive = sum(int(m.sum()) for m in masks.values())
        target = 1.0 - (n_alive / total) * (1.0 - config.prune_step)
        try:
            masks = compute_masks(model, target, config.pruner, masks=masks)
        except PrunerLimitError:
            break
        apply_masks_(model, masks)
        finetune(model, config.finetune_steps)
        accuracy = float(evaluate(model))
        kept = math.isfinite(accuracy) and baseline_accuracy - accuracy <= config.max_acc_drop
        record = IterationRecord(
            iteration=iteration,
            sparsity=1.0 - sum(int(m.sum()) for m in masks.values()) / total,
            n_nonzero_params=_count_nonzero_params(model),
            accuracy=accuracy,
            kept=kept,
        )
        records.append(record)
        if kept:
            good_state = _snapshot(model)
        else:
            _restore(model, good_state)
        if on_iteration is not None:
            on_iteration(record)
        if not kept:
            break
    make_permanent_(model)
    return records


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def _restore(model: nn.Module, state: dict[str, Tensor]) -> None:
    model.load_state_dict(state)
    for module in model.modules():
        if is_masked(module):
            refresh_weight(module)


def _count_nonzero_params(model: nn.Module) -> int:
    seen: set[int] = set()
    count = 0
    for module in model.modules():
        masked = is_masked(module)
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            with torch.no_grad():
                value = param * module.weight_mask if masked and name == "weight_orig" else param
                count += int(value.count_nonzero())
    return count
