"""The critical index as a C header: bit order, arrays parsed back, macros, and a C program that reads it."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import torch
from typer.testing import CliRunner

from edgeslice.deploy.cheader import index_to_c_header, write_c_header
from edgeslice.index import CriticalIndex, pack_bits


def _index(per_class: bool = True, seed: int = 0) -> CriticalIndex:
    g = torch.Generator().manual_seed(seed)
    layers = [
        {"name": "conv_stem", "observe": "bn1", "channels": 9},
        {"name": "blocks.0.0.conv_pw", "observe": "blocks.0.0.bn1", "channels": 20},
        {"name": "fc", "observe": "fc", "channels": 8},
    ]
    sets = {la["name"]: torch.rand(3, la["channels"], generator=g) < 0.4 for la in layers}
    # Channels {0, 3, 4, 6, 8} of the 9-channel layer: the example of docs/index-format.md (bytes 0x59 0x01).
    sets["conv_stem"] = torch.zeros(3, 9, dtype=torch.bool)
    sets["conv_stem"][0, [0, 3]] = True
    sets["conv_stem"][1, [4, 6]] = True
    sets["conv_stem"][2, [8]] = True
    return CriticalIndex(
        model_fingerprint="ab" * 32,
        timm_name="toy_net",
        layers=layers,
        critical={k: v.any(0) for k, v in sets.items()},
        per_class=sets if per_class else None,
        classes=["T-shirt/top", 'say "hi"', "ünïcode"],
        params={"strategy": "semantic", "metric": "taylor", "theta": 0.95, "similarity": "cka"},
    )


def _arrays(text: str) -> dict[str, bytes]:
    """Every ``static const uint8_t NAME[...] = {...};`` of the header, as bytes (2-D arrays flattened)."""
    out = {}
    for m in re.finditer(r"static const uint8_t (\w+)((?:\[\d+\])+) = \{(.*?)\n\};", text, re.S):
        body = re.sub(r"/\*.*?\*/", "", m.group(3), flags=re.S)
        out[m.group(1)] = bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", body))
    return out


def test_arrays_parse_back_to_the_index_bitsets():
    idx = _index()
    text = index_to_c_header(idx)
    arrays = _arrays(text)
    assert arrays["edgeslice_critical_0"] == bytes([0x59, 0x01])  # little-endian bit order, as in the index file
    for i, layer in enumerate(idx.layers):
        name = layer["name"]
        assert arrays[f"edgeslice_critical_{i}"].hex() == pack_bits(idx.critical[name])
        rows = b"".join(bytes.fromhex(pack_bits(r)) for r in idx.per_class[name])  # all-channel layout
        assert arrays[f"edgeslice_class_sets_{i}"] == rows
        assert f"/* layer {i}: {name} (observed at {layer['observe']}), {layer['channels']} channels" in text
        assert f'"{name}",' in text
    assert re.search(r"static const uint8_t edgeslice_class_sets_1\[3\]\[3\]", text)  # [classes][ceil(20/8)]
    assert "#define EDGESLICE_THETA 0.95f" in text and '#define EDGESLICE_METRIC "taylor"' in text
    assert '#define EDGESLICE_STRATEGY "semantic"' in text and "#define EDGESLICE_NUM_LAYERS 3u" in text
    assert f"#define EDGESLICE_CRITICAL_CHANNELS {sum(int(m.sum()) for m in idx.critical.values())}u" in text
    assert text.startswith("/*") and "#ifndef EDGESLICE_CRITICAL_INDEX_H" in text and "#include <stdint.h>" in text
    assert text == index_to_c_header(_index())  # deterministic
    assert text != index_to_c_header(_index(seed=1))


def test_without_class_sets_and_prefix():
    idx = _index(per_class=False)
    idx.params = {"strategy": "global", "metric": "avg", "ratio": 0.5, "similarity": "cka"}
    text = index_to_c_header(idx, prefix="kws")
    assert "uint8_t kws_class_sets" not in text and "#define KWS_HAS_CLASS_SETS 0" in text
    assert "#define KWS_RATIO 0.5f" in text and "THETA" not in text
    assert "kws_critical_2" in text and "edgeslice_" not in text.replace("edgeslice 0", "")
    with pytest.raises(ValueError, match="not a C identifier"):
        index_to_c_header(idx, prefix="9-bad")


C_PROGRAM = r"""
#include <stdio.h>
#include "critical_index.h"
#include "critical_index.h" /* the include guard makes a second include harmless */

int main(void) {
    unsigned l, i, c;
    printf("%s %s %s %.2f %u\n", EDGESLICE_MODEL, EDGESLICE_STRATEGY, EDGESLICE_METRIC, EDGESLICE_THETA,
           (unsigned)EDGESLICE_NUM_LAYERS);
    for (l = 0; l < EDGESLICE_NUM_LAYERS; l++) {
        printf("%s ", edgeslice_layer_names[l]);
        for (i = 0; i < edgeslice_layer_channels[l]; i++) putchar('0' + EDGESLICE_BIT(edgeslice_critical[l], i));
        for (c = 0; c < EDGESLICE_NUM_CLASSES; c++) {
            const uint8_t *row = edgeslice_class_sets[l] + c * EDGESLICE_BYTES(edgeslice_layer_channels[l]);
            putchar(' ');
            for (i = 0; i < edgeslice_layer_channels[l]; i++) putchar('0' + EDGESLICE_BIT(row, i));
        }
        putchar('\n');
    }
    for (c = 0; c < EDGESLICE_NUM_CLASSES; c++) printf("%s\n", edgeslice_class_names[c]);
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_compiles_and_a_c_program_reads_the_bits(tmp_path):
    idx = _index()
    write_c_header(idx, tmp_path / "critical_index.h")
    (tmp_path / "main.c").write_text(C_PROGRAM)
    cc = ["gcc", "-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", "-I", str(tmp_path)]
    subprocess.run([*cc, "-fsyntax-only", "-x", "c", str(tmp_path / "critical_index.h")], check=True)
    subprocess.run([*cc, str(tmp_path / "main.c"), "-o", str(tmp_path / "main")], check=True)
    lines = subprocess.run([str(tmp_path / "main")], check=True, capture_output=True).stdout.decode().splitlines()
    assert lines[0] == "toy_net semantic taylor 0.95 3"
    for line, layer in zip(lines[1:4], idx.layers, strict=True):
        name, crit, *classes = line.split(" ")
        assert name == layer["name"]
        assert crit == "".join("1" if b else "0" for b in idx.critical[name].tolist())
        assert classes == ["".join("1" if b else "0" for b in row.tolist()) for row in idx.per_class[name]]
    assert lines[4:] == idx.classes  # names survive C escaping (quotes, UTF-8)


def test_slice_emit_c_header(tmp_path, digits):
    from edgeslice.cli import app
    from edgeslice.models import create_model, save_checkpoint
    from edgeslice.pipeline import meta_for

    torch.manual_seed(0)
    model = create_model("mlp", num_classes=10, in_chans=1, input_size=digits.image_size)
    save_checkpoint(model, meta_for("edgeslice_mlp", digits), tmp_path / "ck" / "model.safetensors")
    out = tmp_path / "out"
    r = CliRunner().invoke(
        app,
        ["slice", "mlp", "--checkpoint", str(tmp_path / "ck" / "model.safetensors"), "--data", "digits",
         "--calib-per-class", "5", "--theta", "0.9", "--device-type", "cpu", "--json", "--out", str(out),
         "--emit-c-header"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    idx = CriticalIndex.load(out / "critical_index")
    assert (out / "critical_index.h").read_text() == index_to_c_header(idx)
    assert _arrays((out / "critical_index.h").read_text())["edgeslice_critical_0"].hex() == pack_bits(
        idx.critical[idx.layers[0]["name"]]
    )
