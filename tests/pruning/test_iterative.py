"""Iterative pruning: config, accuracy budget, rollback, iteration limit."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch
from torch import nn

from edgeslice.pruning import (
    IterationRecord,
    IterativePruneConfig,
    iterative_prune_,
    prunable_weights,
    sparsity_report,
)

N_TOY = 4312


# Config


def test_config_round_trip() -> None:
    config = IterativePruneConfig(pruner="erk", prune_step=0.3, max_iterations=4, max_acc_drop=0.5, finetune_steps=7)
    data = config.to_dict()
    assert data == {
        "version": 1,
        "pruner": "erk",
        "prune_step": 0.3,
        "max_iterations": 4,
        "max_acc_drop": 0.5,
        "finetune_steps": 7,
    }
    assert IterativePruneConfig.from_dict(data) == config
    assert IterativePruneConfig.from_dict({}) == IterativePruneConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.prune_step = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"pruner": "magnitude"}, r"valid names: erk, global, lamp, uniform\+"),
        ({"prune_step": 0.0}, "prune_step"),
        ({"prune_step": 1.0}, "prune_step"),
        ({"max_iterations": 0}, "max_iterations"),
        ({"max_iterations": 2.5}, "max_iterations"),
        ({"max_acc_drop": -0.1}, "max_acc_drop"),
        ({"max_acc_drop": float("nan")}, "max_acc_drop"),
        ({"finetune_steps": -1}, "finetune_steps"),
        ({"finetune_steps": True}, "finetune_steps"),
    ],
)
def test_config_rejects_invalid_values(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IterativePruneConfig(**changes)


def test_config_from_dict_rejects_unknown_keys_and_versions() -> None:
    with pytest.raises(ValueError, match="unknown IterativePruneConfig keys"):
        IterativePruneConfig.from_dict({"pruner": "lamp", "step": 0.2})
    with pytest.raises(ValueError, match="version"):
        IterativePruneConfig.from_dict({"version": 2})


# Loop


class Script:
    """Stub callbacks: scripted accuracies; fine-tuning that perturbs every parameter, masked ones strongly."""

    def __init__(self, accuracies: list[float]) -> None:
        self.accuracies = list(accuracies)
        self.states: list[dict[str, torch.Tensor]] = []  # state dict seen by each evaluate call
        self.finetune_calls: list[int] = []
        self.generator = torch.Generator().manual_seed(1)

    def finetune(self, model: nn.Module, steps: int) -> None:
        self.finetune_calls.append(steps)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.01 * torch.randn(param.shape, generator=self.generator))
            for _, module in prunable_weights(model):  # a misbehaving optimizer drifting pruned weights
                module.weight_orig.add_(10.0 * (1 - module.weight_mask))

    def evaluate(self, model: nn.Module) -> float:
        self.states.append({key: value.detach().clone() for key, value in model.state_dict().items()})
        return self.accuracies.pop(0)


def effective_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A reparametrized state dict as plain weights: weight = weight_orig * weight_mask."""
    plain = {}
    for key, value in state.items():
        if key.endswith(".weight_orig"):
            plain[key.removesuffix("_orig")] = value * state[key.removesuffix("_orig") + "_mask"]
        elif not key.endswith(".weight_mask"):
            plain[key] = value
    return plain


def nonzero_patterns(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value != 0 for key, value in effective_state(state).items() if key.endswith(".weight")}


def test_stops_at_first_excessive_drop_and_restores_last_good_state(toy_net: nn.Module) -> None:
    keys = list(toy_net.state_dict())
    script = Script([99.0, 98.6, 97.0, 99.0])
    seen: list[IterationRecord] = []
    config = IterativePruneConfig(pruner="lamp", prune_step=0.2, max_iterations=10, max_acc_drop=1.0, finetune_steps=3)
    records = iterative_prune_(
        toy_net,
        config,
        evaluate=script.evaluate,
        finetune=script.finetune,
        baseline_accuracy=99.5,
        on_iteration=seen.append,
    )
    assert [r.kept for r in records] == [True, True, False]
    assert [r.iteration for r in records] == [1, 2, 3]
    assert [r.accuracy for r in records] == [99.0, 98.6, 97.0]
    assert seen == records
    assert script.finetune_calls == [3, 3, 3]
    # 4312 -> 3450 -> 2760 -> 2208 surviving weights.
    assert [r.sparsity for r in records] == pytest.approx([1 - 3450 / N_TOY, 1 - 2760 / N_TOY, 1 - 2208 / N_TOY])

    # Bit-identical to what the second (last kept) evaluation saw, and made permanent.
    final = toy_net.state_dict()
    expected = effective_state(script.states[1])
    assert list(final) == keys
    for key in expected:
        assert torch.equal(final[key], expected[key]), key
    assert not any(hasattr(m, "weight_mask") for _, m in prunable_weights(toy_net))
    assert sparsity_report(toy_net)["total"]["n_nonzero"] == 2760
    assert records[1].n_nonzero_params == sum(int(p.count_nonzero()) for p in toy_net.parameters())


def test_pruned_weights_stay_pruned_across_iterations(toy_net: nn.Module) -> None:
    script = Script([90.0] * 4)
    config = IterativePruneConfig(pruner="global", prune_step=0.3, max_iterations=4, finetune_steps=1)
    iterative_prune_(toy_net, config, evaluate=script.evaluate, finetune=script.finetune, baseline_accuracy=90.0)
    patterns = [nonzero_patterns(state) for state in script.states]
    for before, after in zip(patterns, patterns[1:], strict=False):
        for key in before:
            assert not (after[key] & ~before[key]).any(), key
            assert int(after[key].sum()) <= int(before[key].sum())
    assert sum(int(p.sum()) for p in patterns[-1].values()) < sum(int(p.sum()) for p in patterns[0].values())


def test_stops_at_max_iterations(toy_net: nn.Module) -> None:
    script = Script([90.0, 89.5, 89.0, 0.0])  # the 4th value must never be asked for
    config = IterativePruneConfig(pruner="erk", prune_step=0.2, max_iterations=3, max_acc_drop=1.0, finetune_steps=0)
    records = iterative_prune_(
        toy_net, config, evaluate=script.evaluate, finetune=script.finetune, baseline_accuracy=90.0
    )
    assert len(records) == 3 and all(r.kept for r in records)  # a drop of exactly max_acc_drop is accepted
    assert script.accuracies == [0.0]
    final = toy_net.state_dict()
    for key, value in effective_state(script.states[-1]).items():
        assert torch.equal(final[key], value), key
    assert sparsity_report(toy_net)["total"]["n_nonzero"] == 2208


def test_first_iteration_rejected_restores_the_original_model(toy_net_factory: Callable[..., nn.Module]) -> None:
    model = toy_net_factory()
    original = {key: value.clone() for key, value in model.state_dict().items()}
    script = Script([float("nan")])  # a non-finite accuracy counts as a failure
    records = iterative_prune_(
        model, IterativePruneConfig(), evaluate=script.evaluate, finetune=script.finetune, baseline_accuracy=90.0
    )
    assert [r.kept for r in records] == [False]
    assert list(model.state_dict()) == list(original)
    for key, value in original.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_model_without_prunable_layers_is_rejected() -> None:
    with pytest.raises(ValueError, match="no prunable"):
        iterative_prune_(
            nn.Sequential(nn.ReLU()),
            IterativePruneConfig(),
            evaluate=lambda m: 0.0,
            finetune=lambda m, n: None,
            baseline_accuracy=0.0,
        )


def test_pruner_none_is_accepted_and_does_nothing(toy_net: nn.Module) -> None:
    config = IterativePruneConfig(pruner="none")
    assert not config.enabled and IterativePruneConfig().enabled
    assert IterativePruneConfig.from_dict(config.to_dict()) == config
    before = {key: value.clone() for key, value in toy_net.state_dict().items()}
    script = Script([])
    assert (
        iterative_prune_(toy_net, config, evaluate=script.evaluate, finetune=script.finetune, baseline_accuracy=0) == []
    )
    assert script.finetune_calls == [] and list(toy_net.state_dict()) == list(before)
    with pytest.raises(ValueError, match="or 'none' to skip pruning"):
        IterativePruneConfig(pruner="nothing")


def test_start_iteration_numbers_the_records(toy_net: nn.Module) -> None:
    script = Script([90.0, 90.0])
    config = IterativePruneConfig(pruner="lamp", max_iterations=2, finetune_steps=0)
    records = iterative_prune_(
        toy_net, config, evaluate=script.evaluate, finetune=script.finetune, baseline_accuracy=90.0, start_iteration=4
    )
    assert [r.iteration for r in records] == [4, 5]


def test_stops_when_the_pruner_cannot_go_further(toy_net: nn.Module) -> None:
    # Uniform+ keeps the first conv (216 weights) and >= 20% of the classifier (128): at most sparsity 0.9202.
    script = Script([90.0] * 5)
    config = IterativePruneConfig(pruner="uniform+", prune_step=0.6, max_iterations=5, finetune_steps=0)
    records = iterative_prune_(
        toy_net, config, evaluate=script.evaluate, finetune=script.finetune, baseline_accuracy=90.0
    )
    # 4312 -> 1725 -> 690 kept; the next target (276 kept) is below the 344 Uniform+ must keep.
    assert [r.kept for r in records] == [True, True]
    assert sparsity_report(toy_net)["total"]["n_nonzero"] == 690
    assert not any(hasattr(m, "weight_mask") for _, m in prunable_weights(toy_net))
