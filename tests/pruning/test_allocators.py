"""Layer-wise sparsity allocations: Global, LAMP, Uniform+, ERK, and the pruner registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeslice.pruning import (
    compute_masks,
    erk_scales,
    get_pruner,
    lamp_scores,
    list_pruners,
    prunable_weights,
    register_pruner,
)

N_TOY = 4312  # prunable weights of the toy net (216 + 1152 + 2304 + 640)


def two_linear_net(w_a: list[list[float]], w_b: list[list[float]]) -> nn.Sequential:
    a = nn.Linear(len(w_a[0]), len(w_a), bias=False)
    b = nn.Linear(len(w_b[0]), len(w_b), bias=False)
    with torch.no_grad():
        a.weight.copy_(torch.tensor(w_a))
        b.weight.copy_(torch.tensor(w_b))
    return nn.Sequential(a, b)


def masks_as_lists(masks: dict[str, torch.Tensor]) -> dict[str, list]:
    return {name: mask.tolist() for name, mask in masks.items()}


def n_kept(masks: dict[str, torch.Tensor]) -> int:
    return sum(int(m.sum()) for m in masks.values())


# Registry


def test_list_pruners_is_sorted_and_complete() -> None:
    assert list_pruners() == ["erk", "global", "lamp", "uniform+"]


def test_unknown_pruner_lists_valid_names(toy_net: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"'magnitude'.*erk, global, lamp, uniform\+"):
        get_pruner("magnitude")
    with pytest.raises(ValueError, match=r"erk, global, lamp, uniform\+"):
        compute_masks(toy_net, 0.5, "unif")


def test_register_pruner_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_pruner("lamp")(lambda weights, masks, n_keep: list(masks))


# Global


def test_global_threshold_hand_computed() -> None:
    model = two_linear_net([[0.1, -0.5], [0.3, 0.9]], [[-0.2, 0.7]])
    # Magnitudes 0.1 0.5 0.3 0.9 | 0.2 0.7: keeping 3 of 6 keeps 0.9, 0.7, 0.5.
    assert masks_as_lists(compute_masks(model, 0.5, "global")) == {
        "0": [[False, True], [False, True]],
        "1": [[False, True]],
    }
    # Keeping 5 of 6 drops only the smallest, 0.1, although it is in the layer with the largest weight.
    assert masks_as_lists(compute_masks(model, 1 / 6, "global")) == {
        "0": [[False, True], [True, True]],
        "1": [[True, True]],
    }


def test_global_ties_keep_the_earlier_weight() -> None:
    model = two_linear_net([[1.0, -1.0], [1.0, 1.0]], [[-1.0, 1.0]])
    masks = compute_masks(model, 0.5, "global")
    assert masks_as_lists(masks) == {"0": [[True, True], [True, False]], "1": [[False, False]]}
    assert masks_as_lists(compute_masks(model, 0.5, "global")) == masks_as_lists(masks)


# LAMP


def test_lamp_scores_hand_computed() -> None:
    expected = torch.tensor([1 / 30, 4 / 29, 9 / 25, 1.0], dtype=torch.float64)
    torch.testing.assert_close(lamp_scores(torch.tensor([1.0, 2.0, 3.0, 4.0])), expected)
    # Order and sign do not matter, shape is kept.
    scores = lamp_scores(torch.tensor([[-3.0, 4.0], [1.0, -2.0]]))
    torch.testing.assert_close(scores, expected[[2, 3, 0, 1]].reshape(2, 2))


def test_lamp_scores_ties_and_masks() -> None:
    # Equal magnitudes: the lower flat index sorts last, so it is the one scoring 1.
    torch.testing.assert_close(lamp_scores(torch.tensor([2.0, -2.0])), torch.tensor([1.0, 0.5], dtype=torch.float64))
    # Pruned weights leave every denominator and score 0: survivors 1, 3, 4 -> 1/26, 9/25, 16/16.
    scores = lamp_scores(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([True, False, True, True]))
    torch.testing.assert_close(scores, torch.tensor([1 / 26, 0.0, 9 / 25, 1.0], dtype=torch.float64))


def test_lamp_hand_computed_masks_differ_from_global() -> None:
    model = two_linear_net([[1.0, 2.0, 3.0, 4.0]], [[10.0, 20.0]])
    # LAMP scores: [1/30, 4/29, 9/25, 1] and [100/500, 1] -> keep the two 1s and 9/25.
    assert masks_as_lists(compute_masks(model, 0.5, "lamp")) == {
        "0": [[False, False, True, True]],
        "1": [[False, True]],
    }
    assert masks_as_lists(compute_masks(model, 0.5, "global")) == {
        "0": [[False, False, False, True]],
        "1": [[True, True]],
    }


def test_lamp_keeps_the_largest_weight_of_every_layer(toy_net: nn.Module) -> None:
    with torch.no_grad():
        toy_net[6].weight.mul_(1e-3)  # a classifier with tiny weights: global magnitude pruning wipes it out
    sparsity = 0.99
    global_masks = compute_masks(toy_net, sparsity, "global")
    assert int(global_masks["6"].sum()) == 0
    masks = compute_masks(toy_net, sparsity, "lamp")
    assert n_kept(masks) == round((1 - sparsity) * N_TOY)
    for name, module in prunable_weights(toy_net):
        assert bool(masks[name].reshape(-1)[module.weight.abs().argmax()]), name


# Uniform+


def uniform_plus_densities(model: nn.Module, sparsity: float) -> list[float]:
    masks = compute_masks(model, sparsity, "uniform+")
    assert n_kept(masks) == round((1 - sparsity) * N_TOY)
    return [masks[name].float().mean().item() for name, _ in prunable_weights(model)]


def test_uniform_plus_same_sparsity_everywhere_but_the_first_conv(toy_net: nn.Module) -> None:
    densities = uniform_plus_densities(toy_net, 0.5)
    assert densities[0] == 1.0
    # (2156 - 216) / (1152 + 2304 + 640): same density in every other layer, up to one weight of rounding.
    expected = (round(0.5 * N_TOY) - 216) / (N_TOY - 216)
    for density, numel in zip(densities[1:], [1152, 2304, 640], strict=True):
        assert abs(density - expected) <= 1 / numel
    assert densities[-1] > 0.2  # the classifier floor is not active here


def test_uniform_plus_classifier_keeps_twenty_percent(toy_net: nn.Module) -> None:
    densities = uniform_plus_densities(toy_net, 0.85)
    assert densities[0] == 1.0
    assert densities[-1] == pytest.approx(0.2)  # would be ~0.105 without the floor
    # The remaining 647 - 216 - 128 = 303 weights spread uniformly over the two middle convs.
    expected = 303 / (1152 + 2304)
    assert abs(densities[1] - expected) <= 1 / 1152
    assert abs(densities[2] - expected) <= 1 / 2304


def test_uniform_plus_classifier_floor_rounds_up() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 6), nn.ReLU(), nn.Linear(6, 2))  # 200+120+12
    masks = compute_masks(model, 0.9, "uniform+")
    assert n_kept(masks) == 33
    # 20% of 12 is 2.4: the classifier keeps 3 weights (density 0.25), never 2 (density 0.17 < 0.2).
    assert int(masks["4"].sum()) == 3


def test_uniform_plus_prunes_a_linear_first_layer() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 10))
    masks = compute_masks(model, 0.5, "uniform+")
    assert masks["0"].float().mean().item() == pytest.approx(0.5)
    assert masks["2"].float().mean().item() == pytest.approx(0.5)


def test_uniform_plus_impossible_target_raises(toy_net: nn.Module) -> None:
    # At best it keeps 216 (first conv) + 128 (20% of the classifier) = 344 weights, sparsity 0.9202.
    compute_masks(toy_net, 0.92, "uniform+")
    with pytest.raises(
        ValueError, match=r"uniform\+ cannot keep only 216 of 4312 weights.*at most sparsity 0\.9202"
    ) as info:
        compute_masks(toy_net, 0.95, "uniform+")
    assert "\n" not in str(info.value)


# ERK


def test_erk_scales_use_weight_dimensions() -> None:
    weights = [torch.zeros(8, 3, 3, 3), torch.zeros(16, 1, 3, 3), torch.zeros(10, 64)]
    assert erk_scales(weights) == [17.0, 23.0, 74.0]


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.95])
def test_erk_densities_follow_the_erk_scale(toy_net: nn.Module, sparsity: float) -> None:
    layers = prunable_weights(toy_net)
    masks = compute_masks(toy_net, sparsity, "erk")
    n_keep = round((1 - sparsity) * N_TOY)
    assert n_kept(masks) == n_keep
    kept = [int(masks[name].sum()) for name, _ in layers]
    numels = [m.weight.numel() for _, m in layers]
    scales = erk_scales([m.weight for _, m in layers])
    dense = [i for i in range(len(layers)) if kept[i] == numels[i]]
    sparse = [i for i in range(len(layers)) if i not in dense]
    assert sparse, "the test needs at least one non-dense layer"
    # Non-dense layers keep c * scale weights (density proportional to scale / numel), up to one weight of rounding.
    c = (n_keep - sum(numels[i] for i in dense)) / sum(scales[i] for i in sparse)
    for i in sparse:
        assert abs(kept[i] - c * scales[i]) < 1.0
    # A layer is dense only because c * scale would overflow it.
    for i in dense:
        assert c * scales[i] >= numels[i]
    assert all(k <= n for k, n in zip(kept, numels, strict=True))


def test_erk_makes_overflowing_layers_dense(toy_net: nn.Module) -> None:
    # ERK scale / numel: conv1 17/216, conv2 30/1152, conv3 38/2304, fc 74/640: at 50% sparsity conv1 and fc overflow.
    masks = compute_masks(toy_net, 0.5, "erk")
    assert [bool(masks[name].all()) for name, _ in prunable_weights(toy_net)] == [True, False, False, True]


# Shared behaviour


@pytest.mark.parametrize("pruner", ["erk", "global", "lamp", "uniform+"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.77])
def test_exact_kept_count_and_mask_format(toy_net: nn.Module, pruner: str, sparsity: float) -> None:
    masks = compute_masks(toy_net, sparsity, pruner)
    assert list(masks) == [name for name, _ in prunable_weights(toy_net)]
    for name, module in prunable_weights(toy_net):
        assert masks[name].dtype == torch.bool
        assert masks[name].shape == module.weight.shape
    assert n_kept(masks) == round((1 - sparsity) * N_TOY)


@pytest.mark.parametrize("pruner", ["erk", "global", "lamp", "uniform+"])
def test_magnitude_order_within_each_layer(toy_net: nn.Module, pruner: str) -> None:
    # Every allocation is magnitude pruning within a layer: no pruned weight is larger than a kept one.
    masks = compute_masks(toy_net, 0.7, pruner)
    for name, module in prunable_weights(toy_net):
        kept, pruned = module.weight[masks[name]].abs(), module.weight[~masks[name]].abs()
        if kept.numel() and pruned.numel():
            assert pruned.max() <= kept.min(), name


def test_round_matches_spec_for_awkward_fractions(toy_net: nn.Module) -> None:
    for sparsity in (0.1, 1 / 3, 0.999):
        assert n_kept(compute_masks(toy_net, sparsity, "global")) == round((1 - sparsity) * N_TOY)


def test_lamp_scores_of_an_all_zero_layer_are_zero() -> None:
    assert torch.equal(lamp_scores(torch.zeros(3)), torch.zeros(3, dtype=torch.float64))
