"""Audit the ``learning`` tests (issue 29): every value they assert on, under other kernels and other seeds.

Runs ``pytest -m "learning and not slow and not gpu"`` once per (instruction-set setting, seed):

- settings: ``default`` (the machine's own kernels), ``AVX2`` and ``SSE41`` (``ONEDNN_MAX_CPU_ISA`` with the matching
  ``MKL_ENABLE_INSTRUCTIONS``: oneDNN's convolutions and MKL's GEMMs held to that instruction set);
- seeds: ``EDGESLICE_TEST_SEED`` = 0 (the suite's), 1 and 2 — the seed of every training the tests assert on
  (the shared fixtures' models, the increments, the toy models; ``tests/conftest.py``).

Each test notes its learned values with the ``measure`` fixture (one JSON line per value: test, name, value, the
bound it asserts); the JUnit XML gives each test's outcome. The table is value per (setting, seed) beside the bound,
and the tightest margin seen. On a CPU without AVX-512, ``AVX2`` caps nothing (oneDNN already runs AVX2 kernels): the
table says so and ``--skip-equal`` leaves that setting out.

    python benchmarks/audit_learning.py                       # 9 runs, ≈ 35 min on 2 cores
    python benchmarks/audit_learning.py --seeds 0 --settings SSE41
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "default": {},
    "AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "SSE41": {"ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
}


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def run_once(setting: str, seed: int, work: Path) -> dict:
    log = work / f"{setting}-{seed}.jsonl"
    xml = work / f"{setting}-{seed}.xml"
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")}
    env.update(SETTINGS[setting], EDGESLICE_TEST_SEED=str(seed), EDGESLICE_AUDIT_LOG=str(log))
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "learning and not slow and not gpu",
           f"--junitxml={xml}", "tests"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    outcomes = {}
    if xml.exists():
        for case in ET.parse(xml).getroot().iter("testcase"):
            name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
            failed = case.find("failure") is not None or case.find("error") is not None
            skipped = case.find("skipped") is not None
            outcomes[name] = "failed" if failed else "skipped" if skipped else "passed"
    values = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return {"setting": setting, "seed": seed, "rc": proc.returncode, "seconds": round(time.perf_counter() - t, 1),
            "outcomes": outcomes, "values": values,
            "tail": proc.stdout.strip().splitlines()[-1:]}  # fmt: skip


def margin(value: float, bound: str) -> float | None:
    """How far ``value`` lies inside ``bound`` (``> x``, ``>= x``, ``< x``, ``<= x``, ``in (a, b)``); < 0: outside."""
    b = bound.strip()
    if b.startswith("in ("):
        lo, hi = (float(v) for v in b[4:-1].split(","))
        return min(value - lo, hi - value)
    op, x = b.split(maxsplit=1)
    x = float(x)
    return value - x if op in (">", ">=") else x - value


def render(runs: list[dict], note: str) -> str:
    cols = [(r["setting"], r["seed"]) for r in runs]
    head = " | ".join(f"{s} s{seed}" for s, seed in cols)
    out = ["# Learning-test audit", "", note, "", f"| test | value | bound | {head} | tightest margin |",
           "|---|---|---|" + "---|" * len(cols) + "---|"]  # fmt: skip
    table: dict[tuple[str, str, str], dict] = defaultdict(dict)
    for r in runs:
        for v in r["values"]:
            table[(v["test"], v["name"], v["bound"])][(r["setting"], r["seed"])] = v["value"]
    for (test, name, bound), cells in table.items():
        short = test.split("::")[-1]
        vals = [cells.get(c) for c in cols]
        tight = min(margin(v, bound) for v in vals if v is not None)
        shown = " | ".join("–" if v is None else f"{v:.4g}" for v in vals)
        out.append(f"| {short} | {name} | {bound} | {shown} | {tight:.4g} |")
    out += ["", "Outcomes (every learning test, passed unless named):", ""]
    for r in runs:
        bad = ", ".join(f"{n} ({o})" for n, o in r["outcomes"].items() if o != "passed")
        line = f"- {r['setting']} seed {r['seed']}: {len(r['outcomes'])} tests, rc {r['rc']}, {r['seconds']} s"
        out.append(line + (f"; not passed: {bad}" if bad else ""))
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--skip-equal", action="store_true", help="leave out AVX2 on a CPU without AVX-512 (= default)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "audit_learning.json")
    args = ap.parse_args()
    flags = cpu_flags()
    avx512 = "avx512f" in flags
    cpu = "AVX-512" if avx512 else "AVX2" if "avx2" in flags else "no AVX2"
    cap = "AVX2 is a real cap here." if avx512 else "AVX2 caps nothing here: it equals the default kernels."
    note = f"CPU: {cpu}; {cap}"
    settings = [s for s in args.settings if not (args.skip_equal and s == "AVX2" and not avx512)]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for setting in settings:
            for seed in args.seeds:
                r = run_once(setting, seed, Path(tmp))
                print(f"{setting} seed {seed}: rc {r['rc']} in {r['seconds']} s, {r['tail']}", flush=True)
                runs.append(r)
    md = render(runs, note)
    print(md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "note": note, "runs": runs}, indent=1))
    args.out.with_suffix(".md").write_text(md)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    sys.exit(0 if all(r["rc"] == 0 for r in runs) else 1)


if __name__ == "__main__":
    main()
