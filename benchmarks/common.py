"""Timing helpers shared by the benchmark suites."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

#: the clock every suite times with; ``python -m benchmarks --clock cpu`` switches to this
#: process's CPU time, which time slices lost to other processes on a shared machine do
#: not inflate (meaningful with one BLAS thread, see ``--threads``)
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
clock: Callable[[], float] = time.perf_counter
#: untimed running before each timed call when each library runs several threads (see
#: ``interleaved_medians``)
SETTLE_SECONDS = 0.15


def one_thread_each() -> bool:
    """Whether the suites run with one BLAS/OpenMP thread per library (``--threads 1``)."""
    return os.environ.get("DELTAPROP_BENCH_THREADS") == "1" or (os.cpu_count() or 1) == 1


class Timings(dict[str, float]):
    """Median milliseconds per candidate; ``samples`` keeps every round's times, so that
    ratios can also be taken round by round (paired: both calls ran in the same moment
    of the machine, whose speed drifts between minutes on a shared VM)."""

    def __init__(self, samples: dict[str, list[float]]) -> None:
        super().__init__({name: float(np.median(v)) for name, v in samples.items()})
        self.samples = samples


def interleaved_medians(candidates: dict[str, Callable[[], Any]], *, repeats: int = 20,
                        warmup: int = 3, min_seconds: float = 0.0,
                        settle_seconds: float | None = None,
                        timer: Callable[[], float] | None = None) -> Timings:
    """Median milliseconds per call of each candidate, run in turn (A B C, C A B, ...)
    so that a slow patch of the machine hits every candidate alike. The order is
    shuffled every round (seeded): a candidate that pollutes the caches (PyTorch's
    step does) then slows a different successor each time, not always the same one.
    ``timer`` overrides the suite-wide ``clock``.

    Each turn first runs its candidate untimed for ``settle_seconds`` (default: none with
    one thread per library, else ``SETTLE_SECONDS``). Idle OpenBLAS and OpenMP threads
    keep spinning for a while after their last call, so right after the other library's
    turn a candidate shares the cores with them, and an unsettled ratio can land on
    either side of 1 for the same code (docs/performance.md has an example)."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    start = time.perf_counter()
    now = clock if timer is None else timer
    gc_was_enabled = gc.isenabled()
    gc.disable()
    names = list(candidates)
    order = np.random.default_rng(0)
    if settle_seconds is None:
        settle_seconds = 0.0 if one_thread_each() else SETTLE_SECONDS
    try:
        rounds = 0
        while rounds < repeats or time.perf_counter() - start < min_seconds:
            for i in order.permutation(len(names)):
                name = names[i]
                samples[name].append(settled_call_ms(candidates[name], settle_seconds, now))
            rounds += 1
    finally:
        if gc_was_enabled:
            gc.enable()
    return Timings(samples)


def settled_call_ms(fn: Callable[[], Any], settle_seconds: float = SETTLE_SECONDS,
                    now: Callable[[], float] = time.perf_counter) -> float:
    """Milliseconds of one call of ``fn`` by ``now``, after running it untimed for
    ``settle_seconds`` (see ``interleaved_medians``)."""
    settled = time.perf_counter() + settle_seconds
    while time.perf_counter() < settled:
        fn()
    t0 = now()
    fn()
    return (now() - t0) * 1e3


def torch_or_none() -> Any:
    """PyTorch if installed (a test and benchmark reference only, never a dependency)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def row(benchmark: str, case: str, ms: dict[str, float], reference: str,
        **extra: Any) -> dict[str, Any]:
    """One result row: every candidate's median ms and each one's ratio to ``reference``;
    from interleaved ``Timings``, also the quartiles of the round-by-round ratios."""
    out: dict[str, Any] = {"benchmark": benchmark, "case": case, "ms": dict(ms),
                           "reference": reference}
    if reference in ms:
        out["ratio"] = {k: v / ms[reference] for k, v in ms.items() if k != reference}
    samples = getattr(ms, "samples", None)
    if samples is not None and reference in samples:
        ref = np.asarray(samples[reference])
        out["ratio_quartiles"] = {
            k: [float(q) for q in np.percentile(np.asarray(v) / ref, [25, 75])]
            for k, v in samples.items() if k != reference}
    out.update(extra)
    return out


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        ms = "  ".join(f"{k} {v:8.3f} ms" for k, v in r["ms"].items())
        quartiles = r.get("ratio_quartiles", {})
        ratios = "  ".join(f"{k}/{r['reference']} {v:5.2f}x" + (
            f" [{quartiles[k][0]:.2f}-{quartiles[k][1]:.2f}]" if k in quartiles else "")
            for k, v in r.get("ratio", {}).items())
        lines.append(f"{r['benchmark']:<10} {r['case']:<28} {ms}   {ratios}")
    return "\n".join(lines)
