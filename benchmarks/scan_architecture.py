"""Scan ``edgeslice/`` with ``ast``: function lengths, long CLI command bodies, long modules, writing calls under
``cli/``, imports inside functions, imports against the declared layer order, and import circles.

The layer order is read from ``LAYERS`` in ``tests/test_architecture.py`` (the one place it is declared). Every
import counts for the graph: module level, inside functions (lazy) and under ``if TYPE_CHECKING:``.

    python benchmarks/scan_architecture.py [--out benchmarks/results/scan_architecture.json]
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "edgeslice"
TEST = ROOT / "tests" / "test_architecture.py"

LONG, VERY_LONG, LONG_COMMAND, LONG_MODULE = 80, 120, 40, 500

#: Calls counted as writing a file. ``open``/``.open`` only with a mode containing w, a or x.
WRITE_CALLS = {
    "open(..., 'w'|'a'|'x'…)": "open with a writing mode",
    ".write_text(": "pathlib",
    ".write_bytes(": "pathlib",
    "json.dump(": "json (not dumps)",
    "save_file(": "safetensors",
    "torch.save(": "torch",
    ".save(": "onnx.save, PIL, models …",
    ".savefig(": "matplotlib",
    "np.save(/np.savez(": "numpy",
    "atomic_write_bytes(/atomic_write_json(": "edgeslice.artifacts.files",
    "save_figure(/save_checkpoint(/write_manifest(/write_bundle(": "edgeslice writers called directly",
    "shutil.copy*/shutil.move(": "file copies",
}


def architecture_test():
    """tests/test_architecture.py as a module: the declared ``LAYERS`` and its ``layer_of``, one definition for the
    test and this scan."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("test_architecture", TEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def length(fn: ast.AST) -> int:
    start = min([fn.lineno] + [d.lineno for d in getattr(fn, "decorator_list", [])])
    return fn.end_lineno - start + 1


def qualified(tree: ast.AST) -> dict[int, str]:
    """id(function node) → dotted name within its module (``Class.method``, ``outer.inner``)."""
    names: dict[int, str] = {}

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    names[id(child)] = name
                walk(child, name + ".")
            else:
                walk(child, prefix)

    walk(tree, "")
    return names


def type_checking_ids(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def edges(name: str, path: Path, tree: ast.AST, modules: set[str]) -> list[dict]:
    """Every edgeslice import of ``name``: {target, kind (top|lazy|type), line}."""
    typing_ids = type_checking_ids(tree)
    in_function: set[int] = set()
    for fn in functions(tree):
        in_function.update(id(n) for n in ast.walk(fn))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name.split(".")[0] == "edgeslice"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "edgeslice":
                targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names]
        kind = "type" if id(node) in typing_ids else "lazy" if id(node) in in_function else "top"
        for t in dict.fromkeys(targets):
            while t not in modules and "." in t:  # ``import edgeslice.x.y`` of a missing name: its package
                t = t.rpartition(".")[0]
            if t != name:
                found.append({"target": t, "kind": kind, "line": node.lineno})
    return found


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (or a self-loop)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def write_calls(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        src = ast.unparse(f)
        attr = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        hit = None
        if attr == "open":
            mode = (
                node.args[1]
                if isinstance(f, ast.Name) and len(node.args) > 1
                else (node.args[0] if isinstance(f, ast.Attribute) and node.args else None)
            )
            mode = next((k.value for k in node.keywords if k.arg == "mode"), mode)
            if isinstance(mode, ast.Constant) and isinstance(mode.value, str) and re.search("[wax]", mode.value):
                hit = f"{src}(…, {mode.value!r})"
        elif attr in {"write_text", "write_bytes", "save", "savefig", "save_file", "savez", "savez_compressed"}:
            hit = src
        elif src == "json.dump" or src.startswith("shutil.copy") or src == "shutil.move":
            hit = src
        elif attr in {
            "atomic_write_bytes",
            "atomic_write_json",
            "save_figure",
            "save_checkpoint",
            "write_manifest",
            "write_bundle",
        }:
            hit = src
        if hit:
            found.append((node.lineno, hit))
    return found


def command_names(trees: dict[str, ast.AST]) -> set[str]:
    """Names of functions registered as Typer commands in edgeslice/cli: ``@app.command(...)`` or
    ``app.command("name")(function)``."""
    names = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                for d in node.decorator_list:
                    call = d.func if isinstance(d, ast.Call) else d
                    if isinstance(call, ast.Attribute) and call.attr in {"command", "callback"}:
                        names.add(node.name)
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Call)
                and isinstance(node.func.func, ast.Attribute)
                and node.func.func.attr == "command"
                and node.args
                and isinstance(node.args[0], ast.Name)
            ):
                names.add(node.args[0].id)
    return names


def scan() -> dict:
    arch = architecture_test()
    layers, layer_of = arch.LAYERS, arch.layer_of
    paths = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    trees = {m: ast.parse(p.read_text(encoding="utf-8")) for m, p in paths.items()}
    rel = {m: str(p.relative_to(ROOT)) for m, p in paths.items()}

    fns = []
    for m, tree in trees.items():
        names = qualified(tree)
        fns += [{"name": f"{m}:{names[id(fn)]}", "lines": length(fn)} for fn in functions(tree)]
    fns.sort(key=lambda f: (-f["lines"], f["name"]))

    cli = {m: t for m, t in trees.items() if m.startswith("edgeslice.cli")}
    commands = command_names(cli)
    command_fns = [
        (m, fn) for m, t in cli.items() for fn in t.body if isinstance(fn, ast.FunctionDef) and fn.name in commands
    ]
    command_bodies = sorted(
        (
            {"name": f"{m}:{fn.name}", "lines": body_length(fn)}
            for m, fn in command_fns
            if body_length(fn) > LONG_COMMAND
        ),
        key=lambda f: -f["lines"],
    )
    command_functions = sorted(
        ({"name": f"{m}:{fn.name}", "lines": length(fn)} for m, fn in command_fns if length(fn) > LONG_COMMAND),
        key=lambda f: -f["lines"],
    )

    module_lines = {rel[m]: len(paths[m].read_text(encoding="utf-8").splitlines()) for m in paths}
    long_modules = dict(sorted(((k, v) for k, v in module_lines.items() if v > LONG_MODULE), key=lambda kv: -kv[1]))

    writes = [
        {"where": f"{rel[m]}:{line}", "call": call} for m, t in cli.items() for line, call in sorted(write_calls(t))
    ]

    all_edges = {m: edges(m, paths[m], trees[m], set(paths)) for m in paths}
    lazy = [(m, e) for m, es in all_edges.items() for e in es if e["kind"] == "lazy"]
    graph = {m: {e["target"] for e in es} for m, es in all_edges.items()}

    unassigned = sorted(m for m in paths if layer_of(m) is None)
    upward = []
    for m, es in all_edges.items():
        lm = layer_of(m)
        for e in es:
            lt = layer_of(e["target"])
            if lm is not None and lt is not None and lt > lm:
                upward.append(
                    {
                        "from": m,
                        "to": e["target"],
                        "kind": e["kind"],
                        "where": f"{rel[m]}:{e['line']}",
                        "layers": f"{layers[lm][0]} → {layers[lt][0]}",
                    }
                )
    upward.sort(key=lambda u: (u["from"], u["to"], u["where"]))
    circles = strongly_connected(graph)

    return {
        "thresholds": {"function": [LONG, VERY_LONG], "cli_command_body": LONG_COMMAND, "module": LONG_MODULE},
        "modules": len(paths),
        "functions": len(fns),
        "functions_over_80": [f for f in fns if f["lines"] > LONG],
        "functions_over_120": [f for f in fns if f["lines"] > VERY_LONG],
        "cli_commands": sorted(commands),
        "cli_command_bodies_over_40": command_bodies,
        "cli_command_functions_over_40": command_functions,
        "modules_over_500": long_modules,
        "write_call_patterns": WRITE_CALLS,
        "writing_calls_under_cli": writes,
        "imports_inside_functions": {
            "count": len(lazy),
            "files": len({m for m, _ in lazy}),
            "edgeslice_only": True,
            "per_file": dict(sorted({rel[m]: sum(1 for mm, _ in lazy if mm == m) for m, _ in lazy}.items())),
        },
        "imports_inside_functions_all": count_all_lazy(trees, rel),
        "layers": [{"name": n, "modules": e} for n, e in layers],
        "unassigned_modules": unassigned,
        "upward_imports": upward,
        "import_circles": circles,
    }


def count_all_lazy(trees: dict[str, ast.AST], rel: dict[str, str]) -> dict:
    """Every import statement inside a function, any package (edgeslice, onnx, …)."""
    per = {}
    for m, t in trees.items():
        n = sum(1 for fn in functions(t) for s in ast.walk(fn) if isinstance(s, ast.Import | ast.ImportFrom))
        if n:
            per[rel[m]] = n
    # nested functions would count their imports twice: count statements once
    total = 0
    for t in trees.values():
        seen = set()
        for fn in functions(t):
            seen.update(id(s) for s in ast.walk(fn) if isinstance(s, ast.Import | ast.ImportFrom))
        total += len(seen)
    return {"count": total, "files": len(per)}


def body_length(fn: ast.FunctionDef) -> int:
    """Lines of a function's body: from its first statement after the docstring to its end (no signature, no
    docstring: a command's options are its signature)."""
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return 0 if not body else fn.end_lineno - body[0].lineno + 1


def report(r: dict) -> str:
    lines = [
        f"modules: {r['modules']}   functions: {r['functions']}",
        f"functions over {LONG} lines: {len(r['functions_over_80'])}  over {VERY_LONG}: {len(r['functions_over_120'])}",
    ]
    lines += [f"  {f['lines']:4d}  {f['name']}" for f in r["functions_over_80"]]
    lines.append(f"CLI command bodies over {LONG_COMMAND} lines: {len(r['cli_command_bodies_over_40'])}")
    lines += [f"  {f['lines']:4d}  {f['name']}" for f in r["cli_command_bodies_over_40"]]
    whole = r.get("cli_command_functions_over_40", [])
    lines.append(f"CLI command functions (signature included) over {LONG_COMMAND} lines: {len(whole)}")
    lines += [f"  {f['lines']:4d}  {f['name']}" for f in whole]
    lines.append(f"modules over {LONG_MODULE} lines: {len(r['modules_over_500'])}")
    lines += [f"  {n:4d}  {p}" for p, n in r["modules_over_500"].items()]
    lines.append(f"writing calls under cli/: {len(r['writing_calls_under_cli'])}  (patterns: {', '.join(WRITE_CALLS)})")
    lines += [f"  {w['where']}  {w['call']}" for w in r["writing_calls_under_cli"]]
    li, la = r["imports_inside_functions"], r["imports_inside_functions_all"]
    lines.append(
        f"imports inside functions: {la['count']} in {la['files']} files (of them edgeslice imports: "
        f"{li['count']} in {li['files']} files)"
    )
    if r["unassigned_modules"]:
        lines.append(f"modules in no layer: {', '.join(r['unassigned_modules'])}")
    lines.append(f"upward imports: {len(r['upward_imports'])}")
    lines += [f"  {u['from']} → {u['to']}  [{u['kind']}]  {u['where']}" for u in r["upward_imports"]]
    lines.append(f"import circles (strongly connected components, lazy + TYPE_CHECKING): {len(r['import_circles'])}")
    lines += [f"  {' ↔ '.join(c)}" for c in r["import_circles"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scan_architecture.json")
    args = parser.parse_args()
    r = scan()
    print(report(r))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
