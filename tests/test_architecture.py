"""The package's shape: layers that point one way, no import circles, no private names imported across modules, a
light on-device side, and a device runtime that imports nothing of edgeslice.

The import graph is read from the source with ``ast``: every import counts, also those inside functions and under
``if TYPE_CHECKING:``, so an upward import or a circle is caught even where a lazy or a type-only import hides it at
run time. The layer order is :data:`LAYERS` (``docs/architecture.md`` draws it; ``benchmarks/scan_architecture.py``
reads it from here).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "edgeslice"

#: The layers, lowest first (docs/architecture.md draws them). A module belongs to the layer of its longest listed
#: dotted prefix (``edgeslice`` itself only as exactly that module); it may import from its own layer (as long as no
#: circle forms) and from the layers below it, never from one above.
LAYERS: list[tuple[str, list[str]]] = [
    (
        "floor: errors and small torch utilities",
        [
            "edgeslice",  # the package's __init__: only __version__
            "edgeslice.errors",
            "edgeslice.torchutil",
            "edgeslice.distributed",
            "edgeslice._progress",
            "edgeslice.bitsets",
            "edgeslice.artifacts.files",  # atomic writes and canonical JSON: the index and checkpoint files use them
        ],
    ),
    (
        "inputs and file formats",
        [
            "edgeslice.data",
            "edgeslice.models",
            "edgeslice.mlp",
            "edgeslice.heads",
            "edgeslice.routed",
            "edgeslice.classstats",
            "edgeslice.index",
            "edgeslice.classes",
            "edgeslice.train",
        ],
    ),
    ("the algorithms", ["edgeslice.slicing", "edgeslice.restructure", "edgeslice.allocation"]),
    (
        "what the stages use",
        [
            "edgeslice.ondevice",
            "edgeslice.maintain",
            "edgeslice.pruning",
            "edgeslice.deploy",
            "edgeslice.artifacts",
            "edgeslice.studies",  # the paper's research studies (RQ1, masking, DeepArc, figures), beside the product
        ],
    ),
    ("the stages of each command", ["edgeslice.pipeline"]),
    ("the command line", ["edgeslice.cli", "edgeslice.__main__"]),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str | None]]:
    """(imported module, imported attribute or None) for every edgeslice import of module ``name``: at module level,
    inside functions and under ``if TYPE_CHECKING:`` alike."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name.split(".")[0] == "edgeslice"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "edgeslice":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                found.append((sub, None) if sub in modules else (target, a.name))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {m for m, _ in _imports(name, path, modules) if m in modules and m != name}
        for name, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (cycle := visit(m)):
                return cycle
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (cycle := visit(n)):
            return cycle
    return None


def layer_of(module: str) -> int | None:
    """Index in :data:`LAYERS` of the layer whose longest entry is ``module`` or a dotted prefix of it."""
    best: tuple[int, int] | None = None
    for i, (_, entries) in enumerate(LAYERS):
        for e in entries:
            if module == e or (e != "edgeslice" and module.startswith(e + ".")):
                if best is None or len(e) > best[0]:
                    best = (len(e), i)
    return None if best is None else best[1]


def upward_imports() -> list[tuple[str, str]]:
    """(importer, imported) for every import of a module from a higher layer."""
    return sorted(
        (name, target)
        for name, targets in import_graph().items()
        for target in targets
        if layer_of(target) > layer_of(name)
    )


def test_find_cycle_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_package_has_no_import_circle():
    graph = import_graph()
    assert len(graph) > 60  # every module was read
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph))


def test_no_private_name_is_imported_from_another_module():
    modules = _modules()
    offenders = [
        f"{name} imports {attr} from {target}"
        for name, path in modules.items()
        for target, attr in _imports(name, path, modules)
        if attr and attr.startswith("_") and not attr.startswith("__") and target != name
    ]
    assert not offenders, offenders


@pytest.mark.parametrize("module", ["edgeslice.ondevice", "edgeslice.ondevice.learner"])
def test_ondevice_imports_without_the_workstation_libraries(module):
    blocked = ["torch_pruning", "captum", "onnx", "onnxruntime", "onnxscript", "matplotlib", "sklearn"]
    code = (
        "import sys\n"
        f"for m in {blocked!r}: sys.modules[m] = None\n"  # any import of these raises ImportError
        f"import {module}\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_layer_of_takes_the_longest_entry():
    assert layer_of("edgeslice") == 0 and layer_of("edgeslice.artifacts.files") == 0
    assert layer_of("edgeslice.artifacts.verify") == layer_of("edgeslice.ondevice.learner") == 3
    assert layer_of("edgeslice.cli.compress") == len(LAYERS) - 1
    assert layer_of("edgeslice.somethingnew") is None  # the package entry matches only the package itself


def test_every_module_is_in_a_layer_and_every_entry_exists():
    modules = _modules()
    assert [m for m in modules if layer_of(m) is None] == []
    entries = [e for _, names in LAYERS for e in names]
    assert len(entries) == len(set(entries))
    assert [e for e in entries if not any(m == e or m.startswith(e + ".") for m in modules)] == []


def test_no_module_imports_from_a_higher_layer():
    offenders = [
        f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for name, target in upward_imports()
    ]
    assert not offenders, "\n".join(offenders)


def test_the_upward_import_check_sees_lazy_and_type_checking_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "edgeslice"
    (pkg / "cli").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "cli" / "__init__.py").write_text("")
    (pkg / "errors.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .cli import app\n"
        "def f():\n    from edgeslice.cli import app\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    assert upward_imports() == [("edgeslice.errors", "edgeslice.cli")]


def test_the_device_runtime_imports_nothing_of_edgeslice():
    device = PACKAGE.parent / "device"
    files = sorted(device.rglob("*.py"))
    assert len(files) > 2
    offenders = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            offenders += [f"{path.relative_to(device)}: {n}" for n in names if n.split(".")[0] == "edgeslice"]
    assert not offenders, offenders


#: Commands built the one way (docs/architecture.md, "How a command is built"): ``pipeline/<module>.py`` holds a frozen
#: ``<Name>Config``, a frozen ``<Name>Report`` and ``run(config, device) -> <Name>Report``; ``cli/<module>.py`` parses
#: options into the config, calls ``run`` and prints the report, and writes no file itself.
SHAPED_COMMANDS: dict[str, tuple[str, str]] = {
    "increment": ("increment", "Increment"),
    "readapt": ("readapt", "Readapt"),
    "train": ("train", "Train"),
    "compress": ("compress", "Compress"),
    "slice": ("slice", "SliceRun"),
    "evaluate-slices": ("evaluate", "EvaluateSlices"),
    "prune": ("prune", "Prune"),
    "run": ("run", "Run"),
    "verify": ("verify", "Verify"),
}

#: Calls that write a file (the same patterns as benchmarks/scan_architecture.py counts).
_WRITERS = {
    "write_text", "write_bytes", "savefig", "save_file", "savez", "savez_compressed", "atomic_write_bytes",
    "atomic_write_json", "save_figure", "save_checkpoint", "write_manifest", "write_bundle", "staging_dir",
}  # fmt: skip


def _writing_calls(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        mode = node.args[1] if name == "open" and len(node.args) > 1 else None
        if name in _WRITERS or (isinstance(mode, ast.Constant) and set(str(mode.value)) & set("wax")):
            found.append(f"{path.name}:{node.lineno} {name}")
    return found


@pytest.mark.parametrize("command", sorted(SHAPED_COMMANDS))
def test_a_shaped_command_runs_through_its_pipeline_and_writes_nothing_in_the_cli(command):
    import dataclasses
    import importlib
    import inspect

    module, name = SHAPED_COMMANDS[command]
    pipeline = importlib.import_module(f"edgeslice.pipeline.{module}")
    config, report = getattr(pipeline, f"{name}Config"), getattr(pipeline, f"{name}Report")
    for cls in (config, report):
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, cls
    assert inspect.signature(pipeline.run).return_annotation in (report, report.__name__)
    cli = (PACKAGE / "cli" / f"{module}.py").read_text(encoding="utf-8")
    assert f"edgeslice.pipeline.{module} import" in cli
    assert _writing_calls(PACKAGE / "cli" / f"{module}.py") == []
    tree = ast.parse(cli)
    (fn,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == f"{module}_command"]
    body = fn.body[1:] if isinstance(fn.body[0], ast.Expr) else fn.body  # the docstring is not body
    assert fn.end_lineno - body[0].lineno + 1 <= 40, f"{module}_command's body is over 40 lines"


def test_the_writing_call_check_sees_writes():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "w.py"
        path.write_text("def f(p, s):\n    p.write_text('x')\n    open(p, 'wb')\n    open(p)\n    staging_dir(p)\n")
        assert _writing_calls(path) == ["w.py:2 write_text", "w.py:3 open", "w.py:5 staging_dir"]
