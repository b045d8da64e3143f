"""Single-pass DeepLIFT: equals captum's LayerDeepLift per layer, hand-computed on a toy net, complete on ReLU nets."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from edgeslice.slicing import SemanticSlicer, find_layers
from edgeslice.slicing.deeplift import channel_attributions, completeness_gap, mean_input
from edgeslice.slicing.metrics import class_scores, global_scores


class ToyConv(nn.Module):
    """conv → BN → in-place ReLU → MaxPool → conv → ReLU → GAP → Linear: every rule captum knows, plus in-place."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.act1 = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.act2 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.pool(self.act1(self.bn1(self.conv1(x))))
        return self.fc(self.gap(self.act2(self.conv2(x))).flatten(1))


def _toy_conv() -> ToyConv:
    torch.manual_seed(0)
    model = ToyConv()
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-0.5, 0.5)
        model.bn1.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _layer_deeplift(model, module, x, y, baseline):
    from captum.attr import LayerDeepLift

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = LayerDeepLift(model, module).attribute(x, baselines=baseline.expand_as(x), target=y)
    return ref.flatten(2).sum(2) if ref.dim() > 2 else ref


@pytest.mark.parametrize("baseline", ["zero", "random"])
def test_equals_captum_layer_deeplift_on_toy(baseline):
    model = _toy_conv()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 1, 8, 8, generator=gen)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    ref = torch.zeros(1, 1, 8, 8) if baseline == "zero" else torch.randn(1, 1, 8, 8, generator=gen)
    layers = find_layers(model, x[:1])
    assert [(la.name, la.observe) for la in layers] == [("conv1", "act1"), ("conv2", "act2")]
    attr, acts = channel_attributions(model, layers, x, y, ref)
    modules = dict(model.named_modules())
    for la in layers:
        expected = _layer_deeplift(model, modules[la.observe], x, y, ref)
        assert attr[la.name].shape == (6, la.channels)
        torch.testing.assert_close(attr[la.name], expected, rtol=1e-5, atol=1e-6)
    # Completeness on an all-ReLU/MaxPool net: every cut layer's attributions sum to f(x)_t − f(x_ref)_t.
    with torch.no_grad():
        out = model(torch.cat([x, ref.expand_as(x)]))
    delta = out[:6].gather(1, y[:, None]).squeeze(1) - out[6:].gather(1, y[:, None]).squeeze(1)
    for la in layers:
        torch.testing.assert_close(attr[la.name].sum(1), delta, rtol=1e-4, atol=1e-5)
    if baseline == "zero":
        # At the input too (captum's own convergence delta). With a random reference captum's MaxPool rule is not
        # complete at the input (measured: |delta| up to 0.1), though every layer above it is.
        assert completeness_gap(model, x, y, ref)["max_rel"] < 1e-4


def test_hand_computed_scores(toy):
    # hidden = ReLU(I·x), logits = W h: DeepLIFT with a zero baseline gives channel i of sample x for class t
    # exactly relu(x_i) · W[t, i]; the score is its mean over the class's samples.
    model = toy
    with torch.no_grad():
        model.classifier.weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.0, 1.0, 3.0, -1.0]]))
        model.classifier.bias.fill_(0.25)
    x = torch.tensor([[1.0, 2.0, -1.0, 4.0], [3.0, 0.0, 2.0, 1.0], [0.5, 1.0, 1.0, -2.0]])
    y = torch.tensor([0, 0, 1])
    slicer = SemanticSlicer(model, x[:1], metric="deeplift")
    stats = slicer.calibrate([(x, y)], num_classes=2)
    assert stats.deeplift_baseline == "zero" and not stats.with_gradients
    got = class_scores(stats.per_layer["hidden"], "deeplift")
    class0 = (torch.tensor([[1.0, 2.0, 0.0, 4.0], [3.0, 0.0, 2.0, 1.0]]) * torch.tensor([1.0, -2.0, 0.5, 0.0])).mean(0)
    class1 = torch.tensor([0.5, 1.0, 1.0, 0.0]) * torch.tensor([0.0, 1.0, 3.0, -1.0])
    torch.testing.assert_close(got, torch.stack([class0, class1]).double())
    assert got[0].tolist() == [2.0, -2.0, 0.5, 0.0]
    torch.testing.assert_close(global_scores(stats.per_layer["hidden"], "deeplift"), (2 * class0 + class1).double() / 3)
    # The forward statistics come from the same pass: Σf for class 0 is relu(x) summed.
    assert stats.per_layer["hidden"].total[0].tolist() == [4.0, 2.0, 2.0, 5.0]
    r = slicer.slice(strategy="category", ratio=0.25)
    assert r.critical["hidden"].tolist() == [True, False, True, False]
    assert slicer.slice(theta=0.9).params["baseline"] == "zero"


def test_mean_baseline_reads_one_shot_iterators():
    model = _toy_conv()
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(8, 1, 8, 8, generator=gen)
    y = torch.arange(8) % 3
    batches = [(x[:5], y[:5]), (x[5:], y[5:])]
    prepare = lambda t: (t - 0.5) / 0.25  # noqa: E731
    mean = mean_input(batches, prepare=prepare)
    torch.testing.assert_close(mean, prepare(x).mean(0, keepdim=True))
    a = SemanticSlicer(model, x[:1], metric="deeplift", baseline="mean")
    sa = a.calibrate(batches, num_classes=3, prepare=prepare)
    b = SemanticSlicer(model, x[:1], metric="deeplift", baseline="mean")
    sb = b.calibrate(iter(batches), num_classes=3, prepare=prepare)  # one-shot: materialised, read twice
    z = SemanticSlicer(model, x[:1], metric="deeplift").calibrate(batches, num_classes=3, prepare=prepare)
    assert sa.deeplift_baseline == "mean" and torch.equal(sa.deeplift_reference, mean)
    for name in sa.per_layer:
        assert torch.equal(sa.per_layer[name].deeplift, sb.per_layer[name].deeplift)
        assert torch.equal(sa.per_layer[name].count, sb.per_layer[name].count)
        assert not torch.allclose(sa.per_layer[name].deeplift, z.per_layer[name].deeplift)
    # DeepLIFT hooks leave nothing behind on the model.
    assert not any(hasattr(m, "input") or hasattr(m, "output") for m in model.modules())


def test_merge_is_exact_and_checks_settings():
    model = _toy_conv()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(10, 1, 8, 8, generator=gen)
    y = torch.arange(10) % 3
    slicer = SemanticSlicer(model, x[:1], metric="deeplift")
    whole = slicer.calibrate([(x[:4], y[:4]), (x[4:], y[4:])], num_classes=3, metrics=["taylor"])
    a = slicer.calibrate([(x[:4], y[:4])], num_classes=3, metrics=["taylor"])
    b = slicer.calibrate([(x[4:], y[4:])], num_classes=3, metrics=["taylor"])
    a.merge_(b)
    for name, s in whole.per_layer.items():
        for field in ("count", "total", "gram", "taylor", "deeplift"):
            torch.testing.assert_close(getattr(a.per_layer[name], field), getattr(s, field), rtol=1e-12, atol=1e-12)
    plain = SemanticSlicer(model, x[:1], metric="avg").calibrate([(x[:4], y[:4])], num_classes=3)
    with pytest.raises(ValueError, match="cannot merge"):
        a.merge_(plain)


def test_with_metric_shares_one_calibration():
    model = _toy_conv()
    x = torch.randn(9, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    y = torch.arange(9) % 3
    base = SemanticSlicer(model, x[:1], metric="avg")
    base.calibrate([(x, y)], num_classes=3, metrics=["taylor", "deeplift"])
    for metric in ("avg", "var", "ens", "taylor", "deeplift"):
        alone = SemanticSlicer(model, x[:1], metric=metric)
        alone.calibrate([(x, y)], num_classes=3)
        shared = base.with_metric(metric)
        for name in alone.stats.per_layer:
            torch.testing.assert_close(
                class_scores(shared.stats.per_layer[name], metric), class_scores(alone.stats.per_layer[name], metric)
            )
    only_avg = SemanticSlicer(model, x[:1], metric="avg")
    only_avg.calibrate([(x, y)], num_classes=3)
    with pytest.raises(ValueError, match="did not collect 'deeplift'"):
        only_avg.with_metric("deeplift")


def test_mobilenetv3_matches_layer_deeplift(tiny_mnv3):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 1, 32, 32, generator=gen)
    y = torch.tensor([1, 4, 7])
    layers = find_layers(tiny_mnv3, x[:1])
    attr, _ = channel_attributions(tiny_mnv3, layers, x, y)
    modules = dict(tiny_mnv3.named_modules())
    by_name = {la.name: la for la in layers}
    # A BatchNormAct (Hardswish), an SE gate (Hardsigmoid), a ReLU inside SE, a projection, the head.
    checked = [
        "conv_stem",
        "blocks.0.0.se.conv_expand",
        "blocks.0.0.se.conv_reduce",
        "blocks.2.1.conv_pwl",
        "conv_head",
    ]
    for name in checked:
        expected = _layer_deeplift(tiny_mnv3, modules[by_name[name].observe], x, y, torch.zeros(1, 1, 32, 32))
        scale = float(expected.detach().abs().max())
        assert float((attr[name] - expected.detach()).abs().max()) <= 1e-5 * max(scale, 1e-6), name
