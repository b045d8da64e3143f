"""A small trained model on digits, shared by the maintenance tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def trained_digits(learning_seed):
    """mobilenetv3_small_050 trained on scikit-learn digits (32 px): (model, meta, bundle)."""
    from edgeslice.data import load_data
    from edgeslice.pipeline import train_baseline

    torch.set_num_threads(1)
    bundle = load_data("digits", seed=0)
    model, meta = train_baseline(
        "mobilenetv3_small_050",
        bundle,
        epochs=6,
        seed=learning_seed,
        device=torch.device("cpu"),
        batch_size=64,
        lr=1e-2,
    )
    from edgeslice.models import fingerprint

    meta.fingerprint = fingerprint(model)
    return model.eval(), meta, bundle
