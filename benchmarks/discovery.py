"""Cost of plugin discovery on first use, measured in fresh processes (each sample is a
new interpreter, so nothing is cached in memory; the OS file cache is warm).

Reports medians of: ``import deltaprop``; the entry-point scan (reading every
installed distribution's metadata, known to be slow on some Pythons); the whole
discovery (scan, plugin imports, hook calls); and a second registry in the same
process, which reuses the cached scan.

    python -m benchmarks.discovery [--quick] [--python PATH ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

import numpy as np

from .common import format_rows, row

PROBE = r"""
import json, time
t0 = time.perf_counter()
import deltaprop
t1 = time.perf_counter()
from importlib import metadata
metadata.entry_points(group="deltaprop")
t2 = time.perf_counter()
from deltaprop.registry import Registry
first = Registry(); first.names()
second = Registry(); t3 = time.perf_counter(); second.names(); t4 = time.perf_counter()
print(json.dumps({"import deltaprop": (t1 - t0) * 1e3,
                  "raw entry_points()": (t2 - t1) * 1e3,
                  "scan": first.scan_seconds * 1e3,
                  "discovery": first.discovery_seconds * 1e3,
                  "second registry": (t4 - t3) * 1e3,
                  "plugins": len(first.plugins()),
                  "distributions": len(list(metadata.distributions()))}))
"""


def sample(python: str) -> dict[str, float]:
    out = subprocess.run([python, "-W", "ignore", "-c", PROBE], capture_output=True,
                         text=True, check=True, timeout=300).stdout
    return json.loads(out.strip().splitlines()[-1])


def run(quick: bool = False, pythons: list[str] | None = None) -> list[dict[str, Any]]:
    rows = []
    for python in pythons or [sys.executable]:
        samples = [sample(python) for _ in range(3 if quick else 9)]
        version = subprocess.run([python, "-c", "import sys; print(sys.version.split()[0])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        keys = ["import deltaprop", "raw entry_points()", "scan", "discovery",
                "second registry"]
        ms = {k: float(np.median([s[k] for s in samples])) for k in keys}
        rows.append(row("discovery", f"python {version}", ms, "discovery",
                        plugins=samples[0]["plugins"],
                        distributions=samples[0]["distributions"]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--python", action="append", help="interpreter(s) to measure")
    args = parser.parse_args()
    rows = run(quick=args.quick, pythons=args.python)
    print(format_rows(rows))
    for r in rows:
        print(f"  {r['case']}: {r['plugins']} plugins, {r['distributions']} distributions")


if __name__ == "__main__":
    main()
