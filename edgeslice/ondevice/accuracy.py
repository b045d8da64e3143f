"""Accuracy of one task's items in the two continual-learning settings (class- and task-incremental)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from ..torchutil import eval_mode
from ..train import iterate_batches


@torch.no_grad()
def task_accuracy(
    model: nn.Module,
    dataset: Dataset,
    task_labels: Sequence[int],
    *,
    seen: int,
    prepare=None,
    device: torch.device | str = "cpu",
    batch_size: int = 500,
) -> dict[str, float]:
    """Accuracy on one task's items in both continual-learning settings, in percent.

    Args:
        model: the model.
        dataset: items of the task (labels in the model's label space).
        task_labels: the task's labels.
        seen: classes seen so far (the first ``seen`` outputs).
        prepare: normalisation.
        device: where to run.
        batch_size: items per forward.

    Returns:
        ``class_il`` (argmax over all ``seen`` classes) and ``task_il`` (argmax within ``task_labels``).
    """
    labels = torch.as_tensor(list(task_labels), dtype=torch.int64, device=device)
    correct_c = correct_t = total = 0
    with eval_mode(model):
        for x, y in iterate_batches(dataset, batch_size):
            x, y = x.to(device), y.to(device)
            logits = model(prepare(x) if prepare is not None else x)[:, :seen]
            correct_c += int((logits.argmax(1) == y).sum())
            correct_t += int((labels[logits[:, labels].argmax(1)] == y).sum())
            total += len(y)
    return {"class_il": 100.0 * correct_c / max(total, 1), "task_il": 100.0 * correct_t / max(total, 1)}


__all__ = ["task_accuracy"]
