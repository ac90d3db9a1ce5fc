"""A lock on a checkpoint directory, so two runs never share it: the second is refused
with the first one's pid instead of deleting its half-written file.

The lock is the kernel's (``flock`` on ``<checkpoint>.lock``), so it ends with its
process however that process ends: there are no stale locks to detect or take over,
and no race between two runs that would each find one. The file holds the owner's pid
only to name it in the message."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from ..errors import FileError


def _owner(fd: int) -> str:
    with contextlib.suppress(OSError):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return f"process {text}"
    return "another process"


class PidLock:
    """An exclusive ``flock`` on ``path``, which holds the owner's pid while it is held."""

    def __init__(self, path: str | os.PathLike[str], what: str) -> None:
        self.path = Path(path)
        self.what = what
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self) -> None:
        """Take the lock, or raise FileError naming the process that holds it."""
        while self.fd is None:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise FileError(f"{self.what}: cannot create the lock file "
                                f"{str(self.path)!r} ({exc.strerror or exc})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _owner(fd)
                os.close(fd)
                raise FileError(f"{self.what} is in use by {holder} (lock file "
                                f"{str(self.path)!r}); wait for it to finish") from None
            try:
                same_file = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same_file = False
            if not same_file:  # its owner removed it as we opened it: lock the new one
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self.fd = fd

    def release(self) -> None:
        """Remove the file, then let go: a run waiting on this file retries on a new one."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = None
