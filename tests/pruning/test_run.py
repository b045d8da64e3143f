"""The pruning pipeline on a real (tiny) model and data: CR accounting, stopping, resume, artifacts."""

from __future__ import annotations

import json

import pytest
import torch

import edgeslice.train
from edgeslice.artifacts.files import sha256_file
from edgeslice.errors import EdgesliceError
from edgeslice.models import ModelMeta, count_parameters, load_checkpoint, save_checkpoint
from edgeslice.pipeline.prune import export_pruned
from edgeslice.pruning import (
    ARTIFACTS,
    IterativePruneConfig,
    onnx_weight_stats,
    prunable_weights,
    prune_pipeline_,
    resolve_dense_params,
    sparsity_report,
)

CPU = torch.device("cpu")
N_MLP = 535_818  # parameters of the dense 28 px MLP
N_MLP_PRUNABLE = 784 * 512 + 512 * 256 + 256 * 10  # 535_040 Linear weights


def _scripted_accuracies(monkeypatch, values: list[float]) -> list[float]:
    """Makes edgeslice.train.evaluate return ``values`` in order (fine-tuning stays real)."""
    pending = list(values)
    monkeypatch.setattr(edgeslice.train, "evaluate", lambda *a, **k: pending.pop(0))
    return pending


def _zeros(model: torch.nn.Module) -> int:
    return sum(int((m.weight == 0).sum()) for _, m in prunable_weights(model))


def test_cr_counts_removed_channels_and_zeroed_weights(trained_mlp, digits28):
    model, meta = trained_mlp
    dense = N_MLP + 100_000  # as if channel restructuring had already removed 100k parameters
    cfg = IterativePruneConfig(pruner="lamp", prune_step=0.5, max_iterations=2, max_acc_drop=100.0, finetune_steps=2)
    report = prune_pipeline_(
        model, meta, digits28, cfg, device=CPU, dense_params=dense, baseline_accuracy=None, batch_size=64
    )
    assert report.params == N_MLP and report.dense_params == dense
    assert report.start["compression_rate"] == pytest.approx(100_000 / dense)
    pruned = [N_MLP_PRUNABLE // 2, N_MLP_PRUNABLE * 3 // 4]  # 50%, then 50% of the rest
    assert [h["compression_rate"] for h in report.history] == pytest.approx([1 - (N_MLP - p) / dense for p in pruned])
    assert _zeros(model) == pruned[-1]
    assert report.compression_rate == pytest.approx(1 - (N_MLP - pruned[-1]) / dense)
    assert report.nonzero_params == count_parameters(model, nonzero=True)
    assert (report.iterations, report.iterations_kept, report.stop_reason) == (2, 2, "max_iterations")
    assert report.accuracy == report.history[-1]["accuracy"]
    assert report.baseline_accuracy == report.start["accuracy"]  # None: measured on the model itself
    assert not any(hasattr(m, "weight_mask") for _, m in prunable_weights(model))  # masks made permanent
    with pytest.raises(ValueError, match="smaller than the model's parameter count"):
        prune_pipeline_(model, meta, digits28, cfg, device=CPU, dense_params=1000, baseline_accuracy=None)


def test_stops_at_the_accuracy_budget_and_keeps_the_last_good_iteration(trained_mlp, digits28, monkeypatch):
    model, meta = trained_mlp
    # start, iteration 1 (drop 0.5), 2 (drop 1.0: accepted), 3 (drop 1.01: rejected); never asked for a 5th value.
    left = _scripted_accuracies(monkeypatch, [91.0, 90.5, 90.0, 89.99, 0.0])
    cfg = IterativePruneConfig(pruner="global", prune_step=0.2, max_iterations=10, max_acc_drop=1.0, finetune_steps=1)
    states = []
    report = prune_pipeline_(
        model,
        meta,
        digits28,
        cfg,
        device=CPU,
        dense_params=N_MLP,
        baseline_accuracy=91.0,
        batch_size=64,
        on_iteration=lambda h: states.append(_zeros(model)),
    )
    assert left == [0.0]
    assert [h["kept"] for h in report.history] == [True, True, False]
    assert (report.iterations, report.iterations_kept, report.stop_reason) == (3, 2, "accuracy")
    assert report.accuracy == 90.0
    n_alive_2 = round(0.8 * round(0.8 * N_MLP_PRUNABLE))
    assert _zeros(model) == N_MLP_PRUNABLE - n_alive_2  # the rejected third step was rolled back
    assert report.compression_rate == pytest.approx((N_MLP_PRUNABLE - n_alive_2) / N_MLP)


@pytest.mark.learning
def test_budget_against_a_higher_dense_baseline(trained_mlp, digits28):
    model, meta = trained_mlp
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = IterativePruneConfig(pruner="erk", max_iterations=3, max_acc_drop=0.0, finetune_steps=0)
    report = prune_pipeline_(model, meta, digits28, cfg, device=CPU, dense_params=N_MLP, baseline_accuracy=100.0)
    assert (report.iterations, report.iterations_kept, report.stop_reason) == (1, 0, "accuracy")
    assert report.compression_rate == 0.0 and report.accuracy == report.start["accuracy"]
    assert report.notes and "below the baseline" in report.notes[0]
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_pruner_none_and_pruner_limit(trained_mlp, digits28):
    model, meta = trained_mlp
    report = prune_pipeline_(
        model,
        meta,
        digits28,
        IterativePruneConfig(pruner="none"),
        device=CPU,
        dense_params=N_MLP,
        baseline_accuracy=None,
    )
    assert (report.iterations, report.stop_reason, report.compression_rate) == (0, "disabled", 0.0)
    assert _zeros(model) == 0
    # Uniform+ keeps >= 20% of the classifier (514 of 2570 weights): 90%, 99%, 99.9% are reachable, 99.99% is not.
    cfg = IterativePruneConfig(
        pruner="uniform+", prune_step=0.9, max_iterations=6, max_acc_drop=100.0, finetune_steps=0
    )
    report = prune_pipeline_(model, meta, digits28, cfg, device=CPU, dense_params=N_MLP, baseline_accuracy=None)
    assert (report.iterations, report.iterations_kept, report.stop_reason) == (3, 3, "pruner_limit")
    assert _zeros(model) == N_MLP_PRUNABLE - round(0.001 * N_MLP_PRUNABLE)


def test_resume_after_interruption_gives_the_same_model(trained_mlp_state, trained_mlp, digits28, tmp_path):
    from edgeslice.models import create_model

    cfg = IterativePruneConfig(pruner="lamp", prune_step=0.3, max_iterations=3, max_acc_drop=100.0, finetune_steps=3)
    kwargs = dict(device=CPU, dense_params=N_MLP, baseline_accuracy=None, batch_size=64, seed=5)

    def fresh():
        model = create_model("mlp", num_classes=10, in_chans=1)
        model.load_state_dict(trained_mlp_state[0])
        return model

    reference = fresh()
    expected = prune_pipeline_(reference, trained_mlp[1], digits28, cfg, **kwargs)

    state_dir = tmp_path / "state"

    def interrupt_after_two(entry):
        if entry["iteration"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prune_pipeline_(
            fresh(), trained_mlp[1], digits28, cfg, state_dir=state_dir, on_iteration=interrupt_after_two, **kwargs
        )
    saved = json.loads((state_dir / "state.json").read_text())
    assert len(saved["progress"]["history"]) == 2 and saved["tensors"] == "iter-2.safetensors"
    assert [p.name for p in state_dir.glob("*.safetensors")] == ["iter-2.safetensors"]

    resumed_model = fresh()
    resumed = prune_pipeline_(resumed_model, trained_mlp[1], digits28, cfg, state_dir=state_dir, resume=True, **kwargs)
    assert resumed.resumed_from == 2 and resumed.iterations == 3
    strip = lambda hs: [{k: v for k, v in h.items() if k != "seconds"} for h in hs]  # noqa: E731
    assert strip(resumed.history) == strip(expected.history)
    # Bit-equal by construction: the resumed run repeats the uninterrupted one's ops with the same shapes, batch
    # sizes and thread count in this process, from the bit-exact saved state (safetensors round trip).
    for key, value in reference.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[key], value), key

    other = IterativePruneConfig(pruner="erk", prune_step=0.3, max_iterations=3, finetune_steps=3)
    with pytest.raises(EdgesliceError, match=r"other settings \(config\)"):
        prune_pipeline_(fresh(), trained_mlp[1], digits28, other, state_dir=state_dir, resume=True, **kwargs)


def test_export_writes_consistent_artifacts(trained_mlp, digits28, tmp_path):
    import onnx
    from onnx import numpy_helper

    model, meta = trained_mlp
    cfg = IterativePruneConfig(pruner="global", prune_step=0.6, max_iterations=2, max_acc_drop=100.0, finetune_steps=2)
    report = prune_pipeline_(
        model, meta, digits28, cfg, device=CPU, dense_params=N_MLP + 10, baseline_accuracy=None, batch_size=64
    )
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    out = tmp_path / "out"
    export_pruned(model, meta, digits28, report, out, config={"pruning": cfg.to_dict()}, seed=0, state_dir=state_dir)
    assert {p.name for p in out.iterdir()} == set(ARTIFACTS)
    assert not state_dir.exists()

    # ONNX: plain weights equal to the pruned PyTorch weights (Gemm may store them transposed).
    torch_weights = [m.weight.detach().numpy() for _, m in prunable_weights(model)]
    graph = onnx.load(str(out / "model.onnx")).graph
    onnx_weights = [numpy_helper.to_array(t) for t in graph.initializer if t.dims and len(t.dims) == 2]
    assert len(onnx_weights) == len(torch_weights)
    for w in torch_weights:
        assert any(
            o.shape == w.shape and (o == w).all() or o.shape == w.T.shape and (o == w.T).all() for o in onnx_weights
        )
    stats = onnx_weight_stats(out / "model.onnx")
    assert stats == {"weights": N_MLP_PRUNABLE, "nonzero_weights": sparsity_report(model)["total"]["n_nonzero"]}

    doc = json.loads((out / "report.json").read_text())
    assert doc["iterations"] == 2 and doc["compression_rate"] == pytest.approx(report.compression_rate)
    assert doc["onnx"]["parity_max_abs"] <= 1e-4 and doc["onnx"]["gzip_bytes"] < doc["onnx"]["raw_bytes"]
    assert doc["onnx"]["nonzero_weights"] == doc["onnx"]["torch_nonzero_prunable_weights"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == set(ARTIFACTS) - {"manifest.json", "report.json"}  # report.json: volatile
    assert set(manifest["volatile"]) == {"report.json"}
    for name, entry in manifest["files"].items():
        assert sha256_file(out / name) == entry["sha256"]
    assert (out / "accuracy_vs_cr.png").read_bytes()[:4] == b"\x89PNG"

    loaded, loaded_meta = load_checkpoint(out)
    assert loaded_meta.info["dense_params"] == N_MLP + 10
    assert loaded_meta.info["pruning"]["iterations"] == 2
    assert _zeros(loaded) == _zeros(model)
    dense, source = resolve_dense_params(loaded_meta, count_parameters(loaded))
    assert (dense, source) == (N_MLP + 10, "checkpoint info['dense_params']")


def test_resolve_dense_params(trained_mlp, tmp_path):
    model, meta = trained_mlp
    assert resolve_dense_params(meta, N_MLP) == (N_MLP, "the checkpoint (dense)")
    assert resolve_dense_params(meta, N_MLP, 10**6) == (10**6, "given")
    dense_path = save_checkpoint(model, meta, tmp_path / "dense" / "model.safetensors") and tmp_path / "dense"
    restructured = ModelMeta(**{**meta.to_dict(), "restructured": True, "info": {"baseline": str(dense_path)}})
    count, source = resolve_dense_params(restructured, 300_000)
    assert count == N_MLP and source.startswith("dense baseline")
    lost = ModelMeta(**{**meta.to_dict(), "restructured": True, "info": {"baseline": str(tmp_path / "gone")}})
    count, source = resolve_dense_params(lost, 300_000)
    assert count == 300_000 and source.startswith("unknown")
