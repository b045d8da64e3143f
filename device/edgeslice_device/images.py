"""Image files read the way the host reads them, and refused (one line naming the file) when they cannot be."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .errors import BundleError
from .preprocess import Preprocess

#: File suffixes taken from an image folder (the host's ImageFolder extensions).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DEFAULT_MIN_IMAGES = 5
# Pillow modes by the channel count the host would read them as; other modes (P, CMYK, YCbCr, ...) are colour.
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def list_images(folder: str | Path, *, min_images: int = DEFAULT_MIN_IMAGES) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name.

    Raises:
        BundleError: not a folder, no images, or fewer than ``min_images``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"image folder {folder} does not exist or is not a folder")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BundleError(f"image folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)})")
    if len(files) < min_images:
        raise BundleError(f"image folder {folder} has {len(files)} images; at least {min_images} are needed")
    return files


def read_image(path: str | Path, preprocess: Preprocess) -> np.ndarray:
    """Decode one image as the bundle's model reads it: float32 (C, H, W) (see :func:`read_pixels`).

    Raises:
        BundleError: unreadable file, or a colour image for a grayscale bundle (or the reverse).
    """
    return preprocess.normalize(read_image_pixels(path, preprocess))


def read_image_pixels(path: str | Path, preprocess: Preprocess) -> np.ndarray:
    """Decode one image as the bundle's model reads it, before normalisation: uint8 (C, H, W).

    EXIF orientation is applied; 16/32-bit grayscale is scaled to 8 bits and palette images with transparency go
    through RGBA, as on the host. An image whose channel count is not the bundle's is refused, not converted: a
    grayscale model given colour photos (or the reverse) would learn from inputs unlike its training data.

    Raises:
        BundleError: unreadable file, or a colour image for a grayscale bundle (or the reverse).
    """
    from PIL import Image, ImageOps

    path = Path(path)
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            gray = im.mode in _GRAY_MODES or (im.mode == "P" and _gray_palette(im))
            if gray != (preprocess.channels == 1):
                kind, want = ("grayscale", "RGB") if gray else ("colour", "grayscale")
                raise BundleError(f"image {path} is {kind} ({im.mode}) but the bundle's model reads {want} images")
            if im.mode.startswith("I") or im.mode == "F":
                arr = np.asarray(im, dtype=np.float64)
                im = Image.fromarray(np.rint(arr * (255.0 / max(float(arr.max()), 255.0))).astype(np.uint8))
            elif im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
            im = im.convert(preprocess.color)
            im.load()
            return preprocess.pixels(im)
    except BundleError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise BundleError(f"unreadable image {path}: {' '.join(str(e).split())}") from e


def _gray_palette(im: object) -> bool:
    """Whether a palette image uses only gray entries (a grayscale image saved with a palette)."""
    palette = im.getpalette() or []  # type: ignore[attr-defined]
    return all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3))


def read_pixels(paths: Sequence[str | Path], preprocess: Preprocess) -> np.ndarray:
    """Decode every image (all are checked before any work is done on them): uint8 (n, C, H, W), resized and
    cropped; :meth:`Preprocess.normalize` makes a batch of them the model's input. Filled in place (stacking a list
    would hold every image twice at the peak)."""
    if not paths:
        return np.zeros((0, preprocess.channels, *preprocess.input_size), dtype=np.uint8)
    first = read_image_pixels(paths[0], preprocess)
    out = np.empty((len(paths), *first.shape), dtype=np.uint8)
    out[0] = first
    for i, p in enumerate(paths[1:], start=1):
        out[i] = read_image_pixels(p, preprocess)
    return out


def batch_size_for(shape: Sequence[int], cap: int = 16) -> int:
    """Images per model run for inputs of ``shape`` (C, H, W): at most ``cap``, and about one 224-px RGB image's
    worth of input at a time, so that activations stay small on a device (a 224-px batch of 16 costs ~25 MB more
    peak memory than one image at a time, for no gain in a command that runs a few dozen images)."""
    elems = 1
    for s in shape:
        elems *= int(s)
    return max(1, min(int(cap), (3 * 224 * 224) // max(elems, 1)))


def batches(array: np.ndarray, size: int) -> Iterator[np.ndarray]:
    """Consecutive slices of at most ``size`` rows."""
    for start in range(0, len(array), max(int(size), 1)):
        yield array[start : start + size]
