"""Re-adaptation trains exactly the critical channels (Eq. 7), leaves everything else bit-identical, and repairs."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

from edgeslice.cli import app
from edgeslice.maintain import AttackConfig, ReadaptConfig, critical_plan, run_readapt
from edgeslice.models import load_checkpoint, save_checkpoint
from edgeslice.ondevice import channel_groups
from edgeslice.pipeline import SliceConfig, make_prepare, slice_model

runner = CliRunner()


@pytest.fixture(scope="module")
def sliced(trained_digits, learning_seed):
    model, meta, bundle = trained_digits
    cfg = SliceConfig(calib_per_class=10, theta=0.9)
    _, _, index = slice_model(model, meta, bundle, cfg, seed=learning_seed, device=torch.device("cpu"))
    return index


def _small_cfg(kind="fgsm", **kw):
    return ReadaptConfig(
        attack=AttackConfig(kind, eps=0.1, steps=3),
        epochs=3,
        batch_size=50,
        lr=1e-2,
        samples=150,
        eval_samples=60,
        clean_eval_samples=100,
        reattack_steps=3,
        **kw,
    )


@pytest.mark.learning
def test_readapt_trains_only_critical_channels(trained_digits, sliced, measure):
    model, meta, bundle = trained_digits
    model = copy.deepcopy(model)
    prepare = make_prepare(meta)
    example = prepare(bundle.test[0][0][None])
    groups = channel_groups(model, sliced.layers, example)
    plan = critical_plan(model, groups, sliced.critical)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = run_readapt(model, plan, bundle.train, bundle.test, _small_cfg(), prepare=prepare)

    # TPR is the index's share: Σ critical channels × (weight row + bias + BN γ, β) + classifier, over all parameters.
    modules = dict(model.named_modules())
    expected = sum(p.numel() for p in model.get_classifier().parameters())
    for g in groups:
        conv = modules[g.layer]
        per_channel = conv.weight[0].numel() + (conv.bias is not None) + 2 * (g.norm is not None)
        expected += int(sliced.critical[g.layer].sum()) * per_channel
    total = sum(p.numel() for p in model.parameters())
    assert report["trainable_parameters"] == expected
    assert report["tpr"] == pytest.approx(expected / total)
    assert 0.05 < measure("TPR", report["tpr"], "in (0.05, 0.95)") < 0.95

    # Zero drift outside the critical rows; the critical rows did train.
    after = model.state_dict()
    changed_rows = 0
    for name, mask in plan.masks.items():
        old, new = before[name], after[name]
        if old.dim() == 0:
            assert torch.equal(old, new), name
            continue
        assert torch.equal(old[~mask], new[~mask]), f"{name}: a non-critical row changed"
        if old.is_floating_point() and mask.any():
            changed_rows += int((old[mask] != new[mask]).reshape(int(mask.sum()), -1).any(1).sum())
    assert changed_rows > 0.9 * sum(int(m.sum()) for m in plan.masks.values() if m.numel() > 1)
    for name in before:
        if name not in plan.masks:  # e.g. num_batches_tracked of BNs with trainable channels: bookkeeping only
            assert name.endswith("num_batches_tracked"), name

    assert report["training"]["max_drift"] == 0.0
    assert (
        measure("RA gain points", report["ra"] - report["ra_before"], "> 15") > 15
    )  # the repair fixed most of the targeted adversarial samples
    assert report["attack"] == {"kind": "fgsm", "eps": 0.1, "norm": "linf", "pixel_range": [0, 1]}
    assert report["reattack"]["steps"] == 3 and report["samples"] == {"repair": 150, "reattack": 60, "clean": 100}


def test_readapt_cli_writes_repaired_checkpoint_and_refuses_foreign_index(trained_digits, sliced, tmp_path):
    model, meta, _ = trained_digits
    save_checkpoint(model, copy.deepcopy(meta), tmp_path / "ck" / "model.safetensors")
    sliced.save(tmp_path / "ck" / "critical_index")
    args = ["readapt", "mobilenetv3_small_050", "--checkpoint", str(tmp_path / "ck" / "model.safetensors"),
            "--data", "digits", "--attack", "pgd", "--eps", "0.1", "--steps", "2", "--epochs", "1",
            "--samples", "60", "--eval-samples", "30", "--device-type", "cpu", "--json"]  # fmt: skip
    r = runner.invoke(app, [*args, "--index", str(tmp_path / "ck" / "critical_index"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["attack"] == {"kind": "pgd", "eps": 0.1, "norm": "linf", "pixel_range": [0, 1], "alpha": 0.025,
                             "steps": 2, "random_start": True}  # fmt: skip
    assert {p.name for p in (tmp_path / "o").iterdir()} >= {"model.safetensors", "model.json", "report.json",
                                                              "manifest.json"}  # fmt: skip
    repaired, meta2 = load_checkpoint(tmp_path / "o")
    assert meta2.fingerprint != meta.fingerprint and meta2.info["readapt"]["source_fingerprint"] == meta.fingerprint

    # An index made for other weights is refused: one line on stderr, exit 1, nothing written.
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.get_classifier().bias.add_(1.0)
    save_checkpoint(other, copy.deepcopy(meta), tmp_path / "other" / "model.safetensors")
    r = runner.invoke(
        app,
        [
            *args,
            "--checkpoint",
            str(tmp_path / "other" / "model.safetensors"),
            "--index",
            str(tmp_path / "ck" / "critical_index"),
            "--out",
            str(tmp_path / "refused"),
        ],
    )
    assert r.exit_code == 1
    assert "index was sliced from model" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "refused").exists()
