"""Router taps (class statistics version 3): the frozen channels of earlier sliced layers travel in the index, are
refused when tampered, and the routed head that reads them beats the one over the classifier inputs alone, survives
deep copies and checkpoints, and removes its hooks when unwrapped."""

from __future__ import annotations

import copy
import gzip
import json
from dataclasses import replace

import pytest
import torch

from edgeslice.bitsets import pack_bits, unpack_bits
from edgeslice.errors import IndexFileError
from edgeslice.index import CriticalIndex
from edgeslice.models import load_checkpoint, save_checkpoint
from edgeslice.ondevice import IncrementConfig, learn_increment, relabel, task_accuracy
from edgeslice.pipeline import make_prepare
from edgeslice.routed import RoutedHead, _TapHook, unwrap_routed_
from edgeslice.train import iterate_batches


@pytest.fixture(scope="module")
def index_path(task_a):
    """The task-A index (θ = 0.9: few frozen classifier inputs, so the statistics have room for taps)."""
    return task_a[0] / "critical_index"


def _write(tmp_path, d):
    p = tmp_path / "idx"
    p.write_bytes(gzip.compress(json.dumps(d).encode()))
    return p


@pytest.mark.learning
def test_taps_round_trip_and_are_refused_when_tampered(index_path, tmp_path):
    index = CriticalIndex.load(index_path)
    stats = index.class_stats
    channels = {la["name"]: la["channels"] for la in index.layers}
    assert stats.version == 3 and stats.taps, "the sliced model's statistics should read taps"
    assert all(channels[t.layer] == t.mask.numel() and t.mask.any() for t in stats.taps)
    assert stats.d == int(stats.dims.sum()) + sum(int(t.mask.sum()) for t in stats.taps) == stats.means.shape[1]
    assert stats.nbytes() <= stats.budget and stats.basis.shape[0] >= min(stats.d, 64)
    index.save(tmp_path / "again")
    back = CriticalIndex.load(tmp_path / "again").class_stats
    assert [t.layer for t in back.taps] == [t.layer for t in stats.taps]
    assert all(torch.equal(a.mask, b.mask) for a, b in zip(back.taps, stats.taps, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(back.head(), stats.head(), strict=True))

    d = json.loads(gzip.decompress(index_path.read_bytes()))
    tap = d["class_stats"]["taps"][0]
    cases = {}
    t = copy.deepcopy(d)  # same number of channels, other channels: only the checksum can tell
    mask = unpack_bits(tap["mask"], tap["channels"])
    on, off = int(mask.nonzero()[0]), int((~mask).nonzero()[0])
    mask[on], mask[off] = False, True
    t["class_stats"]["taps"][0]["mask"] = pack_bits(mask)
    cases["checksum"] = t
    t = copy.deepcopy(d)
    t["class_stats"]["taps"][0]["layer"] = "no.such.layer"
    cases["not one of the index's layers"] = t
    t = copy.deepcopy(d)
    t["class_stats"]["taps"].append(t["class_stats"]["taps"][0])
    cases["repeated"] = t
    t = copy.deepcopy(d)
    t["class_stats"]["version"] = 2
    cases["before 3"] = t
    for match, doc in cases.items():
        with pytest.raises(IndexFileError, match=match):
            CriticalIndex.load(_write(tmp_path, doc))

    # A version-2 block (no taps) still reads: the statistics over the classifier inputs alone.
    t = copy.deepcopy(d)
    v2 = stats.logits_only().to_dict()
    del v2["taps"]
    t["class_stats"] = {**v2, "version": 2}
    old = CriticalIndex.load(_write(tmp_path, t)).class_stats
    assert old.taps == [] and torch.equal(old.dims, stats.dims) and old.d == int(stats.dims.sum())


@pytest.mark.learning
def test_taps_route_better_and_the_head_survives_copies_and_checkpoints(
    task_a, index_path, tmp_path, learning_seed, measure
):
    """Digits 0-4 → 5-9, seeded: the router with taps beats the same statistics without them.

    Measured class-IL %, with / without taps: default kernels (AVX2) seed 0: 85.2 / 76.6, seed 1: 84.1 / 61.0;
    SSE4.1 seed 0: 81.3 / 78.6. The gain ranges from 2.7 to 23 points, so only the ordering is asserted.
    """
    torch.set_num_threads(1)
    folder, bundle = task_a
    index = CriticalIndex.load(index_path)
    test = relabel(bundle.test, {c: c for c in range(10)})
    new = relabel(bundle.train, {c: c for c in range(5, 10)})
    cfg = IncrementConfig(epochs=2, lr=1e-2, head="routed", seed=learning_seed)
    model, meta = load_checkpoint(folder)
    prepare = make_prepare(meta)
    grown = learn_increment(model, meta, index, new, bundle.classes[5:], cfg)
    head = grown.model.get_classifier()
    assert isinstance(head, RoutedHead) and head.tap_layers == [t.layer for t in index.class_stats.taps]
    assert grown.meta.info["head"]["taps"] and grown.index.class_stats.taps == grown.index.class_stats.taps
    acc = task_accuracy(grown.model, test, range(10), seen=10, prepare=prepare)["class_il"]

    bare = replace(index, class_stats=index.class_stats.logits_only())
    model, meta = load_checkpoint(folder)
    plain = learn_increment(model, meta, bare, new, bundle.classes[5:], cfg)
    assert plain.model.get_classifier().tap_layers == [] and "taps" not in plain.meta.info["head"]
    acc_plain = task_accuracy(plain.model, test, range(10), seen=10, prepare=prepare)["class_il"]
    assert measure("class-IL % with taps", acc, "> 70") > 70  # chance: 10
    assert measure("taps - no taps points", acc - acc_plain, "> 0") > 0, (acc, acc_plain)

    x = prepare(next(iterate_batches(test, 64))[0])
    with torch.no_grad():
        ref = grown.model(x)
        twin = copy.deepcopy(grown.model)  # its hooks follow the copy of the head, not the original
        assert torch.equal(twin(x), ref)
        with pytest.raises(RuntimeError, match="tap layers did not run"):
            head(torch.zeros(2, head.in_features))
        # The checkpoint records the taps, so the reloaded head hooks them again: bit-identical (same kernels).
        saved = save_checkpoint(grown.model, grown.meta, tmp_path / "g" / "model.safetensors")
        back, _ = load_checkpoint(tmp_path / "g")
        assert saved.info["head"]["taps"] == grown.meta.info["head"]["taps"]
        assert torch.equal(back(x), ref)
        assert unwrap_routed_(grown.model) is not None
        hooks = [h for m in grown.model.modules() for h in m._forward_hooks.values() if isinstance(h, _TapHook)]
        assert hooks == [] and torch.equal(twin(x), ref)
