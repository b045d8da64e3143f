"""``edgeslice-device``: verify, inspect, predict with and grow a bundle on a device (argparse; no torch).

Exit codes: 0 success, 1 a failure the user can act on (one line ``error: ...`` on stderr, the bundle unchanged),
2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .errors import BundleError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeslice-device", description="Run and grow an edgeslice bundle on a device (no torch needed)."
    )
    parser.add_argument("--version", action="version", version=f"edgeslice-device {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("add-class", help="learn a new class from a folder of images; grows BUNDLE in place")
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="the bundle folder")
    p.add_argument("images", type=Path, metavar="IMAGES_DIR", help="folder of images of the new class")
    p.add_argument("--name", required=True, help="name of the new class")
    p.add_argument("--min-images", type=int, default=5, help="refuse fewer images than this (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON document")

    p = sub.add_parser("predict", help="print the class of each image")
    p.add_argument("bundle", type=Path, metavar="BUNDLE")
    p.add_argument("images", type=Path, nargs="+", metavar="IMAGE")
    p.add_argument("--json", action="store_true", help='print [{"file", "class", "score"}, ...]')

    p = sub.add_parser("verify", help="check hashes, bindings and that the model runs")
    p.add_argument("bundle", type=Path, metavar="BUNDLE")

    p = sub.add_parser("info", help="classes, files, head and history of a bundle")
    p.add_argument("bundle", type=Path, metavar="BUNDLE")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    return parser


def _add_class(args: argparse.Namespace) -> None:
    from .grow import add_class

    if args.min_images < 1:
        raise BundleError("--min-images must be at least 1")
    report = add_class(args.bundle, args.images, args.name, min_images=args.min_images)
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        print(
            f"added {report.name!r} from {report.images} images: {len(report.classes)} classes; "
            f"{report.new_class_recall:.0%} of its images are now predicted as {report.name!r}"
        )


def _predict(args: argparse.Namespace) -> None:
    from ._commit import recover
    from .predict import predict

    recover(args.bundle)
    preds = predict(args.bundle, args.images)
    if args.json:
        print(json.dumps([p.to_dict() for p in preds], ensure_ascii=False))
    else:
        for p in preds:
            print(p.class_name)


def _verify(args: argparse.Namespace) -> None:
    from ._commit import recover
    from .bundle import open_bundle

    recover(args.bundle)
    bundle = open_bundle(args.bundle)
    bundle.verify(run_model=True)
    print(f"ok: {args.bundle} ({len(bundle.classes)} classes, {bundle.doc['head']} head)")


def _info(args: argparse.Namespace) -> None:
    from ._commit import recover
    from .bundle import open_bundle

    recover(args.bundle)
    bundle = open_bundle(args.bundle)
    files = {p.name: p.stat().st_size for p in sorted(bundle.path.iterdir()) if p.is_file()}
    history = bundle.doc["history"]
    doc = {
        "bundle": str(args.bundle),
        "classes": bundle.classes,
        "head": bundle.doc["head"],
        "feature_dim": bundle.feature_dim,
        "fingerprint": bundle.fingerprint,
        "files": files,
        "history": history,
        "last_grown_by": history[-1]["path"] if history else None,
    }
    if args.json:
        print(json.dumps(doc, ensure_ascii=False, indent=1))
        return
    print(f"bundle      {args.bundle}")
    print(f"classes     {len(bundle.classes)}: {', '.join(bundle.classes)}")
    print(f"head        {doc['head']} (features: {bundle.feature_dim})")
    print(f"fingerprint {bundle.fingerprint}")
    for name, size in files.items():
        print(f"  {name:<28} {size:>12,} B")
    for e in history:
        n = len(e.get("classes", []))
        print(f"history     {e.get('op')} on the {e.get('path')}: {n} classes, {e.get('images')} images")


_COMMANDS = {"add-class": _add_class, "predict": _predict, "verify": _verify, "info": _info}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (argparse exits 2 on a usage error)."""
    args = _parser().parse_args(argv)
    try:
        _COMMANDS[args.command](args)
    except BundleError as e:
        return _fail(str(e))
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        return _fail(f"{e.strerror or e}{where}")
    except KeyboardInterrupt:
        return _fail("interrupted (the bundle is unchanged or whole; the next command cleans up)", code=130)
    except Exception as e:  # noqa: BLE001 - onnx/onnxruntime raise their own types; the user gets one line
        return _fail(f"{type(e).__name__}: {' '.join(str(e).split())[:300]}")
    return 0


def _fail(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
