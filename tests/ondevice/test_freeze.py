"""Exact freezing: frozen rows stay bit-identical under AdamW / SGD + momentum + weight decay and BatchNorm updates."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from edgeslice.ondevice import ExactFreezer, LoopConfig, channel_groups, make_plan, train_partial
from edgeslice.slicing import find_layers


def _random_masks(groups, seed=0, share=0.5):
    g = torch.Generator().manual_seed(seed)
    return {gr.layer: torch.rand(gr.channels, generator=g) < share for gr in groups}


def _setup(model, size=32, in_chans=1):
    example = torch.randn(2, in_chans, size, size)
    layers = find_layers(model, example)
    return layers, channel_groups(model, layers, example)


def test_groups_own_the_right_tensors(tiny_mnv3):
    layers, groups = _setup(tiny_mnv3)
    by_layer = {g.layer: g for g in groups}
    assert len(groups) == len(layers)
    # Conv → BN pairs found by tracing, whatever the names.
    assert by_layer["conv_stem"].norm == "bn1"
    assert by_layer["blocks.1.0.conv_dw"].norm == "blocks.1.0.bn2"  # depthwise owns its BN
    assert by_layer["blocks.1.0.conv_pwl"].norm == "blocks.1.0.bn3"
    assert by_layer["blocks.0.0.se.conv_reduce"].norm is None  # squeeze-excite convs: weight rows and bias only
    assert by_layer["blocks.0.0.se.conv_reduce"].tensor_names(tiny_mnv3) == [
        "blocks.0.0.se.conv_reduce.weight",
        "blocks.0.0.se.conv_reduce.bias",
    ]
    assert by_layer["conv_head"].norm is None
    plan = make_plan(tiny_mnv3, groups, {g.layer: torch.ones(g.channels, dtype=torch.bool) for g in groups})
    # Every parameter is some channel's or the classifier's: no orphans in timm MobileNetV3.
    assert plan.orphans == []
    assert plan.trainable_parameters == plan.total_parameters == sum(p.numel() for p in tiny_mnv3.parameters())


def test_mlp_groups_cover_every_parameter():
    import edgeslice.mlp  # noqa: F401 - registers edgeslice_mlp

    model = timm.create_model("edgeslice_mlp", num_classes=10, in_chans=1, img_size=8)
    _, groups = _setup(model, size=8)
    assert [(g.layer, g.norm) for g in groups] == [("fc1", None), ("fc2", None)]
    plan = make_plan(model, groups, {g.layer: torch.zeros(g.channels, dtype=torch.bool) for g in groups})
    assert plan.orphans == [] and plan.trainable_parameters == model.head.weight.numel() + model.head.bias.numel()


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_zero_drift_under_weight_decay_momentum_and_bn(tiny_mnv3, optimizer):
    model = tiny_mnv3
    _, groups = _setup(model)
    masks = _random_masks(groups)
    classifier = torch.arange(10) >= 6  # old rows 0..5 frozen, as in an increment
    plan = make_plan(model, groups, masks, classifier=classifier)
    before = _snapshot(model)
    g = torch.Generator().manual_seed(1)
    data = [(torch.rand(16, 1, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(4)]
    cfg = LoopConfig(epochs=2, lr=5e-2, weight_decay=0.1, optimizer=optimizer)
    stats = train_partial(
        model, plan, lambda e: data, lambda m, b: F.cross_entropy(m(b[0]), b[1]), cfg, steps_per_epoch=len(data)
    )
    assert stats["steps"] == 8 and stats["max_drift"] == 0.0
    after = model.state_dict()
    params = dict(model.named_parameters())
    moved_rows = trainable_rows = 0
    for name, mask in plan.masks.items():
        old, new = before[name], after[name]
        if old.dim() == 0:
            assert torch.equal(old, new), name  # num_batches_tracked of a fully frozen BN
            continue
        frozen, trainable = ~mask, mask
        assert torch.equal(old[frozen], new[frozen]), f"{name}: frozen rows moved"
        if trainable.any() and old.is_floating_point():
            moved = (old[trainable] != new[trainable]).reshape(int(trainable.sum()), -1).any(1)
            moved_rows, trainable_rows = moved_rows + int(moved.sum()), trainable_rows + len(moved)
            if name in params and old.dim() > 1:
                # Weight decay alone moves any non-zero weight row, even one whose gradient is zero.
                assert bool(moved.all()), f"{name}: a trainable row did not change"
    # Zero-initialised biases behind a dead activation may see no gradient; nearly everything else moved.
    assert moved_rows > 0.9 * trainable_rows


def test_gradient_masking_alone_is_not_enough(tiny_mnv3):
    """The premise of ExactFreezer: without restoring, weight decay and BN statistics move zero-gradient rows."""
    model = tiny_mnv3
    _, groups = _setup(model)
    plan = make_plan(model, groups, _random_masks(groups), classifier=False)
    before = _snapshot(model)
    freezer = ExactFreezer(model, plan)
    freezer.attach()
    opt = torch.optim.AdamW(freezer.trainable_parameters(), lr=1e-2, weight_decay=0.1)
    model.train()
    x, y = torch.rand(8, 1, 32, 32), torch.randint(0, 10, (8,))
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert freezer.max_drift() > 0  # masked gradients, yet frozen rows moved
    freezer.restore_()
    assert freezer.max_drift() == 0.0
    freezer.detach()
    mask = plan.masks["blocks.1.0.bn2.running_mean"]
    assert torch.equal(before["blocks.1.0.bn2.running_mean"][~mask], model.blocks[1][0].bn2.running_mean[~mask])
    assert all(p.requires_grad for p in model.parameters())  # detach gives the flags back


def test_plan_counts_match_channel_arithmetic(tiny_mnv3):
    """trainable parameters = Σ over trainable channels of (weight row + bias + BN γ, β) + classifier."""
    model = tiny_mnv3
    _, groups = _setup(model)
    masks = _random_masks(groups, seed=3, share=0.3)
    plan = make_plan(model, groups, masks, classifier=True)
    modules = dict(model.named_modules())
    expected = model.get_classifier().weight.numel() + model.get_classifier().bias.numel()
    for gr in groups:
        conv = modules[gr.layer]
        per_channel = conv.weight[0].numel() + (1 if conv.bias is not None else 0) + (2 if gr.norm else 0)
        expected += int(masks[gr.layer].sum()) * per_channel
    assert plan.trainable_parameters == expected
    assert plan.total_parameters == sum(p.numel() for p in model.parameters())
    assert 0 < plan.tpr < 1


def test_frozen_channels_use_inference_batchnorm_while_training():
    """frozen_bn="eval": in train mode a frozen channel's BN output is its eval-mode output; trainable ones use batch
    statistics; detaching gives the module its own forward back."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 3)
    )
    bn = model[1]
    bn.running_mean.copy_(torch.tensor([0.3, -0.2, 0.1, 0.5]))
    bn.running_var.copy_(torch.tensor([2.0, 0.5, 1.5, 3.0]))
    x = torch.randn(8, 1, 8, 8)
    _, groups = _setup(model, size=8)
    assert groups[0].norm == "1"
    trainable = torch.tensor([True, False, True, False])
    plan = make_plan(model, groups, {"0": trainable})
    conv_out = model[0](x).detach()
    eval_out = torch.nn.functional.batch_norm(conv_out, bn.running_mean, bn.running_var, bn.weight, bn.bias, False)
    batch_out = torch.nn.functional.batch_norm(conv_out, None, None, bn.weight, bn.bias, True)
    seen = {}
    handle = bn.register_forward_hook(lambda _m, _i, out: seen.setdefault("out", out.detach()))
    with ExactFreezer(model, plan):
        model.train()
        model(x)
    handle.remove()
    out = seen["out"]
    torch.testing.assert_close(out[:, ~trainable], eval_out[:, ~trainable])
    torch.testing.assert_close(out[:, trainable], batch_out[:, trainable])
    assert "forward" not in vars(bn)  # the patch is gone after detach

    seen.clear()
    handle = bn.register_forward_hook(lambda _m, _i, out: seen.setdefault("out", out.detach()))
    with ExactFreezer(model, plan, frozen_bn="batch"):
        model(x)
    handle.remove()
    torch.testing.assert_close(seen["out"], batch_out)
