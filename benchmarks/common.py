"""Timing helpers shared by the benchmark suites."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import numpy as np

#: the clock every suite times with; ``python -m benchmarks --clock cpu`` switches to this
#: process's CPU time, which time slices lost to other processes on a shared machine do
#: not inflate (meaningful with one BLAS thread, see ``--threads``)
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
clock: Callable[[], float] = time.perf_counter


def interleaved_medians(candidates: dict[str, Callable[[], Any]], *, repeats: int = 20,
                        warmup: int = 3, min_seconds: float = 0.0) -> dict[str, float]:
    """Median milliseconds per call of each candidate, run in turn (A B C, C A B, ...)
    so that a slow patch of the machine hits every candidate alike. The order is
    shuffled every round (seeded): a candidate that pollutes the caches (PyTorch's
    step does) then slows a different successor each time, not always the same one."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    start = time.perf_counter()
    now = clock
    gc_was_enabled = gc.isenabled()
    gc.disable()
    names = list(candidates)
    order = np.random.default_rng(0)
    try:
        rounds = 0
        while rounds < repeats or time.perf_counter() - start < min_seconds:
            for i in order.permutation(len(names)):
                name = names[i]
                fn = candidates[name]
                t0 = now()
                fn()
                samples[name].append((now() - t0) * 1e3)
            rounds += 1
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: float(np.median(values)) for name, values in samples.items()}


def torch_or_none() -> Any:
    """PyTorch if installed (a test and benchmark reference only, never a dependency)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def row(benchmark: str, case: str, ms: dict[str, float], reference: str,
        **extra: Any) -> dict[str, Any]:
    """One result row: every candidate's median ms and each one's ratio to ``reference``."""
    out: dict[str, Any] = {"benchmark": benchmark, "case": case, "ms": ms,
                           "reference": reference}
    if reference in ms:
        out["ratio"] = {k: v / ms[reference] for k, v in ms.items() if k != reference}
    out.update(extra)
    return out


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        ms = "  ".join(f"{k} {v:8.3f} ms" for k, v in r["ms"].items())
        ratios = "  ".join(f"{k}/{r['reference']} {v:5.2f}x"
                           for k, v in r.get("ratio", {}).items())
        lines.append(f"{r['benchmark']:<10} {r['case']:<28} {ms}   {ratios}")
    return "\n".join(lines)
