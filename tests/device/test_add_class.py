"""``edgeslice-device add-class`` where torch cannot be imported: the grown bundle predicts the new class, keeps the
old ones, stays readable by the host, and is deterministic.

Margins (learning): measured over seeds 0/1/2 of the fixture's CNN (see ``edgeslice_device.stats``), adding the
five digits 5-9 from 20 images each gives 0.83 accuracy on the new digits and 0.97 on the old ones (0.98-0.998 with
the trained head). The asserts leave wide room: new class ≥ 0.6 (chance is 1/6 to 1/10), old classes at most 0.08 below
the trained head.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from edgeslice_device.bundle import open_bundle
from edgeslice_device.predict import predict

from .conftest import run_device

pytestmark = pytest.mark.learning


def _accuracy(bundle, pngs, digits):
    files = [p for d in digits for p in pngs[d]]
    truth = [d for d in digits for _ in pngs[d]]
    return float(np.mean([p.class_name == t for p, t in zip(predict(bundle, files), truth, strict=True)]))


def test_add_class_torch_free_then_host_compatible(bundle, class_dirs, test_pngs, measure):
    import torch
    from safetensors.torch import load_file

    from edgeslice.artifacts.manifest import check_files, read_manifest
    from edgeslice.index import CriticalIndex
    from edgeslice.models import fingerprint

    from . import _build

    old = list("01234")
    before = _accuracy(bundle, test_pngs, old)
    proc = run_device("add-class", bundle, class_dirs["5"], "--name", "5", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["classes"] == [*old, "5"] and report["images"] == 20
    assert measure("new digit accuracy", _accuracy(bundle, test_pngs, ["5"]), ">= 0.6") >= 0.6
    assert measure("old digits: after - before", _accuracy(bundle, test_pngs, old) - before, ">= -0.08") >= -0.08

    b = open_bundle(bundle)
    assert b.doc["head"] == "lda" and b.doc["history"][-1] == {
        "op": "add-class",
        "path": "device",
        "classes": ["5"],
        "images": 20,
    }
    # The host reads everything the device rewrote.
    model = _build.TinyCNN(6)
    model.load_state_dict(load_file(bundle / "model.safetensors"))
    assert fingerprint(model) == b.meta["fingerprint"] == b.fingerprint
    assert b.meta["shapes"]["classifier"]["out_features"] == 6
    index = CriticalIndex.load(bundle / "critical_index")
    assert index.classes == b.classes and index.model_fingerprint == b.fingerprint
    assert all(c.ok for c in check_files(bundle, read_manifest(bundle)))  # manifest.json kept in step
    x = torch.from_numpy(_build.to_input(np.zeros((1, 16, 16), np.uint8)))
    onnx_logits = run_features_logits(bundle, x.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(model.eval()(x).numpy(), onnx_logits, rtol=1e-5, atol=1e-4)

    out = run_device("predict", bundle, *test_pngs["5"][:3], "--json")
    assert out.returncode == 0, out.stderr
    assert [r["class"] for r in json.loads(out.stdout)].count("5") >= 2
    info = run_device("info", bundle, "--json")
    assert json.loads(info.stdout)["last_grown_by"] == "device"
    assert run_device("verify", bundle).returncode == 0


def run_features_logits(bundle, x):
    from edgeslice_device.graph import session

    sess = session((bundle / "model.onnx").read_bytes())
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_five_increments_in_a_row_keep_one_argmax(bundle, class_dirs, test_pngs, measure):
    for digit in "56789":
        proc = run_device("add-class", bundle, class_dirs[digit], "--name", digit)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"added '{digit}'")
    assert open_bundle(bundle).classes == list("0123456789")
    assert measure("new digits accuracy", _accuracy(bundle, test_pngs, list("56789")), ">= 0.6") >= 0.6
    assert measure("old digits accuracy", _accuracy(bundle, test_pngs, list("01234")), ">= 0.88") >= 0.88
    assert measure("all digits accuracy", _accuracy(bundle, test_pngs, list("0123456789")), ">= 0.75") >= 0.75
