"""The pruning pipeline: :func:`iterative_prune_` with real fine-tuning and evaluation, resumable, reported with the
paper's Table 5 columns (CR, NI, MA).

Compression rate (CR) is always relative to the *original dense* model: a channel-restructured model has already lost
``dense_params - params`` parameters, and unstructured pruning then zeroes weights inside the survivors, so
``CR = 1 - (params - pruned_weights) / dense_params``, where ``pruned_weights`` counts the masked entries of the
prunable Conv2d/Linear weights. Accuracy is measured on the bundle's test split, which (as in the paper) also decides
when to stop.

Example:
    >>> from edgeslice.pruning import IterativePruneConfig, prune_pipeline_
    >>> report = prune_pipeline_(model, meta, bundle, IterativePruneConfig(pruner="lamp", max_iterations=3),
    ...                          device=torch.device("cpu"), dense_params=dense_count, baseline_accuracy=90.1)
    >>> report.compression_rate, report.iterations, report.accuracy
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ._state import load_state, restore_masked_, save_state
from .iterative import IterationRecord, IterativePruneConfig, iterative_prune_
from .masks import current_masks, make_permanent_

if TYPE_CHECKING:
    from ..data import DataBundle
    from ..models import ModelMeta

REPORT_VERSION = 1


@dataclass
class PruneReport:
    """Outcome of :func:`prune_pipeline_` (JSON-friendly through :meth:`to_dict`).

    Attributes:
        config: The :class:`IterativePruneConfig` as a dict.
        dense_params: Parameters of the original dense model (the CR denominator).
        params: Parameters of the model that was pruned (fewer than ``dense_params`` after channel restructuring).
        baseline_accuracy: Dense accuracy the ``max_acc_drop`` budget is measured against, in percent.
        start: ``accuracy``, ``compression_rate``, ``nonzero_params``, ``prunable_sparsity`` before pruning.
        history: One entry per iteration run (the rejected one included): ``iteration``, ``prunable_sparsity``,
            ``nonzero_params``, ``compression_rate``, ``accuracy``, ``kept``, ``seconds``.
        stop_reason: ``accuracy`` (the budget was exceeded), ``max_iterations``, ``pruner_limit`` (the allocation
            cannot go further) or ``disabled`` (``pruner="none"``).
        accuracy: Test accuracy of the final model (MA), in percent.
        compression_rate: CR of the final model, in [0, 1].
        nonzero_params: Non-zero parameters of the final model.
        prunable_sparsity: Share of the prunable weights that are zero in the final model.
        wall_s: Wall time of the run in seconds (all sessions of a resumed run together).
        resumed_from: Iterations already done when this process took over (0 = fresh start).
        onnx: Filled by :func:`~edgeslice.pipeline.prune.export_pruned`: sizes, latency, parity.
        notes: Anything a reader of the numbers must know (e.g. an unknown dense count).
    """

    config: dict[str, Any]
    dense_params: int
    params: int
    baseline_accuracy: float
    start: dict[str, Any]
    history: list[dict[str, Any]]
    stop_reason: str
    accuracy: float
    compression_rate: float
    nonzero_params: int
    prunable_sparsity: float
    wall_s: float
    resumed_from: int = 0
    onnx: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    version: int = REPORT_VERSION

    @property
    def iterations(self) -> int:
        """NI: iterations run, the rejected last one included (each cost a prune + fine-tune + evaluation)."""
        return len(self.history)

    @property
    def iterations_kept(self) -> int:
        """Iterations whose result is in the final model."""
        return sum(1 for h in self.history if h["kept"])

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "iterations": self.iterations, "iterations_kept": self.iterations_kept}


def pruned_weight_count(model: nn.Module) -> tuple[int, int]:
    """(prunable weights, pruned ones) of a masked or permanently pruned model."""
    masks = current_masks(model)
    total = sum(m.numel() for m in masks.values())
    return total, total - sum(int(m.sum()) for m in masks.values())


def compression_rate(params: int, pruned_weights: int, dense_params: int) -> float:
    """``1 - (params - pruned_weights) / dense_params``: removed channels and zeroed weights, vs the dense model."""
    return 1.0 - (params - pruned_weights) / dense_params


def resolve_dense_params(meta: ModelMeta, params: int, explicit: int | None = None) -> tuple[int, str]:
    """The parameter count of the dense model a checkpoint came from, and where it was found.

    In order: ``explicit``; ``meta.info["dense_params"]`` (written by :func:`~edgeslice.pipeline.prune.export_pruned`);
    ``meta.info["params_before"]``; the dense checkpoint named by ``meta.info["baseline"]`` (``compress`` records its
    path) if it still loads; ``params`` itself when the checkpoint is not restructured (it is the dense model).
    Otherwise ``params`` too, and the source says that CR is then relative to this checkpoint.

    Args:
        meta: The checkpoint's meta.
        params: Its own parameter count.
        explicit: A count given by the user.

    Returns:
        ``(count, source)``, ``source`` a short phrase for the report.
    """
    from ..errors import ModelError
    from ..models import count_parameters, load_checkpoint

    if explicit is not None:
        return int(explicit), "given"
    for key in ("dense_params", "params_before"):
        value = meta.info.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= params:
            return value, f"checkpoint info[{key!r}]"
    baseline = meta.info.get("baseline")
    if meta.restructured and isinstance(baseline, str) and baseline:
        try:
            dense, _ = load_checkpoint(baseline, expect_model=meta.timm_name)
            return count_parameters(dense), f"dense baseline {baseline}"
        except ModelError:
            pass
    if not meta.restructured:
        return params, "the checkpoint (dense)"
    return params, "unknown: CR is relative to this restructured checkpoint, not to the dense model"


def prune_pipeline_(
    model: nn.Module,
    meta: ModelMeta,
    bundle: DataBundle,
    cfg: IterativePruneConfig,
    *,
    device: torch.device,
    dense_params: int,
    baseline_accuracy: float | None,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    state_dir: Path | None = None,
    resume: bool = False,
    on_iteration: Callable[[dict[str, Any]], None] | None = None,
) -> PruneReport:
    """Prunes ``model`` in place, iteratively, fine-tuning after each step, until the accuracy budget or a limit.

    Each iteration removes ``cfg.prune_step`` of the surviving prunable weights with ``cfg.pruner``, fine-tunes for
    ``cfg.finetune_steps`` steps of ``batch_size`` images (:func:`edgeslice.train.train_model`, AdamW, one-cycle to
    ``lr``, shuffling seed ``seed + iteration``) and measures test accuracy. The first iteration that drops more than
    ``cfg.max_acc_drop`` points below ``baseline_accuracy`` is rolled back and ends the run. The masks are made
    permanent at the end, so the model has plain weights (zeros included) and exports to ONNX as usual.

    With ``state_dir`` the masked model and the records are saved there after every iteration (safetensors + JSON,
    no pickle); ``resume=True`` continues from that state when it was made by the same settings, with the same result
    as an uninterrupted run. The caller removes ``state_dir`` once the artifacts are safely written
    (:func:`~edgeslice.pipeline.prune.export_pruned` takes care of it when given ``state_dir``).

    Args:
        model: Dense or channel-restructured model, possibly already sparse (its zeros stay zero).
        meta: Its checkpoint meta (normalisation).
        bundle: Data: ``train`` for fine-tuning, ``test`` for accuracy.
        cfg: Pruner, step, limits; ``pruner="none"`` only measures the model.
        device: Where to train and evaluate.
        dense_params: Parameter count of the original dense model, the CR denominator.
        baseline_accuracy: Dense accuracy the budget is measured against; None uses the model's own accuracy.
        batch_size: Fine-tuning batch size.
        lr: Peak fine-tuning learning rate. 1e-3 because pruning fine-tunes an already trained model: on the
            Fashion-MNIST MLP, 50 steps at 5e-3 cost 2 points of accuracy where 1e-3 cost 0.4 (measured).
        seed: Base seed of the fine-tuning shuffles.
        state_dir: Folder for the resume state; None keeps nothing.
        resume: Continue from ``state_dir`` when it holds a state.
        on_iteration: Called with each history entry as it is recorded.

    Returns:
        The report; ``report.onnx`` is empty until :func:`~edgeslice.pipeline.prune.export_pruned` fills it.

    Raises:
        ValueError: If ``dense_params`` is smaller than the model's parameter count.
        EdgesliceError: If ``resume`` finds a state made by other settings.
    """
    from ..models import count_parameters

    t0 = time.perf_counter()
    model.to(device)
    params = count_parameters(model)
    if dense_params < params:
        raise ValueError(f"dense_params ({dense_params:,}) is smaller than the model's parameter count ({params:,})")
    prepare, accuracy_of = _test_accuracy(meta, bundle, device)
    identity = _run_identity(model, cfg, bundle, dense_params, baseline_accuracy, batch_size=batch_size, lr=lr,
                             seed=seed)  # fmt: skip
    n_prunable, _ = pruned_weight_count(model)
    saved = load_state(state_dir, identity) if resume and state_dir is not None else None
    run = _Run.resume(model, saved) if saved is not None else _Run.fresh(model, params, dense_params, n_prunable,
                                                                           baseline_accuracy, accuracy_of)  # fmt: skip
    resumed_from = len(run.history)
    if not (run.finished or not cfg.enabled or len(run.history) >= cfg.max_iterations):
        steps = _Steps(run, model, bundle, cfg, identity, params, dense_params, n_prunable, t0,
                       batch_size=batch_size, lr=lr, seed=seed, prepare=prepare, device=device,
                       state_dir=state_dir, on_iteration=on_iteration)  # fmt: skip
        _prune_remaining_(model, cfg, run, steps, accuracy_of)
    make_permanent_(model)
    return _report(
        model, cfg, run, params, dense_params, n_prunable, resumed_from, run.prior_wall + time.perf_counter() - t0
    )


def _test_accuracy(
    meta: ModelMeta, bundle: DataBundle, device: torch.device
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[nn.Module, str], float]]:
    """The input normalisation of ``meta`` and a ``(model, description) -> test accuracy`` function."""
    from ..data import normalize
    from ..train import evaluate

    mean, std = tuple(meta.mean), tuple(meta.std)

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return normalize(x, mean, std)

    def accuracy_of(m: nn.Module, what: str) -> float:
        return evaluate(m, bundle.test, prepare=prepare, device=device, description=what)

    return prepare, accuracy_of


def _run_identity(
    model: nn.Module,
    cfg: IterativePruneConfig,
    bundle: DataBundle,
    dense_params: int,
    baseline_accuracy: float | None,
    *,
    batch_size: int,
    lr: float,
    seed: int,
) -> dict[str, Any]:
    """The settings a saved state must match to be resumed (model fingerprint, config, data, training)."""
    from ..models import fingerprint

    return {
        "config": cfg.to_dict(),
        "source_fingerprint": fingerprint(model),
        "data": bundle.describe(),
        "dense_params": dense_params,
        "baseline_accuracy": baseline_accuracy,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
    }


def _prune_remaining_(
    model: nn.Module,
    cfg: IterativePruneConfig,
    run: _Run,
    steps: _Steps,
    accuracy_of: Callable[[nn.Module, str], float],
) -> None:
    """Runs the iterations ``run`` has not done yet, numbered on from its history."""
    iterative_prune_(
        model,
        replace(cfg, max_iterations=cfg.max_iterations - len(run.history)),
        evaluate=lambda m: accuracy_of(m, f"accuracy {len(run.history) + 1}"),
        finetune=steps.finetune,
        baseline_accuracy=run.baseline,
        on_iteration=steps.record,
        start_iteration=len(run.history) + 1,
    )


@dataclass
class _Run:
    """Where an iterative pruning run stands: its start point, the iterations so far, the budget's reference."""

    start: dict[str, Any]
    history: list[dict[str, Any]]
    baseline: float
    finished: bool
    prior_wall: float

    @classmethod
    def resume(cls, model: nn.Module, saved: tuple[dict[str, Any], dict[str, torch.Tensor]]) -> _Run:
        progress, tensors = saved
        restore_masked_(model, tensors)
        return cls(
            progress["start"], progress["history"], progress["baseline_accuracy"], progress["finished"],
            progress["wall_s"],
        )  # fmt: skip

    @classmethod
    def fresh(
        cls,
        model: nn.Module,
        params: int,
        dense_params: int,
        n_prunable: int,
        baseline_accuracy: float | None,
        accuracy_of: Callable[[nn.Module, str], float],
    ) -> _Run:
        from ..models import count_parameters

        _, pruned = pruned_weight_count(model)
        acc = accuracy_of(model, "accuracy before pruning")
        start = {
            "accuracy": acc,
            "compression_rate": compression_rate(params, pruned, dense_params),
            "nonzero_params": count_parameters(model, nonzero=True),
            "prunable_sparsity": pruned / n_prunable if n_prunable else 0.0,
        }
        return cls(start, [], acc if baseline_accuracy is None else baseline_accuracy, False, 0.0)


class _Steps:
    """The fine-tune and record callbacks of :func:`~edgeslice.pruning.iterative_prune_` for one run."""

    def __init__(self, run: _Run, model: nn.Module, bundle: Any, cfg: IterativePruneConfig, identity: dict[str, Any],
                 params: int, dense_params: int, n_prunable: int, t0: float, **opts: Any) -> None:  # fmt: skip
        self.run, self.model, self.bundle, self.cfg, self.identity = run, model, bundle, cfg, identity
        self.params, self.dense_params, self.n_prunable, self.t0 = params, dense_params, n_prunable, t0
        self.opts = opts
        self.last = time.perf_counter()

    def finetune(self, m: nn.Module, steps: int) -> None:
        from ..train import TrainOptions, train_model

        if steps <= 0:
            return
        o = self.opts
        iteration = len(self.run.history) + 1
        # train_model counts in epochs: ceil(epochs * steps_per_epoch) must come out as exactly `steps`.
        steps_per_epoch = math.ceil(len(self.bundle.train) / o["batch_size"])
        epochs = (steps - 0.5) / steps_per_epoch
        options = TrainOptions(epochs=epochs, batch_size=o["batch_size"], lr=o["lr"], seed=o["seed"] + iteration)
        train_model(m, self.bundle.train, options, prepare=o["prepare"], device=o["device"],
                    description=f"fine-tune {iteration}")  # fmt: skip

    def record(self, rec: IterationRecord) -> None:
        run, o = self.run, self.opts
        now = time.perf_counter()
        pruned = round(rec.sparsity * self.n_prunable)
        entry = {
            "iteration": rec.iteration,
            "prunable_sparsity": rec.sparsity,
            "nonzero_params": rec.n_nonzero_params,
            "compression_rate": compression_rate(self.params, pruned, self.dense_params),
            "accuracy": rec.accuracy,
            "kept": rec.kept,
            "seconds": round(now - self.last, 3),
        }
        self.last = now
        run.history.append(entry)
        if o["state_dir"] is not None:
            done = not rec.kept or len(run.history) >= self.cfg.max_iterations
            wall = run.prior_wall + now - self.t0
            progress = _progress(run.start, run.history, run.baseline, done, wall)
            save_state(o["state_dir"], identity=self.identity, progress=progress, model=self.model)
        if o["on_iteration"] is not None:
            o["on_iteration"](entry)


def _report(
    model: nn.Module,
    cfg: IterativePruneConfig,
    run: _Run,
    params: int,
    dense_params: int,
    n_prunable: int,
    resumed_from: int,
    wall: float,
) -> PruneReport:
    """The :class:`PruneReport` of a finished run (masks already made permanent)."""
    from ..models import count_parameters

    history, start, baseline = run.history, run.start, run.baseline
    kept = [h for h in history if h["kept"]]
    final = kept[-1] if kept else start
    _, pruned = pruned_weight_count(model)
    if not cfg.enabled:
        stop = "disabled"
    elif history and not history[-1]["kept"]:
        stop = "accuracy"
    elif len(history) >= cfg.max_iterations:
        stop = "max_iterations"
    else:
        stop = "pruner_limit"
    notes = []
    if start["accuracy"] < baseline - cfg.max_acc_drop:
        notes.append(
            f"the model started {baseline - start['accuracy']:.2f} points below the baseline, beyond the "
            f"{cfg.max_acc_drop:g}-point budget: an iteration is kept only if fine-tuning recovers"
        )
    return PruneReport(
        config=cfg.to_dict(),
        dense_params=dense_params,
        params=params,
        baseline_accuracy=baseline,
        start=start,
        history=history,
        stop_reason=stop,
        accuracy=final["accuracy"],
        compression_rate=compression_rate(params, pruned, dense_params),
        nonzero_params=count_parameters(model, nonzero=True),
        prunable_sparsity=pruned / n_prunable if n_prunable else 0.0,
        wall_s=round(wall, 2),
        resumed_from=resumed_from,
        notes=notes,
    )


def _progress(
    start: dict[str, Any], history: list[dict[str, Any]], baseline: float, finished: bool, wall_s: float
) -> dict[str, Any]:
    return {
        "start": start,
        "history": history,
        "baseline_accuracy": baseline,
        "finished": finished,
        "wall_s": round(wall_s, 3),
    }


__all__ = ["PruneReport", "compression_rate", "prune_pipeline_", "pruned_weight_count", "resolve_dense_params"]
