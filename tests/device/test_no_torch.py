"""The device distribution imports neither torch nor the host package, and declares only its four dependencies."""

from __future__ import annotations

import ast
import subprocess
import sys

import tomllib

from .conftest import DEVICE_DIR

FORBIDDEN = {"torch", "timm", "torch_pruning", "captum", "sklearn", "matplotlib", "typer", "rich", "edgeslice"}


def test_cli_import_loads_no_torch():
    code = (
        f"import sys; sys.path.insert(0, {str(DEVICE_DIR)!r}); import edgeslice_device.cli; "
        "import edgeslice_device, edgeslice_device.grow, edgeslice_device.predict; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{sorted(FORBIDDEN)!r}); print(bad); assert not bad"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_forbidden_import_in_the_sources():
    for path in sorted((DEVICE_DIR / "edgeslice_device").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            assert not {n.split(".")[0] for n in names} & FORBIDDEN, f"{path.name} imports {names}"
        assert len(path.read_text().splitlines()) < 400, path.name


def test_declared_dependencies():
    project = tomllib.loads((DEVICE_DIR / "pyproject.toml").read_text())["project"]
    assert project["name"] == "edgeslice-device"
    deps = {d.split(">")[0].split("=")[0].strip().lower() for d in project["dependencies"]}
    assert deps == {"onnxruntime", "numpy", "pillow", "onnx"}
    assert project["scripts"]["edgeslice-device"] == "edgeslice_device.cli:main"
