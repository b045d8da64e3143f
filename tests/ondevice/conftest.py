"""Task A on the device: mobilenetv3_small_050 trained on digits 0-4, its checkpoint and its critical index."""

from __future__ import annotations

import dataclasses

import pytest
import torch

MODEL = "mobilenetv3_small_050"


@pytest.fixture(scope="session")
def task_a(tmp_path_factory, learning_seed):
    """(folder with model.safetensors + model.json + critical_index, bundle of all 10 digits)."""
    from edgeslice.data import load_data
    from edgeslice.models import create_model, save_checkpoint
    from edgeslice.ondevice import relabel
    from edgeslice.pipeline import SliceConfig, make_prepare, meta_for, slice_model
    from edgeslice.train import train_model

    torch.set_num_threads(1)
    bundle = load_data("digits", seed=0)
    keep = {c: c for c in range(5)}
    task = dataclasses.replace(
        bundle, train=relabel(bundle.train, keep), test=relabel(bundle.test, keep), classes=bundle.classes[:5]
    )
    torch.manual_seed(learning_seed)
    model = create_model(MODEL, num_classes=5, in_chans=1)
    train_model(model, task.train, epochs=6, batch_size=64, lr=1e-2, seed=learning_seed, prepare=make_prepare(task))
    meta = meta_for(model_name := "mobilenetv3_small_050", task, data="digits 0-4")
    assert meta.timm_name == model_name
    folder = tmp_path_factory.mktemp("task_a")
    save_checkpoint(model, meta, folder / "model.safetensors")
    _, _, index = slice_model(
        model, meta, task, SliceConfig(calib_per_class=10, theta=0.9), seed=learning_seed, device="cpu"
    )
    index.save(folder / "critical_index")
    return folder, bundle
