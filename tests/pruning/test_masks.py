"""Prunable layers, existing masks, applying masks through training, making them permanent, reporting."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from edgeslice.pruning import (
    apply_masks_,
    compute_masks,
    current_masks,
    make_permanent_,
    prunable_weights,
    sparsity_report,
)

PRUNERS = ["erk", "global", "lamp", "uniform+"]


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // 2, 1)
        self.expand = nn.Conv2d(channels // 2, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.expand(torch.relu(self.reduce(x.mean((2, 3), keepdim=True)))))


def test_prunable_weights_covers_depthwise_se_and_classifier_only() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.Conv2d(8, 8, 3, groups=8),  # depthwise
        SqueezeExcite(8),
        nn.LayerNorm([8, 4, 4]),
        nn.Flatten(),
        nn.Linear(128, 10),
    )
    assert [name for name, _ in prunable_weights(model)] == ["0", "2", "3.reduce", "3.expand", "6"]
    masks = compute_masks(model, 0.5, "global")
    assert set(masks) == {"0", "2", "3.reduce", "3.expand", "6"}


@pytest.mark.parametrize("pruner", PRUNERS)
def test_existing_masks_stay_pruned(toy_net: nn.Module, pruner: str) -> None:
    first = compute_masks(toy_net, 0.5, "global")
    with torch.no_grad():  # make the already-pruned weights the largest ones, without applying the masks
        for name, module in prunable_weights(toy_net):
            module.weight[~first[name]] = 100.0
    second = compute_masks(toy_net, 0.7, pruner, masks=first)
    for name in first:
        assert not (second[name] & ~first[name]).any(), name
    assert sum(int(m.sum()) for m in second.values()) == round(0.3 * 4312)


def test_masks_default_to_the_ones_attached_to_the_model(toy_net: nn.Module) -> None:
    first = compute_masks(toy_net, 0.5, "global")
    apply_masks_(toy_net, first)
    with torch.no_grad():  # an optimizer drifting the hidden weight_orig must not revive pruned weights
        for name, module in prunable_weights(toy_net):
            module.weight_orig[~first[name]] = 100.0
    assert all(torch.equal(current_masks(toy_net)[name], first[name]) for name in first)
    second = compute_masks(toy_net, 0.7, "global")
    for name in first:
        assert not (second[name] & ~first[name]).any(), name


def test_masks_default_to_nonzero_weights_on_a_permanent_model(toy_net: nn.Module) -> None:
    first = compute_masks(toy_net, 0.6, "lamp")
    apply_masks_(toy_net, first)
    make_permanent_(toy_net)
    assert all(torch.equal(current_masks(toy_net)[name], first[name]) for name in first)
    with pytest.raises(ValueError, match="below the current sparsity 0.6000"):
        compute_masks(toy_net, 0.5, "lamp")


def test_compute_masks_validates_inputs(toy_net: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\]"):
        compute_masks(toy_net, 1.5, "global")
    masks = compute_masks(toy_net, 0.5, "global")
    with pytest.raises(ValueError, match="missing prunable layers"):
        compute_masks(toy_net, 0.6, "global", masks={"0": masks["0"]})
    with pytest.raises(ValueError, match="shape"):
        compute_masks(toy_net, 0.6, "global", masks={**masks, "0": masks["0"].reshape(-1)})
    with pytest.raises(ValueError, match="not prunable"):
        apply_masks_(toy_net, {"1": masks["0"]})


def test_apply_masks_survives_momentum_and_weight_decay(toy_net: nn.Module, toy_input: torch.Tensor) -> None:
    optimizer = torch.optim.SGD(toy_net.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)

    def step() -> None:
        optimizer.zero_grad()
        toy_net(toy_input).square().mean().backward()
        optimizer.step()

    for _ in range(3):  # dense steps leave momentum on the weights about to be pruned
        step()
    masks = compute_masks(toy_net, 0.6, "global")
    apply_masks_(toy_net, masks)
    after_apply = {name: m.weight.detach().clone() for name, m in prunable_weights(toy_net)}
    for name, module in prunable_weights(toy_net):
        assert not module.weight[~masks[name]].any()
        assert not module.weight_orig[~masks[name]].any()  # zeroed in place too, not only hidden by the mask
    for _ in range(5):
        step()
        for name, module in prunable_weights(toy_net):
            assert not module.weight[~masks[name]].any(), name  # holds even before the next forward
    toy_net(toy_input)
    for name, module in prunable_weights(toy_net):
        assert not module.weight[~masks[name]].any(), name
        assert not torch.equal(module.weight[masks[name]], after_apply[name][masks[name]]), "optimizer did not run"
    assert sparsity_report(toy_net)["total"]["n_nonzero"] == round(0.4 * 4312)


def test_apply_masks_twice_never_revives_weights(toy_net: nn.Module) -> None:
    first = compute_masks(toy_net, 0.5, "global")
    apply_masks_(toy_net, first)
    apply_masks_(toy_net, {name: torch.ones_like(m) for name, m in first.items()})
    assert sparsity_report(toy_net)["total"]["n_nonzero"] == round(0.5 * 4312)
    assert all(torch.equal(current_masks(toy_net)[name], first[name]) for name in first)


def test_make_permanent_leaves_plain_parameters(
    toy_net_factory: Callable[..., nn.Module], toy_input: torch.Tensor
) -> None:
    reference = toy_net_factory()
    model = toy_net_factory()
    keys = list(model.state_dict())
    masks = compute_masks(model, 0.7, "lamp")
    apply_masks_(model, masks)
    assert "0.weight_orig" in model.state_dict()
    expected = model(toy_input).detach()
    make_permanent_(model)

    assert list(model.state_dict()) == keys
    assert [name for name, _ in model.named_parameters()] == [name for name, _ in reference.named_parameters()]
    for name, module in prunable_weights(model):
        assert isinstance(module.weight, nn.Parameter)
        assert not module._forward_pre_hooks
        assert not hasattr(module, "weight_orig") and not hasattr(module, "weight_mask")
        assert not module.weight[~masks[name]].any()
        assert torch.equal(module.weight[masks[name]], reference.get_submodule(name).weight[masks[name]])
    torch.testing.assert_close(model(toy_input), expected, rtol=0, atol=0)
    model.load_state_dict(reference.state_dict())  # same layout as an unpruned model


def test_make_permanent_is_a_no_op_on_unmasked_models(toy_net_factory: Callable[..., nn.Module]) -> None:
    model = toy_net_factory()
    make_permanent_(model)
    reference = toy_net_factory()
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values(), strict=True)
    )


def test_sparsity_report_counts() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 1.0], [2.0, 0.0]]))
        model[0].bias.zero_()  # biases are not counted
        model[1].weight.copy_(torch.tensor([[3.0, 4.0]]))
    report = sparsity_report(model)
    assert report["layers"] == {
        "0": {"n_weights": 4, "n_nonzero": 2, "density": 0.5},
        "1": {"n_weights": 2, "n_nonzero": 2, "density": 1.0},
    }
    assert report["total"] == {"n_weights": 6, "n_nonzero": 4, "density": 4 / 6}
    apply_masks_(model, {"1": torch.tensor([[True, False]])})
    assert sparsity_report(model)["layers"]["1"]["n_nonzero"] == 1


def test_timm_mobilenet_every_pruner_end_to_end() -> None:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_050", num_classes=10)
    keys = list(model.state_dict())
    names = [name for name, _ in prunable_weights(model)]
    assert names[0] == "conv_stem" and names[-1] == "classifier"
    assert "blocks.0.0.conv_dw" in names and "blocks.0.0.se.conv_reduce" in names
    total = sum(m.weight.numel() for _, m in prunable_weights(model))
    for pruner in PRUNERS:
        masks = compute_masks(model, 0.8, pruner)
        assert sum(int(m.sum()) for m in masks.values()) == round(0.2 * total), pruner
    masks = compute_masks(model, 0.85, "uniform+")
    assert bool(masks["conv_stem"].all()) and masks["classifier"].float().mean() >= 0.2
    apply_masks_(model, masks)
    model.eval()(torch.randn(1, 3, 32, 32))
    make_permanent_(model)
    assert list(model.state_dict()) == keys
    assert sparsity_report(model)["total"]["n_nonzero"] == round(0.15 * total)
