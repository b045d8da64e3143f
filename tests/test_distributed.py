"""torch.distributed: calibration sharded by samples, solve by classes (byte-identical index), rank-0 output, DDP.

The multi-process tests launch this file as a script, once per rank, with torchrun's environment variables (gloo
on CPU, one thread per process), and time out instead of hanging.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from edgeslice import distributed

MODEL = "mobilenetv3_small_050"
CALIB = "15"  # 150 samples in chunks of 100: 100 + 50, so the ranks get 100 and 50 (uneven shards)
TIMEOUT_S = 300


# ---------------------------------------------------------------------------------------------- pure functions


def test_shards_are_round_robin_and_padded_to_equal_length():
    assert list(distributed.shard_indices(7, world=2, rank_=1)) == [1, 3, 5]
    assert list(distributed.shard_stream("abcde", world=2, rank_=0)) == ["a", "c", "e"]
    got = [list(distributed.shard_batches("abcde", world=3, rank_=r)) for r in range(3)]
    assert got == [["a", "d"], ["b", "e"], ["c", "a"]]  # the short rank repeats the first item (DistributedSampler)
    assert {len(s) for s in got} == {distributed.sharded_steps(5, world=3)}
    assert list(distributed.shard_batches("ab", world=1, rank_=0)) == ["a", "b"]
    assert not distributed.is_initialized() and distributed.is_main() and distributed.world_size() == 1


# ---------------------------------------------------------------------------------------------- launcher


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(task: str, args: dict, tmp_path: Path, world: int = 2) -> list[dict]:
    """Run ``task`` in ``world`` processes with torchrun's environment; return each rank's result document."""
    port = _free_port()
    procs = []
    for r in range(world):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": str(world),
            "RANK": str(r),
            "LOCAL_RANK": str(r),
            "OMP_NUM_THREADS": "1",
            "CUDA_VISIBLE_DEVICES": "",
        }
        result = tmp_path / f"result-{task}-{r}.json"
        cmd = [sys.executable, __file__, task, json.dumps(args), str(result)]
        log = open(tmp_path / f"log-{task}-{r}.txt", "w")  # noqa: SIM115 - closed below
        procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log, result))
    deadline = time.monotonic() + TIMEOUT_S
    try:
        # A rank that fails leaves the others waiting in a collective: stop them all at the first failure.
        while any(p.poll() is None for p, _, _ in procs) and all(p.poll() in (None, 0) for p, _, _ in procs):
            if time.monotonic() > deadline:
                pytest.fail(f"{task}: the {world} processes did not finish within {TIMEOUT_S} s")
            time.sleep(0.2)
    finally:
        for p, log, _ in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()
    logs = [(tmp_path / f"log-{task}-{r}.txt").read_text() for r in range(world)]
    for r, (p, _, _) in enumerate(procs):
        assert p.returncode == 0, f"rank {r} failed:\n{logs[r][-4000:]}"
    return [json.loads(res.read_text()) for _, _, res in procs]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained mobilenetv3_small_050 for digits (32 px, 1 channel): slicing needs no accuracy."""
    from edgeslice.data import load_data
    from edgeslice.models import create_model, save_checkpoint
    from edgeslice.pipeline import meta_for

    bundle = load_data("digits", seed=0)
    torch.manual_seed(0)
    model = create_model(MODEL, num_classes=10, in_chans=1, input_size=bundle.image_size)
    path = tmp_path_factory.mktemp("dist-ckpt") / "model.safetensors"
    save_checkpoint(model.eval(), meta_for(MODEL, bundle), path)
    return path


def _slice_args(checkpoint: Path, out: Path, *extra: str) -> list[str]:
    return ["slice", MODEL, "--checkpoint", str(checkpoint), "--data", "digits", "--calib-per-class", CALIB,
            "--out", str(out), "--json", *extra]  # fmt: skip


# The sharded runs; the single-process reference runs in the test process. Chunks of 100 (classes 0-6 | 6-9) go
# round robin: rank 0 runs chunk 0, rank 1 chunk 1; class 6 straddles both, so its rows travel between the ranks
# (rank 0 owns the even classes, rank 1 the odd ones). --class-batch is a no-op now: still one chunk per rank.
RUNS = {
    "taylor": ([], [1, 1]),
    "taylor-class-batch": (["--class-batch", "3"], [1, 1]),
    "avg": (["--metric", "avg"], [1, 1]),
}


@pytest.fixture(scope="module")
def two_ranks(checkpoint, tmp_path_factory) -> tuple[list[dict], Path]:
    """One launch of 2 gloo processes for every multi-process check (starting processes is the slow part)."""
    tmp = tmp_path_factory.mktemp("two-ranks")
    watched = tmp / "runs"
    docs = _launch("all", {"checkpoint": str(checkpoint), "out": str(watched), "watch": str(watched)}, tmp)
    return docs, watched


def test_two_gloo_ranks_write_the_single_process_index_byte_for_byte(checkpoint, two_ranks, tmp_path):
    from typer.testing import CliRunner

    from edgeslice.cli import app

    docs, watched = two_ranks
    for name, (extra, chunks) in RUNS.items():
        single = tmp_path / f"single-{name}"
        r = CliRunner().invoke(app, _slice_args(checkpoint, single, *extra))
        assert r.exit_code == 0, r.output
        a, b = single / "critical_index", watched / name / "critical_index"
        assert a.read_bytes() == b.read_bytes(), f"{name}: sharded index differs from the single-process one"
        layers = json.loads((single / "slice.json").read_text())["layers"]
        assert layers == json.loads((watched / name / "slice.json").read_text())["layers"]
        assert json.loads(docs[0]["stdout"][name])["critical_channels"] > 0  # rank 0 printed the JSON document
        assert docs[1]["stdout"][name] == ""  # rank 1 printed nothing
        assert [docs[0]["batches"][name], docs[1]["batches"][name]] == chunks
    assert docs[1]["writes"] == [], f"rank 1 wrote into the output tree: {docs[1]['writes'][:5]}"
    assert docs[0]["writes"], "the write recorder saw nothing (the check would be vacuous)"
    assert sorted(p.name for p in watched.iterdir()) == sorted(RUNS)  # no staging folders left behind


def test_ddp_training_keeps_frozen_rows_bit_identical_and_ranks_in_step(two_ranks):
    docs = [d["ddp"] for d in two_ranks[0]]
    for d in docs:
        assert d["partial"]["max_drift"] == 0.0 and d["frozen_unchanged"]
        assert d["partial"]["steps"] == 2 * 2  # 3 batches over 2 ranks: ceil(3/2) steps per epoch, 2 epochs
        assert d["train_steps"] == 3  # 5 batches of 16 per epoch: 3 steps per rank
    assert docs[0]["trainable_moved"]
    assert docs[0]["state_sha"] == docs[1]["state_sha"]  # identical weights and BN statistics on both ranks
    assert docs[0]["train_sha"] == docs[1]["train_sha"]
    assert docs[0]["accuracy"] == docs[1]["accuracy"]  # sharded evaluation, counts summed over ranks


# ---------------------------------------------------------------------------------------------- rank workers


def _state_sha(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _worker_slice(args: dict) -> dict:
    from typer.testing import CliRunner

    from edgeslice.cli import app
    from edgeslice.slicing import stats as stats_mod

    watch = os.path.abspath(args["watch"])
    writes: list[str] = []

    def audit(event: str, a: tuple) -> None:
        path = None
        if event == "open" and isinstance(a[0], (str, bytes, os.PathLike)):
            mode, flags = a[1], a[2]
            if (mode and any(ch in mode for ch in "wax+")) or (not mode and flags & (os.O_WRONLY | os.O_RDWR)):
                path = a[0]
        elif event in ("os.rename", "os.mkdir", "os.remove", "shutil.rmtree"):
            path = a[1] if event == "os.rename" else a[0]
        if path is not None and os.path.abspath(os.fsdecode(path)).startswith(watch):
            writes.append(f"{event} {os.fsdecode(path)}")

    sys.addaudithook(audit)
    batches: dict[str, int] = {}
    original = stats_mod._run_chunk

    def counting(*args):
        batches[name] += 1
        return original(*args)

    stats_mod._run_chunk = counting
    stdout = {}
    for name, (extra, _) in RUNS.items():
        batches[name] = 0
        r = CliRunner().invoke(app, _slice_args(Path(args["checkpoint"]), Path(args["out"]) / name, *extra))
        if r.exit_code != 0:
            raise RuntimeError(f"{name}: exit {r.exit_code}\n{r.output}\n{r.exception!r}")
        stdout[name] = r.stdout
    return {"writes": writes, "stdout": stdout, "batches": batches}


def _worker_ddp(args: dict) -> dict:
    import timm
    import torch.nn.functional as F

    from edgeslice.ondevice.freeze import channel_groups, make_plan
    from edgeslice.ondevice.loop import LoopConfig, train_partial
    from edgeslice.slicing import find_layers
    from edgeslice.train import evaluate, train_model

    distributed.init_from_env(torch.device("cpu"))
    assert distributed.world_size() == 2
    torch.manual_seed(0)  # same model on every rank, as the CLI's setup() seeds
    model = timm.create_model(MODEL, in_chans=1, num_classes=10)
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    example = torch.rand(2, 1, 32, 32, generator=g)
    layers = find_layers(model.eval(), example)
    groups = channel_groups(model, layers, example)
    masks = {gr.layer: torch.rand(gr.channels, generator=g) < 0.5 for gr in groups}
    plan = make_plan(model, groups, masks, classifier=torch.arange(10) >= 6)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    data = [(torch.rand(16, 1, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(3)]

    def two_forwards(net, batch):  # as readapt does (clean + adversarial): two forwards, one backward under DDP
        x, y = batch
        return F.cross_entropy(net(x), y) + F.cross_entropy(net(1.0 - x), y)

    cfg = LoopConfig(epochs=2, lr=5e-2, weight_decay=0.1, optimizer="adamw")
    partial = train_partial(model, plan, lambda e: data, two_forwards, cfg, steps_per_epoch=len(data))
    after = model.state_dict()
    frozen_unchanged = all(
        torch.equal(before[n][~m], after[n][~m]) if before[n].dim() else torch.equal(before[n], after[n])
        for n, m in plan.masks.items()
    )
    trainable_moved = any(
        bool((before[n][m] != after[n][m]).any()) for n, m in plan.masks.items() if before[n].dim() and m.any()
    )
    state_sha = _state_sha(model)

    from edgeslice.data import ArrayDataset

    images = (torch.rand(80, 1, 32, 32, generator=g) * 255).to(torch.uint8)
    labels = torch.randint(0, 10, (80,), generator=g)
    ds = ArrayDataset(images, labels)
    stats = train_model(model, ds, epochs=1, batch_size=16, lr=1e-2, seed=0)
    acc = evaluate(model, ds, batch_size=16)
    return {
        "partial": {"max_drift": partial["max_drift"], "steps": partial["steps"]},
        "frozen_unchanged": frozen_unchanged,
        "trainable_moved": trainable_moved,
        "state_sha": state_sha,
        "train_steps": stats["steps"],
        "train_sha": _state_sha(model),
        "accuracy": acc,
    }


if __name__ == "__main__":
    torch.set_num_threads(1)
    os.environ.setdefault("EDGESLICE_HOME", os.path.join(os.path.dirname(sys.argv[3]), "edgeslice-home"))
    task, raw, result_path = sys.argv[1], sys.argv[2], sys.argv[3]
    assert task == "all"
    doc = _worker_slice(json.loads(raw))  # the CLI joins the process group (setup)
    doc["ddp"] = _worker_ddp(json.loads(raw))
    doc["rank"] = distributed.rank()
    distributed.barrier()
    with open(result_path + ".tmp", "w") as f:
        json.dump(doc, f)
    os.replace(result_path + ".tmp", result_path)
    distributed.cleanup()
