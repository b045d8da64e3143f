"""Fine-tuning options: knowledge distillation from the dense model, mixed precision, the dense control."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from edgeslice.data import ArrayDataset
from edgeslice.train import distillation_loss, train_model


def test_distillation_loss_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    teacher = torch.tensor([[0.0, 1.0, 0.0]])
    y = torch.tensor([0])
    ce = F.cross_entropy(logits, y)
    assert torch.allclose(distillation_loss(logits, teacher, y, 4.0, 0.0), ce)
    # alpha = 1: T² · KL(p_T ‖ q_T) with p the teacher's, q the student's tempered softmax, computed by hand.
    t = 2.0
    p = torch.softmax(teacher / t, 1)[0]
    q = torch.softmax(logits / t, 1)[0]
    kl = float(sum(pi * math.log(pi / qi) for pi, qi in zip(p.tolist(), q.tolist(), strict=True)))
    assert float(distillation_loss(logits, teacher, y, t, 1.0)) == pytest.approx(t * t * kl, rel=1e-5)
    assert float(distillation_loss(teacher, teacher, y, t, 1.0)) == pytest.approx(0.0, abs=1e-7)


def _toy(seed: int) -> tuple[ArrayDataset, torch.nn.Module]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (256, 1, 4, 4), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 3, (256,), generator=g)  # noise: only a teacher can say anything useful
    torch.manual_seed(seed)
    return ArrayDataset(images, labels), torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))


def _centre(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.5) * 4  # pixels in [0, 1] → [-2, 2]: centred inputs, so 60 epochs fit the teacher on any seed


def _agreement(a: torch.nn.Module, b: torch.nn.Module, ds: ArrayDataset) -> float:
    x = _centre(ds.images.float() / 255)
    with torch.no_grad():
        return float((a(x).argmax(1) == b(x).argmax(1)).float().mean())


@pytest.mark.learning
def test_student_follows_the_teacher_only_with_distillation(learning_seed, measure) -> None:
    """Measured, toy seeds (teacher, student) = (s, s + 1) for s = 0..4: the student agrees 0.965-0.977, the plain
    model 0.23-0.32. (On raw [0, 1] pixels 30 epochs reached 0.66-1.0 depending on the seed.)"""
    s = learning_seed
    ds, teacher = _toy(s)
    with torch.no_grad():
        teacher[1].weight.mul_(20)  # a confident teacher with its own decision rule
    _, plain = _toy(s + 1)
    _, student = _toy(s + 1)
    train_model(plain, ds, epochs=60, batch_size=64, lr=3e-2, seed=s, prepare=_centre)
    train_model(
        student, ds, epochs=60, batch_size=64, lr=3e-2, seed=s, prepare=_centre, teacher=teacher, distill_alpha=1.0
    )
    agree, agree_plain = _agreement(student, teacher, ds), _agreement(plain, teacher, ds)
    assert measure("student agreement", agree, "> 0.9") > 0.9
    assert measure("student - plain agreement", agree - agree_plain, "> 0.2") > 0.2
    assert not teacher.training and teacher[1].weight.grad is None  # the teacher is not trained


def test_amp_needs_cuda_and_options_are_checked() -> None:
    ds, model = _toy(0)
    with pytest.raises(ValueError, match="CUDA"):
        train_model(model, ds, epochs=0.1, amp=True, device="cpu")
    with pytest.raises(ValueError, match="temperature"):
        train_model(model, ds, epochs=0.1, teacher=model, distill_temperature=0.0)


@pytest.mark.gpu
def test_amp_trains_on_cuda() -> None:
    ds, model = _toy(0)
    model.cuda()
    stats = train_model(model, ds, epochs=2, batch_size=64, lr=1e-2, device="cuda", amp=True)
    assert math.isfinite(stats["final_loss"]) and stats["steps"] == 8


def test_compress_fine_tune_distils_from_the_dense_model(monkeypatch, tmp_path) -> None:
    """compress --distill hands the dense (unrestructured) model to the fine-tune, and to the dense control."""
    import importlib

    from typer.testing import CliRunner

    pipeline = importlib.import_module("edgeslice.pipeline.compress")
    baseline = importlib.import_module("edgeslice.pipeline.baseline")
    from edgeslice.cli import app

    calls = []
    real = pipeline.train_model

    def spy(model, dataset, options=None, **kw):
        teacher = options.teacher if options is not None else kw.get("teacher")  # TrainOptions or keywords
        calls.append((kw.get("description"), teacher, sum(p.numel() for p in model.parameters())))
        return real(model, dataset, options, **kw)

    monkeypatch.setattr(pipeline, "train_model", spy)
    monkeypatch.setattr(baseline, "train_model", spy)
    args = ["compress", "mlp", "--data", "digits", "--image-size", "8", "--train-epochs", "1", "--finetune-epochs",
            "0.2", "--calib-per-class", "5", "--theta", "0.9", "--out", str(tmp_path / "o"), "--json"]  # fmt: skip
    r = CliRunner().invoke(app, [*args, "--distill", "--distill-temperature", "3"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    by_name = {name: (teacher, n) for name, teacher, n in calls}
    teacher, n_student = by_name["fine-tune"]
    assert teacher is not None and sum(p.numel() for p in teacher.parameters()) > n_student  # dense teacher
    assert by_name["dense control fine-tune"][0] is teacher
    assert by_name[next(k for k in by_name if k.startswith("train "))][0] is None  # the baseline has no teacher
    import json

    report = json.loads(r.stdout)
    assert report["config"]["distill"] and report["config"]["distill_temperature"] == 3.0
    assert report["dense_control"]["distill"]
    calls.clear()
    r = CliRunner().invoke(app, [*args, "--no-dense-control"], catch_exceptions=False)
    assert r.exit_code == 0 and [c[1] for c in calls] == [None]  # no --distill: no teacher; no control fine-tune
    assert json.loads(r.stdout)["dense_control"] is None
