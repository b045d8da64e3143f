"""Slicing tests run tiny models: one intra-op thread is as fast on a quiet machine and far faster on a shared one
(measured on the shared 2-core box: a 3-image MobileNetV3 forward took 2 s with 2 threads, 10 ms with 1)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread(_isolated_home):
    # Depends on the root conftest's fixture so it runs after it (that one sets 2 threads).
    torch.set_num_threads(1)
