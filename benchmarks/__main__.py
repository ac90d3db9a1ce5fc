"""One benchmark command: every suite module present, one table, one JSON.

    python -m benchmarks [--quick] [--only mlp,memory] [--threads 1] [--clock cpu]
                         [--json figures.json] [--compare old.json]

A suite is any module of this package with a ``run(quick=False) -> list[dict]``
function (mlp, conv, cnn, rnn, memory, distributed, discovery), run in its own
process; each times its candidates with interleaved repetitions (shuffled every
round) and reports medians and the ratio of medians, followed in brackets by the
quartiles of the round-by-round ratios (how far the ratio moves while the machine's
speed drifts). ``--json`` writes every row
plus the machine and versions, so that two versions of deltaprop can be compared
with ``--compare``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import benchmarks
from benchmarks import common
from benchmarks.common import format_rows, torch_or_none

NOT_SUITES = {"common", "__main__"}
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: the order of the table; suites not listed come after, alphabetically
PREFERRED = ["mlp", "conv", "cnn", "rnn", "memory", "distributed"]


def suite_names() -> list[str]:
    found = [m.name for m in pkgutil.iter_modules(benchmarks.__path__)
             if m.name not in NOT_SUITES and not m.name.startswith("_")]
    return sorted(found, key=lambda n: (PREFERRED.index(n) if n in PREFERRED
                                        else len(PREFERRED), n))


def run_one(name: str, quick: bool) -> list[dict[str, Any]]:
    """Run one suite in this process (the child side of ``run_suites``). The suites that
    train networks keep freed memory for reuse, as ``deltaprop train`` does
    (``DELTAPROP_RETAIN_MEMORY=0`` measures without)."""
    module = importlib.import_module(f"benchmarks.{name}")
    run = getattr(module, "run", None)
    if not callable(run):
        raise TypeError(f"benchmarks.{name} has no run() function")
    return list(run(quick=quick))


def run_suites(names: list[str], quick: bool) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Each suite in its own process: thread settings a suite changes, or caches a
    reference library fills, cannot leak into the next suite's figures."""
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    for name in names:
        start = time.perf_counter()
        child = subprocess.run(
            [sys.executable, "-m", "benchmarks", "--child", name, *(["--quick"] if quick else []),
             "--clock", next(k for k, v in common.CLOCKS.items() if v is common.clock)],
            stdout=subprocess.PIPE, text=True, check=False)
        if child.returncode != 0:
            skipped[name] = f"exit status {child.returncode} (see its messages above)"
            print(f"suite {name}: failed", file=sys.stderr)
            continue
        result = json.loads(child.stdout.strip().splitlines()[-1])
        for r in result:
            r.setdefault("suite", name)
        rows.extend(result)
        print(f"suite {name}: {len(result)} rows in {time.perf_counter() - start:.1f} s",
              file=sys.stderr)
    return rows, skipped


def format_bytes_rows(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        for what in ("peak_bytes", "peak_live_bytes"):
            if what not in r:
                continue
            base = next(iter(r[what].values())) or 1
            cells = "  ".join(f"{k} {v / 2**20:7.2f} MiB ({v / base:4.2f}x)"
                              for k, v in r[what].items())
            lines.append(f"{r['benchmark']:<10} {r['case'] + ' ' + what:<44} {cells}")
    return "\n".join(lines)


def compare(rows: list[dict[str, Any]], old_path: str) -> str:
    """Per row and candidate: the old and new median, and new/old."""
    old = json.loads(Path(old_path).read_text())
    before = {(r["benchmark"], r["case"]): r for r in old.get("rows", [])}
    lines = [f"against {old_path} ({old.get('meta', {}).get('date', '?')}):"]
    for r in rows:
        o = before.get((r["benchmark"], r["case"]))
        if o is None:
            continue
        cells = []
        for k, v in r["ms"].items():
            if k in o["ms"] and o["ms"][k]:
                cells.append(f"{k} {o['ms'][k]:.3f} -> {v:.3f} ms ({v / o['ms'][k]:.2f}x)")
        lines.append(f"{r['benchmark']:<10} {r['case']:<28} " + "  ".join(cells))
    return "\n".join(lines)


def meta() -> dict[str, Any]:
    import deltaprop

    torch = torch_or_none()
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "deltaprop": deltaprop.__version__, "numpy": np.__version__,
            "torch": getattr(torch, "__version__", None), "python": platform.python_version(),
            "machine": platform.machine(), "cpus": os.cpu_count(),
            "threads": {v: os.environ.get(v) for v in THREAD_VARIABLES},
            "clock": next(k for k, v in common.CLOCKS.items() if v is common.clock),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--only", help="comma-separated suite names (default: all present)")
    parser.add_argument("--json", help="write the figures to this JSON file")
    parser.add_argument("--compare", help="a JSON written earlier: print old -> new")
    parser.add_argument("--list", action="store_true", help="list the suites and exit")
    parser.add_argument("--threads", type=int,
                        help="BLAS/OpenMP threads for numpy and PyTorch alike (1 gives steady "
                             "medians on a shared machine)")
    parser.add_argument("--clock", choices=sorted(common.CLOCKS), default="wall",
                        help="wall time (default) or this process's CPU time")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one suite, JSON rows out
    args = parser.parse_args(argv)
    if args.clock == "cpu" and not args.child and args.threads != 1:
        parser.error("--clock cpu needs --threads 1: with more threads, the process's CPU "
                     "time adds up every thread, those that only spin too")
    common.clock = common.CLOCKS[args.clock]
    if args.child:
        print(json.dumps(run_one(args.child, args.quick)))
        return 0
    if args.threads and os.environ.get("DELTAPROP_BENCH_THREADS") != str(args.threads):
        # thread pools are sized when numpy and torch load: start again with them set
        env = dict(os.environ, DELTAPROP_BENCH_THREADS=str(args.threads))
        for var in THREAD_VARIABLES:
            env[var] = str(args.threads)
        argv = sys.argv[1:] if argv is None else argv
        os.execve(sys.executable, [sys.executable, "-m", "benchmarks", *argv], env)
    names = suite_names()
    if args.list:
        print("\n".join(names))
        return 0
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            parser.error(f"unknown suite(s) {unknown}; present: {names}")
        names = [n for n in names if n in wanted]
    rows, skipped = run_suites(names, args.quick)
    print(format_rows(rows))
    extra = format_bytes_rows(rows)
    if extra:
        print(extra)
    for name, why in skipped.items():
        print(f"suite {name} skipped: {why}")
    if args.compare:
        print(compare(rows, args.compare))
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta(), "suites": names,
                                               "skipped": skipped, "rows": rows}, indent=2))
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
