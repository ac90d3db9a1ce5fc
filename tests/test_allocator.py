"""Freed memory stays in the process, so repeated steps stop faulting pages in."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from deltaprop import allocator

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the policy is glibc's mallopt")

# builds a network (which applies the policy), warms up, then counts the page faults of
# ten "steps" that each allocate, touch and free 8 MiB in a few arrays
PROGRAM = """
import resource
import numpy as np
import deltaprop
from deltaprop import allocator
deltaprop.Sequential([deltaprop.create("dense", units=2)], input_shape=(3,))
def step():
    arrays = [np.ones((512, 1024), dtype=np.float32) for _ in range(4)]
    return sum(float(a[0, 0]) for a in arrays)
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(allocator.retain_freed_memory(), after - before)
"""


def run_steps(retain: str) -> tuple[bool, int]:
    env = dict(os.environ, DELTAPROP_RETAIN_MEMORY=retain)
    out = subprocess.run([sys.executable, "-c", PROGRAM], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return out[0] == "True", int(out[1])


def test_retained_memory_is_reused_without_page_faults() -> None:
    applied, faults = run_steps("1")
    assert applied
    # 10 steps x 8 MiB would be 20,480 faults of 4 KiB pages if the memory went back
    assert faults < 500


def test_opt_out_keeps_the_c_library_defaults() -> None:
    applied, faults = run_steps("0")
    assert not applied
    assert faults > 5_000


def test_applied_once_per_process() -> None:
    first = allocator.retain_freed_memory()
    assert allocator.retain_freed_memory() is first
