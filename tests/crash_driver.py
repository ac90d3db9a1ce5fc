"""Runs the ``deltaprop`` command in this process and interrupts it at a chosen point,
for tests/test_checkpoint.py: a real process receiving a real signal, at a point the
test can name rather than one left to timing.

    python crash_driver.py MODE N [CLI arguments...]

MODE is ``none`` (no interruption), ``kill``, ``term`` or ``int`` (send this process
SIGKILL, SIGTERM or SIGINT right after optimizer step N of this process), or
``kill-in-save`` / ``term-in-save`` (SIGKILL / SIGTERM while the N-th file this
process saves is half written).
"""

from __future__ import annotations

import io
import os
import signal
import sys

import deltaprop.checkpoint
from deltaprop.cli import main
from deltaprop.optimizer import Optimizer
from deltaprop.storage import npz

SIGNALS = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "int": signal.SIGINT}


def interrupt_after_step(n: int, signum: int) -> None:
    original = Optimizer.step
    count = [0]

    def step(self, params, grads):  # type: ignore[no-untyped-def]
        original(self, params, grads)
        count[0] += 1
        if count[0] == n:
            os.kill(os.getpid(), signum)

    Optimizer.step = step  # type: ignore[method-assign]


def signal_during_save(n: int, signum: int) -> None:
    """Send ``signum`` when the n-th file is half written; if the process survives the
    signal (SIGTERM is handled), the write goes on to the end."""
    original = npz.write_members
    count = [0]

    def write_members(file, arrays):  # type: ignore[no-untyped-def]
        count[0] += 1
        if count[0] != n:
            return original(file, arrays)
        buffer = io.BytesIO()
        original(buffer, arrays)
        data = buffer.getvalue()
        file.write(data[: len(data) // 2])
        file.flush()
        os.fsync(file.fileno())
        os.kill(os.getpid(), signum)
        file.write(data[len(data) // 2:])
        return None

    npz.write_members = write_members  # type: ignore[assignment]


if __name__ == "__main__":
    # as when started from a terminal, even if the test runner ignores SIGINT (a
    # background job does): deltaprop leaves an ignored signal ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    mode, n = sys.argv[1], int(sys.argv[2])
    if mode in SIGNALS:
        interrupt_after_step(n, SIGNALS[mode])
    elif mode in ("kill-in-save", "term-in-save"):
        assert deltaprop.training.checkpoint.write_npz  # which goes through write_members
        signal_during_save(n, signal.SIGKILL if mode == "kill-in-save" else signal.SIGTERM)
    elif mode != "none":
        raise SystemExit(f"unknown mode {mode!r}")
    sys.exit(main(sys.argv[3:]))
