"""Keep freed memory in the process so the next training step reuses it.

A training step allocates the same large arrays every time (activations, caches,
deltas) and frees them when backward is done. With glibc's default policy those
blocks go back to the kernel (big ones are mmapped and unmapped, the heap's top is
trimmed) and the next step faults every page in again, which on a virtual machine
can cost more than the arithmetic (``docs/performance.md`` has the figures).

``retain_freed_memory`` asks glibc (through ``mallopt``) to serve large blocks from
the heap and never to trim it, as a caching allocator would. The price is that the
process keeps its peak heap size until it exits, which is the program's choice to
make, not a library's: the ``deltaprop`` command applies it to its own process, and
a Python program opts in with ``deltaprop.retain_freed_memory()``. Setting
``DELTAPROP_RETAIN_MEMORY=0`` turns it off for the command too. On a C library
other than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform

#: mallopt parameters of glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: glibc's largest accepted mmap threshold on 64-bit systems (32 MiB); larger blocks are
#: still mmapped, which is fine: their arithmetic outweighs their page faults
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
#: free bytes at the heap's top before glibc trims it: the largest int mallopt takes
TRIM_THRESHOLD = 2**31 - 1


@functools.cache
def retain_freed_memory() -> bool:
    """Apply the policy once per process; True when glibc accepted it."""
    if os.environ.get("DELTAPROP_RETAIN_MEMORY", "1").strip().lower() in ("0", "false", "no"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
