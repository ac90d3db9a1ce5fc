"""BLAS and OpenMP thread pools sized to the machine.

numpy's OpenBLAS (and any OpenMP runtime loaded) starts one thread per core in every
process. Two MPI ranks on two cores then run four busy threads that fight over two
cores, and a step gets many times slower than in one process. Each rank therefore
limits its pools so that ranks x threads does not exceed the cores of its machine,
unless the user said how many threads to run, either with ``--threads`` or with one
of ``THREAD_VARIABLES`` in the environment. threadpoolctl changes the pools of the
libraries already loaded, so this works after numpy has started.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

#: environment variables by which a user sizes the pools themself (then left alone)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, else the machine's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def threads_set_by_user() -> dict[str, str]:
    """The thread variables set in the environment, by name."""
    return {name: os.environ[name] for name in THREAD_VARIABLES if os.environ.get(name)}


@dataclass(frozen=True)
class ThreadPlan:
    """How many BLAS/OpenMP threads each process runs (None: left as they are), and why."""

    threads: int | None
    reason: str


def plan_threads(processes: int = 1, requested: int | None = None,
                 cores: int | None = None) -> ThreadPlan:
    """The threads each of ``processes`` processes on one machine runs: ``requested``
    when given; else as the environment says when it says; else, for several
    processes, the cores shared out (at least one each); one process keeps its pools."""
    if requested is not None:
        return ThreadPlan(requested, f"{requested} BLAS/OpenMP thread{_s(requested)} per "
                                     f"process (--threads)")
    set_by_user = threads_set_by_user()
    if set_by_user:
        told = ", ".join(f"{k}={v}" for k, v in set_by_user.items())
        return ThreadPlan(None, f"BLAS/OpenMP threads as the environment says ({told})")
    cores = usable_cores() if cores is None else cores
    if processes <= 1:
        return ThreadPlan(None, f"BLAS/OpenMP threads: the libraries' own ({cores} "
                                f"core{_s(cores)})")
    each = max(1, cores // processes)
    return ThreadPlan(each, f"{each} BLAS/OpenMP thread{_s(each)} per rank: {processes} "
                            f"ranks on {cores} core{_s(cores)} of this machine")


@contextlib.contextmanager
def limited_threads(plan: ThreadPlan) -> Iterator[ThreadPlan]:
    """Within the block, every BLAS and OpenMP pool loaded runs ``plan.threads``."""
    if plan.threads is None:
        yield plan
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=plan.threads):
        yield plan


def current_threads() -> dict[str, int]:
    """Threads of each loaded BLAS/OpenMP pool, by library (``internal_api``)."""
    from threadpoolctl import threadpool_info

    return {f"{info['internal_api']} {info.get('filepath', '')}": int(info["num_threads"])
            for info in threadpool_info()}


def _s(n: int) -> str:
    return "" if n == 1 else "s"
