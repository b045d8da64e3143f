"""Bad input, tried as a new user would, across every command: a short message, exit 1 or 2, nothing written.

Each case is one row of :data:`CASES`: a name, a function of the prepared inputs returning the command line (without
``--out``), the exit code and a piece of the message. Every case asserts the same contract:

- exit code 1 (a failure the user can act on: one line on stderr) or 2 (a usage error: Typer's short panel);
- no traceback on stdout or stderr;
- nothing in ``--out`` (a folder the case did not create stays absent; a pre-existing one keeps exactly its files);
- the user's other files untouched (a sentinel file beside ``--out`` and every prepared input keep their bytes).
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edgeslice.cli import app

runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _folder(root: Path, classes: dict[str, int], size: int = 16, seed: int = 0) -> Path:
    """An ImageFolder ``root/train/<class>/*.png`` with ``classes[name]`` random grayscale images each."""
    rng = np.random.default_rng(seed)
    for name, n in classes.items():
        d = root / "train" / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8), mode="L").save(d / f"{i}.png")
    return root


@dataclass
class Inputs:
    """Everything the cases point at, prepared once (digits MLP checkpoint, its index, folders, broken files)."""

    root: Path
    ck: Path  # a digits MLP checkpoint (model.safetensors, model.json beside it)
    index: Path

    def p(self, name: str) -> Path:
        return self.root / name


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    root = tmp_path_factory.mktemp("bad-input")
    r = _invoke("train", "mlp", "--data", "digits", "--epochs", "2", "--out", root / "ck", "--device-type", "cpu")
    assert r.exit_code == 0, r.output
    r = _invoke(
        "slice", "mlp", "--checkpoint", root / "ck" / "model.safetensors", "--data", "digits",
        "--calib-per-class", "5", "--out", root / "slice", "--device-type", "cpu",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    ck, index = root / "ck" / "model.safetensors", root / "slice" / "critical_index"

    empty = root / "empty"
    empty.mkdir()
    (empty / "model.safetensors").write_bytes(b"")
    (empty / "model.json").write_bytes((root / "ck" / "model.json").read_bytes())
    raw = ck.read_bytes()
    trunc = root / "trunc"
    trunc.mkdir()
    (trunc / "model.safetensors").write_bytes(raw[: len(raw) // 3])
    (trunc / "model.json").write_bytes((root / "ck" / "model.json").read_bytes())
    text = root / "text"
    text.mkdir()
    (text / "model.safetensors").write_text("this is not a checkpoint")
    (text / "model.json").write_bytes((root / "ck" / "model.json").read_bytes())
    tampered = root / "tampered"
    tampered.mkdir()
    (tampered / "model.safetensors").write_bytes(raw)
    side = json.loads((root / "ck" / "model.json").read_text())
    side["in_chans"] = 3  # the sidecar no longer describes the weights
    (tampered / "model.json").write_text(json.dumps(side))
    nosidecar = root / "nosidecar"
    nosidecar.mkdir()
    (nosidecar / "model.safetensors").write_bytes(raw)
    (root / "garbage_index").write_bytes(b"\x1f\x8b not really gzip")
    (root / "trunc_index").write_bytes(index.read_bytes()[:40])
    (root / "json_index").write_bytes(gzip.compress(b'{"format": "something-else"}'))

    (root / "emptydir").mkdir()
    _folder(root / "oneclass", {"cat": 6})
    _folder(root / "renamed", {n: 4 for n in "abcdefghij"}, size=32)  # 10 classes like digits, other names
    _folder(root / "emptyclass", {"cat": 6, "dog": 0})
    noimg = root / "noimages" / "train"
    for c in ("cat", "dog"):
        (noimg / c).mkdir(parents=True)
        (noimg / c / "readme.txt").write_text("no pictures here")
    corrupt = _folder(root / "corrupt", {"cat": 4, "dog": 4})
    (corrupt / "train" / "dog" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")

    (root / "unknown_key.toml").write_text('model = "mlp"\ndata = "digits"\nnot_a_setting = 1\n')
    (root / "wrong_type.toml").write_text('model = "mlp"\ndata = "digits"\nseed = "zero"\n')
    (root / "broken.toml").write_text('model = "mlp\ndata = [digits\n')
    (root / "dev_unknown.toml").write_text('name = "x"\nwarp_drive = true\n')
    (root / "dev_broken.toml").write_text("name = = 3\n")
    (root / "a_file").write_text("I am a file")
    return Inputs(root, ck, index)


def _ck(i: Inputs, *rest: str) -> list:
    return ["--checkpoint", i.ck, *rest]


#: (name, command line from the prepared inputs, exit code, a piece of stderr). Adding a case is one line.
CASES: list[tuple[str, Callable[[Inputs], list], int, str]] = [
    # options
    ("theta above 1", lambda i: ["compress", "mlp", "--data", "digits", "--theta", "1.5"], 2, "(0, 1]"),
    ("theta zero", lambda i: ["slice", "mlp", *_ck(i), "--data", "digits", "--theta", "0"], 2, "(0, 1]"),
    ("ratio zero", lambda i: ["slice", "mlp", *_ck(i), "--data", "digits", "--ratio", "0"], 2, "(0, 1]"),
    ("calib zero", lambda i: ["compress", "mlp", "--data", "digits", "--calib-per-class", "0"], 2, "calib-per-class"),
    ("batch size zero", lambda i: ["train", "mlp", "--data", "digits", "--batch-size", "0"], 2, "batch-size"),
    ("epochs zero", lambda i: ["train", "mlp", "--data", "digits", "--epochs", "0"], 2, "must be > 0"),
    ("round-to zero", lambda i: ["compress", "mlp", "--data", "digits", "--round-to", "0"], 2, "round-to"),
    ("image size 4 px", lambda i: ["compress", "mlp", "--data", "digits", "--image-size", "4"], 2, "image-size"),
    ("unknown device type", lambda i: ["compress", "mlp", "--data", "digits", "--device-type", "tpu"], 2, "tpu"),
    ("unknown precision", lambda i: ["compress", "mlp", "--data", "digits", "--quantize", "int4"], 2, "int4"),
    ("unknown metric", lambda i: ["slice", "mlp", *_ck(i), "--data", "digits", "--metric", "magic"], 2, "magic"),
    (
        "prune step 1.5",
        lambda i: ["prune", "mlp", *_ck(i), "--data", "digits", "--pruner", "lamp", "--prune-step", "1.5"],
        2,
        "got 1.5",
    ),  # fmt: skip
    (
        "unknown device profile",
        lambda i: ["compress", "mlp", "--data", "digits", "--device", "toaster-9000"],
        1,
        "toaster-9000",
    ),  # fmt: skip
    ("unknown model", lambda i: ["compress", "no-such-model", "--data", "digits"], 1, "unknown model"),
    ("unknown dataset", lambda i: ["train", "mlp", "--data", "imagenet-21k"], 1, "unknown dataset"),
    # files
    (
        "checkpoint missing",
        lambda i: ["slice", "mlp", "--checkpoint", i.p("nope.safetensors"), "--data", "digits"],
        2,
        "does not exist",
    ),  # fmt: skip
    (
        "checkpoint empty",
        lambda i: ["slice", "mlp", "--checkpoint", i.p("empty/model.safetensors"), "--data", "digits"],
        1,
        "checkpoint",
    ),  # fmt: skip
    (
        "checkpoint truncated",
        lambda i: ["compress", "mlp", "--checkpoint", i.p("trunc/model.safetensors"), "--data", "digits"],
        1,
        "cannot read checkpoint",
    ),  # fmt: skip
    (
        "checkpoint not safetensors",
        lambda i: ["slice", "mlp", "--checkpoint", i.p("text/model.safetensors"), "--data", "digits"],
        1,
        "checkpoint",
    ),  # fmt: skip
    (
        "checkpoint sidecar tampered",
        lambda i: ["slice", "mlp", "--checkpoint", i.p("tampered/model.safetensors"), "--data", "digits"],
        1,
        "checkpoint",
    ),  # fmt: skip
    (
        "plain checkpoint of the wrong shape",
        lambda i: ["slice", "mlp", "--checkpoint", i.p("nosidecar/model.safetensors"), "--data", "digits"],
        1,
        "does not fit",
    ),  # fmt: skip
    (
        "checkpoint of another model",
        lambda i: ["compress", "resnet18", *_ck(i), "--data", "digits"],
        1,
        "not 'resnet18'",
    ),
    (
        "checkpoint for other classes",
        lambda i: ["compress", "mlp", *_ck(i), "--data", i.p("renamed")],
        1,
        "classes",
    ),  # fmt: skip
    (
        "checkpoint for other class names (slice)",
        lambda i: ["slice", "mlp", *_ck(i), "--data", i.p("renamed")],
        1,
        "differ from the data's",
    ),  # fmt: skip
    (
        "checkpoint vs --image-size",
        lambda i: ["compress", "mlp", *_ck(i), "--data", "digits", "--image-size", "48"],
        1,
        "px",
    ),  # fmt: skip
    (
        "index missing",
        lambda i: ["readapt", "mlp", *_ck(i), "--index", i.p("nope_index"), "--data", "digits", "--attack", "fgsm"],
        2,
        "does not exist",
    ),  # fmt: skip
    (
        "index not gzip",
        lambda i: ["readapt", "mlp", *_ck(i), "--index", i.p("garbage_index"), "--data", "digits", "--attack", "fgsm"],
        1,
        "index",
    ),  # fmt: skip
    (
        "index truncated",
        lambda i: ["increment", *_ck(i), "--index", i.p("trunc_index"), "--new-data", "digits"],
        1,
        "index",
    ),  # fmt: skip
    (
        "index of another format",
        lambda i: ["increment", *_ck(i), "--index", i.p("json_index"), "--new-data", "digits"],
        1,
        "index",
    ),  # fmt: skip
    ("index as checkpoint", lambda i: ["slice", "mlp", "--checkpoint", i.index, "--data", "digits"], 1, "checkpoint"),
    ("verify a folder without manifest", lambda i: ["verify", i.p("emptydir")], 1, "manifest"),
    # folders
    ("data folder empty", lambda i: ["compress", "mlp", "--data", i.p("emptydir")], 1, "train/"),
    ("data with one class", lambda i: ["compress", "mlp", "--data", i.p("oneclass")], 1, "at least 2"),
    ("data with one class (train)", lambda i: ["train", "mlp", "--data", i.p("oneclass")], 1, "at least 2"),
    ("data class without images", lambda i: ["compress", "mlp", "--data", i.p("emptyclass")], 1, "dog"),
    ("data without images", lambda i: ["compress", "mlp", "--data", i.p("noimages")], 1, "no images"),
    ("data with a corrupt image", lambda i: ["train", "mlp", "--data", i.p("corrupt")], 1, "0.png"),
    (
        "out is a file",
        lambda i: ["compress", "mlp", *_ck(i), "--data", "digits", "--out", i.p("a_file")],
        1,
        "not a folder",
    ),  # fmt: skip
    (
        "out below a file",
        lambda i: ["train", "mlp", "--data", "digits", "--out", i.p("a_file") / "sub"],
        1,
        "not a folder",
    ),  # fmt: skip
    # recipes and device profiles
    ("recipe unknown key", lambda i: ["run", i.p("unknown_key.toml")], 1, "not_a_setting"),
    ("recipe wrong type", lambda i: ["run", i.p("wrong_type.toml")], 1, "seed"),
    ("recipe broken TOML", lambda i: ["run", i.p("broken.toml")], 1, "broken.toml"),
    ("recipe unknown name", lambda i: ["run", "no-such-recipe"], 1, "no-such-recipe"),
    ("recipe bad --set", lambda i: ["run", "mobilenetv3-fashion-mnist", "--set", "slicing.theta=2"], 1, "theta"),
    ("device profile unknown key", lambda i: ["devices", "show", i.p("dev_unknown.toml")], 1, "warp_drive"),
    ("device profile broken TOML", lambda i: ["devices", "show", i.p("dev_broken.toml")], 1, "dev_broken.toml"),
    (
        "compress with a broken profile",
        lambda i: ["compress", "mlp", "--data", "digits", "--device", i.p("dev_broken.toml")],
        1,
        "dev_broken.toml",
    ),  # fmt: skip
]


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(("name", "make", "code", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_cleanly(inputs, tmp_path, name, make, code, message):
    args = make(inputs)
    takes_out = args[0] not in ("verify", "devices")
    out = tmp_path / "out"
    if "--out" in args:
        out = Path(args[args.index("--out") + 1])
    elif takes_out:
        args = [*args, "--out", out]
    (tmp_path / "mine.txt").write_text("the user's file")
    before = _snapshot(inputs.root)
    out_before = _snapshot(out) if out.is_dir() else None
    existed = out.exists()

    if takes_out and "--device-type" not in args:
        args = [*args, "--device-type", "cpu"]
    r = _invoke(*args)

    assert r.exit_code == code, (r.exit_code, r.stdout[-500:], r.stderr[-500:])
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith("[edgeslice] ")]  # progress aside
    assert len(lines) == 1 if code == 1 else len(lines) <= 12, r.stderr
    if existed:
        assert (_snapshot(out) if out.is_dir() else None) == out_before
    else:
        assert not out.exists()
    assert (tmp_path / "mine.txt").read_text() == "the user's file"
    assert _snapshot(inputs.root) == before
    if out.parent.is_dir():
        assert not [p for p in out.parent.iterdir() if ".staging." in p.name]


def test_the_suite_tries_at_least_30_bad_inputs():
    assert len(CASES) >= 30
    commands = {make(Inputs(Path("/x"), Path("/x/ck"), Path("/x/i")))[0] for _, make, _, _ in CASES}
    assert commands >= {"train", "slice", "compress", "readapt", "increment", "prune", "run", "verify", "devices"}


def test_a_baseline_near_chance_is_compressed_with_a_warning(tmp_path):
    import torch

    from edgeslice.data import load_data
    from edgeslice.models import create_model, save_checkpoint
    from edgeslice.pipeline import meta_for

    bundle = load_data("digits", seed=0)
    torch.manual_seed(0)
    net = create_model("mlp", num_classes=10, in_chans=1, input_size=bundle.image_size)
    with torch.no_grad():
        net.get_classifier().weight.zero_()  # every input gets the same logits: accuracy is that of one class
        net.get_classifier().bias.copy_(torch.arange(10.0))
    save_checkpoint(net, meta_for("edgeslice_mlp", bundle), tmp_path / "ck" / "model.safetensors")
    out = tmp_path / "out"
    r = _invoke(
        "compress", "mlp", "--checkpoint", tmp_path / "ck" / "model.safetensors", "--data", "digits",
        "--calib-per-class", "5", "--finetune-epochs", "0", "--round-to", "1", "--out", out, "--device-type", "cpu",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "near chance" in r.stderr, (r.stderr, json.loads((out / "report.json").read_text())["accuracy_before"])
    report = json.loads((out / "report.json").read_text())
    assert report["accuracy_before"] < 15 and any("near chance" in w for w in report["warnings"])


def test_near_chance_is_relative_to_the_class_count():
    from edgeslice.pipeline import near_chance_warning

    assert near_chance_warning(12.0, 10) and near_chance_warning(54.0, 2)
    assert near_chance_warning(85.0, 10) is None and near_chance_warning(70.0, 2) is None
