"""Isolation: after it, training the non-frozen channels cannot move the old classes' logits at all."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from torch import nn

from edgeslice.index import CriticalIndex
from edgeslice.models import load_checkpoint
from edgeslice.ondevice import IncrementConfig, channel_groups, learn_increment, old_logit_check, pre_logits, relabel
from edgeslice.ondevice.isolate import IsolationError, isolate_, probe_wiring
from edgeslice.pipeline import make_prepare
from edgeslice.train import iterate_batches

NEW = {c: c for c in range(5, 10)}


class _Net(nn.Module):
    def __init__(self, features: nn.Module, head: nn.Linear):
        super().__init__()
        self.features, self.head = features, head

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward(self, x):
        return self.head(self.features(x))


def _mlp() -> _Net:
    torch.manual_seed(0)
    return _Net(nn.Sequential(nn.Linear(3, 4), nn.ReLU()), nn.Linear(4, 2))


def test_dense_cut_by_hand():
    """fc1 channels {0, 1} frozen, 2 old rows: exactly the head's columns 2 and 3 are cut, nothing else."""
    net = _mlp()
    before = copy.deepcopy(net.state_dict())
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    layers = [{"name": "features.0", "channels": 4}]
    groups = channel_groups(net, layers, x)
    assert probe_wiring(net, groups, x) == {"features.0": [], "head": ["features.0"]}
    report = isolate_(net, groups, {"features.0": torch.tensor([True, True, False, False])}, 2, x)
    w = net.head.weight
    assert torch.equal(w[:, 2:], torch.zeros(2, 2)) and torch.equal(w[:, :2], before["head.weight"][:, :2])
    assert report.cut_weights == 4 and report.added == {} and report.max_logit_change == 0.0
    assert torch.equal(net.features[0].weight, before["features.0.weight"])


def test_depthwise_closure_by_hand():
    """A frozen depthwise channel cannot lose its only input: the pointwise channel feeding it is frozen too."""
    torch.manual_seed(0)
    features = nn.Sequential(
        nn.Conv2d(1, 4, 1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, groups=4),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    net = _Net(features, nn.Linear(4, 3)).eval()
    x = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    groups = channel_groups(net, [{"name": "features.0", "channels": 4}, {"name": "features.3", "channels": 4}], x)
    frozen = {"features.0": torch.zeros(4, dtype=torch.bool), "features.3": torch.tensor([False, True, True, False])}
    report = isolate_(net, groups, frozen, 3, x)
    assert torch.equal(report.frozen["features.0"], torch.tensor([False, True, True, False]))
    assert report.added == {"features.0": 2}
    # The head's old rows keep depthwise channels 1, 2 and lose 0, 3 (nothing frozen feeds them).
    assert torch.equal(net.head.weight[:, [0, 3]], torch.zeros(3, 2)) and net.head.weight[:, [1, 2]].abs().min() > 0


def test_unmappable_wiring_is_refused_and_model_unchanged():
    """A Linear over a flattened spatial map reads each channel as many features: not provable, so refused."""
    torch.manual_seed(0)
    net = _Net(nn.Sequential(nn.Conv2d(1, 2, 1), nn.Flatten()), nn.Linear(8, 2))
    x = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    before = copy.deepcopy(net.state_dict())
    groups = channel_groups(net, [{"name": "features.0", "channels": 2}], x)
    with pytest.raises(IsolationError, match="cannot isolate"):
        isolate_(net, groups, {"features.0": torch.tensor([True, False])}, 2, x)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_increment_with_isolation_keeps_old_logits_exactly(task_a):
    """MobileNetV3 (residuals, depthwise, squeeze-excite): old logits after training == right after isolation."""
    folder, bundle = task_a
    model, meta = load_checkpoint(folder)
    index = CriticalIndex.load(folder / "critical_index")
    prepare = make_prepare(meta)
    x = prepare(torch.rand(16, 1, 32, 32, generator=torch.Generator().manual_seed(0)))
    new_train = relabel(bundle.train, NEW)
    cfg = IncrementConfig(epochs=1, batch_size=64, lr=1e-2, weight_decay=0.05, slice_new=False, isolate=True)

    reference = copy.deepcopy(model).eval()
    example = prepare(next(iterate_batches(new_train, 2))[0])  # what learn_increment probes with
    rep = isolate_(reference, channel_groups(reference, index.layers, example), index.critical, 5, example)
    assert rep.producers["classifier"] == ["conv_head"]
    result = learn_increment(model, meta, index, new_train, bundle.classes[5:], cfg)
    iso = result.report["isolation"]
    # The proof compares same-shaped forwards on one batch: exact by construction (guarantees.py), on any CPU.
    assert iso["max_old_logit_change"] == 0.0 and iso["cut_weights"] > 0
    after = iso["after_training"]  # the product's own check after training, on its probe batch
    assert after["frozen_features_exact"] is True and after["within_rounding"], after
    assert 0 < result.report["training"]["plan"]["trainable_parameters"]
    with torch.no_grad():
        feats, ref = pre_logits(reference, x), reference(x)
    # The features the frozen sub-network computes are bit-identical (same layers, same batch); the old logits are
    # the same rows on them, equal up to the grown (8-row) GEMM's rounding.
    frozen_feats = rep.frozen["conv_head"]
    assert 0 < int(frozen_feats.sum()) < frozen_feats.numel()  # some features trained, some are frozen
    check = old_logit_check(feats, ref, result.model.eval(), x, 5, frozen_feats)
    assert check["frozen_features_exact"] and check["within_rounding"], check

    # Without isolation the same training moves the old logits: the test above is not vacuous.
    plain, _ = load_checkpoint(folder)
    plain_result = learn_increment(plain, meta, index, new_train, bundle.classes[5:], replace(cfg, isolate=False))
    with torch.no_grad():
        before, _ = load_checkpoint(folder)
        assert not torch.allclose(plain_result.model.eval()(x)[:, :5], before.eval()(x), atol=1e-3)
