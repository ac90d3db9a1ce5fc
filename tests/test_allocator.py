"""Freed memory stays in the process, so repeated steps stop faulting pages in."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from deltaprop.execution import allocator

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the policy is glibc's mallopt")

# builds a network (which leaves the policy alone), opts in when asked, warms up, then
# counts the page faults of ten "steps" that each allocate, touch and free 8 MiB
PROGRAM = """
import resource
import sys
import numpy as np
import deltaprop
from deltaprop.execution import allocator
deltaprop.Sequential([deltaprop.create("dense", units=2)], input_shape=(3,))
built_alone = allocator.retain_freed_memory.cache_info().currsize == 0
applied = deltaprop.retain_freed_memory() if sys.argv[1] == "opt-in" else False
def step():
    arrays = [np.ones((512, 1024), dtype=np.float32) for _ in range(4)]
    return sum(float(a[0, 0]) for a in arrays)
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(built_alone, applied, after - before)
"""


def run_steps(retain: str, opt_in: bool = True) -> tuple[bool, bool, int]:
    env = dict(os.environ, DELTAPROP_RETAIN_MEMORY=retain)
    out = subprocess.run([sys.executable, "-c", PROGRAM, "opt-in" if opt_in else "no"],
                         env=env, check=True, capture_output=True, text=True).stdout.split()
    return out[0] == "True", out[1] == "True", int(out[2])


def test_retained_memory_is_reused_without_page_faults() -> None:
    _, applied, faults = run_steps("1")
    assert applied
    # 10 steps x 8 MiB would be 20,480 faults of 4 KiB pages if the memory went back
    assert faults < 500


def test_opt_out_keeps_the_c_library_defaults() -> None:
    _, applied, faults = run_steps("0")
    assert not applied
    assert faults > 5_000


def test_building_a_network_leaves_the_process_policy_alone() -> None:
    built_alone, applied, faults = run_steps("1", opt_in=False)
    assert built_alone and not applied
    assert faults > 5_000


def test_the_command_applies_it_to_its_own_process() -> None:
    program = ("import sys; from deltaprop.cli import main; from deltaprop.execution import "
               "allocator; main(['layers']); "
               "print(allocator.retain_freed_memory.cache_info().currsize)")
    out = subprocess.run([sys.executable, "-c", program], check=True, capture_output=True,
                         text=True).stdout.split()
    assert out[-1] == "1"


def test_applied_once_per_process() -> None:
    first = allocator.retain_freed_memory()
    assert allocator.retain_freed_memory() is first
