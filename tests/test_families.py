"""Every timm CNN family torch-pruning handles: slice, restructure, masked equivalence and ONNX parity.

Untrained weights with randomised BatchNorm statistics, biases and affines (trained-like: zero must not map to zero
for free), 32 px, half the channels critical at random, ``round_to=8``. ``test_documented_family_allocates`` runs
every model of docs/families.md's table through compress's default width rule (``cap``) without training.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from edgeslice.allocation import check_allocatable
from edgeslice.restructure import check_restructurable, perturbed_copy, restructure_
from edgeslice.slicing import find_layers

FAST = [
    "mobilenetv3_small_050",  # inverted residual + squeeze-excite
    "resnet10t",  # deep stem, avg-down shortcut
    "regnetx_002",  # grouped convolutions
    "ghostnet_050",  # concatenated primary + cheap halves
    "convnext_atto",  # LayerNorm2d over channels, layer scale
    "repvgg_a0",  # re-parameterisable branches (3x3 + 1x1 + identity BN)
    "fbnetc_100",  # FBNet: NAS-found inverted residuals
    "mnasnet_small",
    "mobilenetv4_conv_small",
]
SLOW = [
    "hgnetv2_b0",  # concatenated aggregation, learnable affine after the activation
    "lcnet_050",
    "mobilenetv2_050",
    "efficientnet_b0",
    "resnext26ts",
    "densenet121",  # dense concatenation read by pre-activation norms
    "efficientvit_b0",
]


#: docs/families.md's table (rexnet_100 is refused: test_rexnet_is_refused_in_one_line_within_seconds).
DOCUMENTED = [
    "mobilenetv3_small_100",
    "mobilenetv3_large_100",
    "mobilenetv2_100",
    "mobilenetv4_conv_small",
    "efficientnet_b0",
    "mnasnet_small",
    "tinynet_a",
    "fbnetc_100",
    "lcnet_100",
    "repghostnet_100",
    "resnet18",
    "resnet10t",
    "resnext26ts",
    "regnetx_002",
    "ghostnet_050",
    "hgnetv2_b0",
    "densenet121",
    "convnext_atto",
    "repvgg_a0",
    "efficientvit_b0",
]


def test_documented_families_are_the_tested_ones():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "families.md").read_text()
    rows = [ln.split("|")[1].strip() for ln in doc.splitlines() if ln.startswith("| ") and "|---" not in ln]
    assert set(rows[1:]) == {*DOCUMENTED, "rexnet_100"}


@pytest.mark.parametrize("name", DOCUMENTED)
def test_documented_family_allocates(name, tmp_path):
    """compress's preflight for the default width rule: random calibration, θ slice, ``cap`` widths, restructure,
    masked equivalence (``check_allocatable`` raises on any of them), no training; then what compress measures on
    the exported ONNX file that no preflight covers: its peak activation memory (hgnetv2_b0 and efficientvit_b0
    export tensors whose size shape inference cannot tell)."""
    import timm

    from edgeslice.deploy.export import export_onnx
    from edgeslice.deploy.memory import onnx_peak_activation

    torch.manual_seed(0)
    model = timm.create_model(name, in_chans=1, num_classes=10).eval()
    report = check_allocatable(model, torch.randn(2, 1, 32, 32), "cap", theta=0.95, round_to=8)
    assert report.params_after < report.params_before
    path = export_onnx(model, torch.randn(1, 1, 32, 32), tmp_path / "model.onnx")
    assert onnx_peak_activation(path)["peak_bytes"] >= 4 * 32 * 32
    if name in ("efficientvit_b0", "convnext_atto"):  # attention / LayerNorm groups stay whole, the rest narrows
        assert any(g.kept_whole for g in report.groups) and any(g.remove for g in report.groups)


def _check(name: str, tmp_path) -> None:
    import timm

    from edgeslice.deploy.export import check_parity, export_onnx

    torch.manual_seed(0)
    model = perturbed_copy(timm.create_model(name, in_chans=1, num_classes=10), seed=0)
    x = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    check_restructurable(model, x[:2])
    layers = find_layers(model, x[:1])
    g = torch.Generator().manual_seed(2)
    keep = {la.name: torch.rand(la.channels, generator=g) < 0.5 for la in layers}
    original = copy.deepcopy(model)
    report = restructure_(model, layers, keep, x[:2], round_to=8)
    assert report.params_after < report.params_before
    for name_, k in keep.items():  # coupling only adds channels back
        assert bool(report.effective_keep[name_][k].all())
    for plan in report.groups:  # kept counts honour round_to (and the group count) unless nothing is removed
        assert plan.remove == [] or (plan.channels - len(plan.remove)) % 8 == 0
    with torch.no_grad(), report.masked(original, layers):
        masked = original(x)
    with torch.no_grad():
        pruned = model(x)
    # Same model up to float rounding of differently shaped kernels, not bit-equality.
    assert float((masked - pruned).abs().max()) <= 1e-4 * max(1.0, float(masked.abs().max()))
    path = export_onnx(model, x[:1], tmp_path / "model.onnx")
    check_parity(model, path, x)


@pytest.mark.parametrize("name", FAST)
def test_family(name, tmp_path):
    _check(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_family_slow(name, tmp_path):
    _check(name, tmp_path)


def test_rexnet_is_refused_in_one_line_within_seconds():
    """RexNet's partial-channel shortcuts make torch-pruning's traversal grow without end: refused, not hung."""
    import time

    import timm

    from edgeslice.errors import ModelError

    model = timm.create_model("rexnet_100", in_chans=1, num_classes=10)
    t = time.perf_counter()
    with pytest.raises(ModelError, match="dependency traversal") as err:
        check_restructurable(model, torch.randn(2, 1, 32, 32))
    assert "\n" not in str(err.value) and time.perf_counter() - t < 120
