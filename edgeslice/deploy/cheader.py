"""The critical-neuron index as a C header, for firmware that masks or freezes channels without a JSON parser.

Every set of channels is a ``static const uint8_t`` array in the index file's bit order (docs/index-format.md):
channel ``i`` of a layer is bit ``i % 8`` (value ``1 << (i % 8)``) of byte ``i / 8``. Per-class sets, when the index
has them, are stored over *all* channels of the layer (the file's version-1 layout, not the file's compact
version 2), so one macro tests any set::

    #include "critical_index.h"
    if (EDGESLICE_BIT(edgeslice_critical[layer], channel)) { ... }
    if (EDGESLICE_BIT(edgeslice_class_sets[layer] + cls * EDGESLICE_BYTES(edgeslice_layer_channels[layer]), ch)) ...

The text is deterministic: equal indexes give equal headers.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..artifacts.files import atomic_write_bytes
from ..index import CriticalIndex

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _bytes(mask: torch.Tensor) -> bytes:
    """(N,) bool → the little-endian bitset, ``ceil(N / 8)`` bytes."""
    return np.packbits(mask.to(torch.bool).cpu().numpy().astype(np.uint8), bitorder="little").tobytes()


def _c_string(text: str) -> str:
    """A C string literal of ``text``'s UTF-8 bytes: printable ASCII as is, everything else as 3-digit octal."""
    safe = (chr(b) if 32 <= b < 127 and chr(b) not in '"\\?' else f"\\{b:03o}" for b in text.encode("utf-8"))
    return '"' + "".join(safe) + '"'


def _comment(text: str) -> str:
    return text.replace("*/", "* /").replace("\n", " ")


def _hex_rows(data: bytes, indent: str = "    ", per_line: int = 12) -> list[str]:
    if not data:
        return [f"{indent}0x00 /* empty */"]
    cells = [f"0x{b:02x}" for b in data]
    return [f"{indent}{', '.join(cells[i : i + per_line])}," for i in range(0, len(cells), per_line)]


def index_to_c_header(index: CriticalIndex, *, prefix: str = "edgeslice") -> str:
    """Render ``index`` as a self-contained C99 header.

    Args:
        index: the critical-neuron index.
        prefix: C identifier prefix of every array (lower case) and macro (upper case), so that several headers can
            be included in one program.

    Returns:
        The header text: include guard, ``<stdint.h>``, macros for the model, strategy, metric and θ/ratio, one
        ``static const uint8_t`` bitset per layer (``<prefix>_critical_<i>``; per-class sets as
        ``<prefix>_class_sets_<i>[classes][bytes]``), and tables of layer names, observed modules, channel counts,
        critical counts and class names.

    Raises:
        ValueError: ``prefix`` is not a C identifier.

    Example:
        >>> text = index_to_c_header(CriticalIndex.load("critical_index"))  # doctest: +SKIP
    """
    if not _IDENT.match(prefix):
        raise ValueError(f"C header prefix {prefix!r} is not a C identifier")
    lo, up = prefix.lower(), prefix.upper()
    counts = [int(index.critical[e["name"]].sum()) for e in index.layers]
    guard = f"{up}_CRITICAL_INDEX_H"
    lines = _preamble(index, lo, up, guard)
    lines += _macros(index, up, counts)
    lines += _layer_bitsets(index, lo, counts)
    lines += _tables(index, lo, counts)
    lines += ["", f"#endif /* {guard} */", ""]
    return "\n".join(lines)


def _preamble(index: CriticalIndex, lo: str, up: str, guard: str) -> list[str]:
    """The header's opening comment (bit order), include guard, ``<stdint.h>`` and the bit-test macros."""
    return [
        f"/* Critical-neuron index of {_comment(index.timm_name)}, written by edgeslice {__version__}. Do not edit.",
        " *",
        " * Bit order (as in the index file, docs/index-format.md): channel i of a layer is bit i % 8 (value",
        " * 1 << (i % 8)) of byte i / 8, so a layer of N channels takes (N + 7) / 8 bytes; bits past N are 0.",
        f" * Test a channel with {up}_BIT(bits, i). Per-class sets are stored over all N channels of the layer:",
        f" * class c of layer l starts at {lo}_class_sets[l] + c * {up}_BYTES({lo}_layer_channels[l]).",
        " */",
        f"#ifndef {guard}",
        f"#define {guard}",
        "",
        "#include <stdint.h>",
        "",
        f"#define {up}_BYTES(channels) (((channels) + 7u) / 8u)",
        f"#define {up}_BIT(bits, i) ((unsigned)(((bits)[(i) >> 3] >> ((i) & 7u)) & 1u))",
        "",
    ]


def _macros(index: CriticalIndex, up: str, counts: list[int]) -> list[str]:
    """The ``#define``s that describe the index: model, strategy, metric, θ/ratio, and the counts."""
    p = index.params
    lines = [
        f"#define {up}_HEADER_VERSION 1",  # the layout of this header (per-class sets over all channels)
        f"#define {up}_MODEL {_c_string(index.timm_name)}",
        f"#define {up}_MODEL_FINGERPRINT {_c_string(index.model_fingerprint)}",
        f"#define {up}_STRATEGY {_c_string(str(p.get('strategy', '')))}",
    ]
    if "metric" in p:
        lines.append(f"#define {up}_METRIC {_c_string(str(p['metric']))}")
    if "similarity" in p:
        lines.append(f"#define {up}_SIMILARITY {_c_string(str(p['similarity']))}")
    if isinstance(p.get("theta"), int | float):
        lines.append(f"#define {up}_THETA {float(p['theta'])!r}f")
    if isinstance(p.get("ratio"), int | float):
        lines.append(f"#define {up}_RATIO {float(p['ratio'])!r}f")
    return lines + [
        f"#define {up}_NUM_LAYERS {len(index.layers)}u",
        f"#define {up}_NUM_CLASSES {len(index.classes)}u",
        f"#define {up}_TOTAL_CHANNELS {sum(e['channels'] for e in index.layers)}u",
        f"#define {up}_CRITICAL_CHANNELS {sum(counts)}u",
        f"#define {up}_HAS_CLASS_SETS {int(index.per_class is not None)}",
        "",
    ]


def _layer_bitsets(index: CriticalIndex, lo: str, counts: list[int]) -> list[str]:
    """Per layer: its critical bitset ``<lo>_critical_<i>`` and, if any, its per-class sets ``<lo>_class_sets_<i>``."""
    lines: list[str] = []
    for i, (e, k) in enumerate(zip(index.layers, counts, strict=True)):
        name, n = e["name"], e["channels"]
        nbytes = (n + 7) // 8
        observe = _comment(e["observe"])
        lines.append(f"/* layer {i}: {_comment(name)} (observed at {observe}), {n} channels, {k} critical */")
        lines.append(f"static const uint8_t {lo}_critical_{i}[{nbytes}] = {{")
        lines += _hex_rows(_bytes(index.critical[name]))
        lines.append("};")
        if index.per_class is not None:
            lines.append(f"static const uint8_t {lo}_class_sets_{i}[{len(index.classes)}][{nbytes}] = {{")
            for c, row in enumerate(index.per_class[name]):
                lines.append(f"    {{ /* class {c}: {_comment(index.classes[c])} */")
                lines += _hex_rows(_bytes(row), indent="        ")
                lines.append("    },")
            lines.append("};")
        lines.append("")
    return lines


def _tables(index: CriticalIndex, lo: str, counts: list[int]) -> list[str]:
    """The per-layer tables (names, observed modules, channel and critical counts, bitset pointers), class names."""
    n_layers = len(index.layers)
    size = f"[{max(n_layers, 1)}]"
    lines = [f"static const char *const {lo}_layer_names{size} = {{"]
    lines += [f"    {_c_string(e['name'])}," for e in index.layers] or ["    0,"]
    lines += ["};", f"static const char *const {lo}_layer_observe{size} = {{"]
    lines += [f"    {_c_string(e['observe'])}," for e in index.layers] or ["    0,"]
    lines += ["};", f"static const uint32_t {lo}_layer_channels{size} = {{"]
    lines += [f"    {e['channels']}u, /* {_comment(e['name'])} */" for e in index.layers] or ["    0u,"]
    lines += ["};", f"static const uint32_t {lo}_layer_critical_count{size} = {{"]
    lines += [f"    {k}u," for k in counts] or ["    0u,"]
    lines += ["};", f"static const uint8_t *const {lo}_critical{size} = {{"]
    lines += [f"    {lo}_critical_{i}," for i in range(n_layers)] or ["    0,"]
    lines.append("};")
    if index.per_class is not None:
        lines.append(f"static const uint8_t *const {lo}_class_sets{size} = {{")
        lines += [f"    &{lo}_class_sets_{i}[0][0]," for i in range(n_layers)] or ["    0,"]
        lines.append("};")
    lines.append(f"static const char *const {lo}_class_names[{max(len(index.classes), 1)}] = {{")
    lines += [f"    {_c_string(c)}," for c in index.classes] or ["    0,"]
    lines.append("};")
    return lines


def write_c_header(index: CriticalIndex, path: str | Path, *, prefix: str = "edgeslice") -> Path:
    """Write :func:`index_to_c_header` to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, index_to_c_header(index, prefix=prefix).encode("utf-8"))
