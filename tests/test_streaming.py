"""Streamed ImageFolder trees: every image format loads, nothing is held in memory, transforms are timm's."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgeslice.data import DataError, ImageFolderStream, load_data, open_image, training_view
from edgeslice.train import iterate_batches, train_model


def _save(path: Path, im: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kw)
    return path


def _pattern(size: tuple[int, int], seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


@pytest.fixture()
def mixed(tmp_path: Path) -> Path:
    """RGB, grayscale, palette (with transparency), 16-bit PNG, JPEG, EXIF-rotated JPEG, all different sizes."""
    a, b = tmp_path / "train" / "a", tmp_path / "train" / "b"
    _save(a / "rgb.png", _pattern((40, 30), 0))
    _save(a / "gray.png", _pattern((33, 35), 1, "L"))
    pal = _pattern((24, 24), 2).convert("P", palette=Image.ADAPTIVE, colors=16)
    _save(a / "palette.png", pal, transparency=0)
    _save(b / "deep.png", Image.fromarray(np.full((20, 26), 65535, dtype=np.uint16)))  # 16-bit white
    _save(b / "photo.jpg", _pattern((50, 40), 3), quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    _save(b / "rotated.jpg", _pattern((48, 24), 4), exif=exif.tobytes())
    return tmp_path


def test_every_format_loads_and_streams(mixed: Path) -> None:
    bundle = load_data(str(mixed), image_size=32, workers=0, seed=0)
    assert isinstance(bundle.train, ImageFolderStream) and not hasattr(bundle.train, "images")
    assert (bundle.in_chans, bundle.image_size, bundle.classes) == (3, 32, ["a", "b"])
    assert bundle.mean == pytest.approx((0.485, 0.456, 0.406))  # timm's data config, not a pass over the data
    assert "streamed" in bundle.source
    assert len(bundle.train) + len(bundle.test) == 6
    everything = [bundle.train[i] for i in range(len(bundle.train))] + [bundle.test[i] for i in range(len(bundle.test))]
    for x, _ in everything:
        assert x.dtype == torch.uint8 and x.shape == (3, 32, 32)
    assert open_image(mixed / "train" / "b" / "rotated.jpg", gray=False).size == (24, 48)  # EXIF applied
    deep = np.asarray(open_image(mixed / "train" / "b" / "deep.png", gray=True))
    assert deep.min() == 255  # 16-bit white scaled to 8 bits, not clipped from 65535 by accident of a cast


def test_grayscale_folder_one_channel(tmp_path: Path) -> None:
    for c in ("x", "y"):
        for i in range(3):
            _save(tmp_path / "train" / c / f"{i}.png", _pattern((30, 30), i, "L"))
    bundle = load_data(str(tmp_path), image_size=16, workers=0)
    assert bundle.in_chans == 1 and bundle.train[0][0].shape == (1, 16, 16)
    assert bundle.mean == pytest.approx(((0.485 + 0.456 + 0.406) / 3,))


def test_workers_give_the_same_batches(mixed: Path) -> None:
    """Same decode, same transform, same order: equal bytes with 0 and 2 worker processes (by construction)."""
    one = load_data(str(mixed), image_size=32, workers=0, seed=0)
    two = load_data(str(mixed), image_size=32, workers=2, seed=0)
    a = torch.cat([x for x, _ in iterate_batches(one.train, 2)])
    b = torch.cat([x for x, _ in iterate_batches(two.train, 2)])
    assert a.dtype == torch.float32 and float(a.max()) <= 1.0
    assert torch.equal(a, b)


def test_eval_transform_is_deterministic_and_augmentation_is_not(mixed: Path) -> None:
    bundle = load_data(str(mixed), image_size=32, workers=0)
    assert torch.equal(bundle.train[0][0], bundle.train[0][0])
    assert training_view(bundle.train, augment=True) is bundle.train  # auto: no augmentation up to 64 px
    aug = training_view(bundle.train, augment="small")
    assert aug is not bundle.train and aug.train and not bundle.train.train
    torch.manual_seed(0)
    views = [aug[0][0] for _ in range(4)]
    assert any(not torch.equal(views[0], v) for v in views[1:])  # random crops / flips / jitter
    assert training_view(bundle.train, augment=False) is bundle.train
    sub = torch.utils.data.Subset(bundle.train, [1, 0])
    assert training_view(sub, "small").dataset.train and training_view(sub, "small").indices == [1, 0]


@pytest.mark.parametrize("augment", ["small", "timm", True, False])
def test_train_model_reads_the_train_transform_only_when_augmenting(mixed, monkeypatch, augment) -> None:
    seen: list[bool] = []
    original = ImageFolderStream.__getitem__

    def spy(self, i):
        seen.append(self.train)
        return original(self, i)

    monkeypatch.setattr(ImageFolderStream, "__getitem__", spy)
    bundle = load_data(str(mixed), image_size=32, workers=0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 2))
    train_model(model, bundle.train, epochs=1, batch_size=2, augment=augment)
    assert seen and set(seen) == {augment in ("small", "timm")}  # True (auto) at 32 px: none


def test_corrupt_image_one_line_error_naming_the_file(tmp_path: Path) -> None:
    for c in ("a", "b"):
        for i in range(2):
            _save(tmp_path / "train" / c / f"{i}.png", _pattern((20, 20), i))
    buf = io.BytesIO()
    _pattern((64, 64), 9).save(buf, format="PNG")
    broken = tmp_path / "train" / "b" / "2.png"
    broken.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])  # valid header, truncated data
    bundle = load_data(str(tmp_path), image_size=16, workers=1)  # headers are fine: the error comes per batch
    with pytest.raises(DataError) as err:
        for _ in iterate_batches(bundle.train, 2):
            pass
    assert str(broken) in str(err.value) and "\n" not in str(err.value) and "worker" not in str(err.value)
    (tmp_path / "train" / "a" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="unreadable image"):
        load_data(str(tmp_path))


def test_fewer_than_two_classes_or_an_empty_class(tmp_path: Path) -> None:
    _save(tmp_path / "train" / "only" / "0.png", _pattern((8, 8), 0))
    with pytest.raises(DataError, match="at least 2 classes"):
        load_data(str(tmp_path))
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(DataError, match="'empty' has no images"):
        load_data(str(tmp_path))


@pytest.mark.slow  # ~90 s on 2 shared cores: two compress runs
def test_compress_on_a_streamed_folder_is_reproducible(tmp_path: Path) -> None:
    """compress runs end to end on a streamed RGB folder; the critical index is byte-identical run to run."""
    from typer.testing import CliRunner

    from edgeslice.cli import app

    for c, color in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        for i in range(10):
            im = Image.fromarray(
                np.clip(np.asarray(_pattern((36, 36), i)) // 4 + np.array(color), 0, 255).astype("uint8")
            )
            _save(tmp_path / "data" / "train" / c / f"{i}.png", im)
    args = ["compress", "mobilenetv3_small_050", "--data", str(tmp_path / "data"), "--image-size", "32",
            "--train-epochs", "1", "--finetune-epochs", "0.5", "--calib-per-class", "4", "--batch-size", "8",
            "--workers", "1", "--json"]  # fmt: skip
    runs = []
    for k in range(2):
        r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / f"out{k}")], catch_exceptions=False)
        assert r.exit_code == 0, r.output
        runs.append(json.loads(r.output))
    assert (tmp_path / "out0" / "critical_index").read_bytes() == (tmp_path / "out1" / "critical_index").read_bytes()
    assert runs[0]["dense_control"]["accuracy"] >= 0 and runs[0]["data"]["in_chans"] == 3
    assert runs[1]["baseline"]["from_cache"]


def test_slice_reads_a_folder_with_the_checkpoints_data_config(tmp_path: Path) -> None:
    """slice on a plain state dict reads the folder as compress does: the model's timm config (fbnetc_100: bilinear,
    not timm's bicubic default), at the checkpoint's input size."""
    import timm
    from typer.testing import CliRunner

    from edgeslice.cli import app

    for c in ("a", "b"):
        for i in range(3):
            _save(tmp_path / "data" / "train" / c / f"{i}.png", _pattern((40, 36), i + (10 if c == "b" else 0)))
    torch.manual_seed(0)
    torch.save(timm.create_model("fbnetc_100", num_classes=2).state_dict(), tmp_path / "user.pth")
    out = tmp_path / "out"
    args = ["slice", "fbnetc_100", "--checkpoint", str(tmp_path / "user.pth"), "--data", str(tmp_path / "data")]
    r = CliRunner().invoke(app, [*args, "--calib-per-class", "2", "--workers", "0", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    source = json.loads((out / "slice.json").read_text())["data"]
    assert "bilinear" in source and "crop_pct 0.875" in source, source
