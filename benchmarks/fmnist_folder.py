"""Write Fashion-MNIST as an RGB PNG ImageFolder (``OUT/train/<class>/*.png``, ``OUT/val/<class>/*.png``).

What a user brings: a folder of photos, read through edgeslice's streaming path (timm's transforms, any size).
The 28-px grayscale images are saved as RGB PNGs (the gray value in all three channels); ``--image-size`` of the
command that reads the folder decides the resolution (e.g. 64). Reads the Debian package's IDX files
(``apt-get install -y dataset-fashion-mnist``) or any folder holding the four ``*-idx?-ubyte.gz`` files.

    python benchmarks/fmnist_folder.py /tmp/fmnist-rgb --train-per-class 1000 --val-per-class 200
    python benchmarks/fmnist_folder.py /tmp/fmnist-a --gray --classes 0 1 2 3 4 --train-per-class 1000   # 28-px L
    python benchmarks/fmnist_folder.py /tmp/fmnist-64 --size 64 --classes 0 1 2 3 4                   # 64-px RGB
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def write_split(
    images: np.ndarray,
    labels: np.ndarray,
    out: Path,
    per_class: int | None,
    *,
    gray: bool = False,
    size: int = 28,
    classes: list[int] | None = None,
) -> int:
    written = 0
    for c, name in enumerate(CLASSES):
        if classes is not None and c not in classes:
            continue
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        idx = np.flatnonzero(labels == c)[:per_class]
        for i in idx:
            im = Image.fromarray(images[i], "L")
            if size != im.width:
                im = im.resize((size, size), Image.BICUBIC)
            (im if gray else im.convert("RGB")).save(d / f"{i:05d}.png")
        written += len(idx)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--source", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    ap.add_argument("--train-per-class", type=int, default=None, help="first N per class (default: all 6,000)")
    ap.add_argument("--val-per-class", type=int, default=None, help="first N per class (default: all 1,000)")
    ap.add_argument("--gray", action="store_true", help="grayscale PNGs (default: the gray value in RGB)")
    ap.add_argument("--size", type=int, default=28, help="side in px (bicubic from 28; default 28, unchanged)")
    ap.add_argument("--classes", type=int, nargs="+", default=None, help="class indices to write (default: all)")
    args = ap.parse_args()
    opts = {"gray": args.gray, "size": args.size, "classes": args.classes}
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} is not empty: choose a new folder")
    src = args.source
    n_train = write_split(
        read_idx(src / "train-images-idx3-ubyte.gz"),
        read_idx(src / "train-labels-idx1-ubyte.gz"),
        args.out / "train",
        args.train_per_class,
        **opts,
    )
    n_val = write_split(
        read_idx(src / "t10k-images-idx3-ubyte.gz"),
        read_idx(src / "t10k-labels-idx1-ubyte.gz"),
        args.out / "val",
        args.val_per_class,
        **opts,
    )
    kind = f"{args.size}-px {'grayscale' if args.gray else 'RGB'}"
    n_cls = len(args.classes) if args.classes else len(CLASSES)
    print(f"{args.out}: {n_train} training and {n_val} validation {kind} PNGs in {n_cls} classes")


if __name__ == "__main__":
    main()
