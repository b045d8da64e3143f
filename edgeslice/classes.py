"""``--classes``: a subset of a data set's classes, by name or label, in a stated order.

One spec syntax for every command: comma-separated items, each a class name, a label number, or a label range
``a-b`` (inclusive), e.g. ``0-4``, ``T-shirt/top,Trouser``, ``0,2,7``. The selected classes get labels
``0..k-1`` in the order they are named, and the resulting bundle's ``classes`` lists their names in that order, so
the checkpoint's ``model.json``, the index and the ONNX metadata all carry the same unambiguous order.

The lead wires this into ``train``, ``slice`` and ``compress``: ``bundle = select_classes(bundle, spec)`` right after
``load_data``; ``edgeslice increment`` uses :func:`parse_classes` for its new classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from .errors import EdgesliceError


def parse_classes(spec: str, available: Sequence[str]) -> list[int]:
    """Labels (of ``available``) named by ``spec``, in spec order; a clear EdgesliceError for anything else."""
    names = list(available)
    out: list[int] = []
    for tok in (t.strip() for t in spec.split(",")):
        if not tok:
            continue
        if tok in names:
            out.append(names.index(tok))
        elif tok.isdigit():
            if int(tok) >= len(names):
                raise EdgesliceError(f"--classes: label {tok} is out of range (the data has {len(names)} classes)")
            out.append(int(tok))
        elif "-" in tok and all(p.strip().isdigit() for p in tok.split("-", 1)):
            a, b = (int(p) for p in tok.split("-", 1))
            if a > b or b >= len(names):
                raise EdgesliceError(f"--classes: range {tok} is not within 0-{len(names) - 1}")
            out.extend(range(a, b + 1))
        else:
            raise EdgesliceError(f"--classes: {tok!r} is not a class of the data ({', '.join(names)})")
    if not out:
        raise EdgesliceError("--classes names no class")
    if len(set(out)) != len(out):
        raise EdgesliceError("--classes names a class twice")
    return out


def select_classes(bundle, spec: str | None, *, min_classes: int = 1):
    """``bundle`` restricted to the classes of ``spec`` (relabelled ``0..k-1`` in spec order); None keeps it all."""
    if spec is None:
        return bundle
    from .data import relabel

    labels = parse_classes(spec, bundle.classes)
    if len(labels) < min_classes:
        raise EdgesliceError(f"--classes names {len(labels)} class(es); at least {min_classes} are needed")
    mapping = {src: j for j, src in enumerate(labels)}
    return dataclasses.replace(
        bundle,
        train=relabel(bundle.train, mapping),
        test=relabel(bundle.test, mapping),
        classes=[bundle.classes[i] for i in labels],
        source=f"{bundle.source} [classes {','.join(str(i) for i in labels)}]",  # also keys the baseline cache
    )


__all__ = ["parse_classes", "select_classes"]
