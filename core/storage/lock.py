"""A lock file holding its owner's process id, so two runs never share a checkpoint
directory: the second is refused with the first one's pid instead of deleting its
half-written file. A lock whose process is gone (killed, machine restarted) is stale and
is taken over."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..errors import FileError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _owner(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class PidLock:
    """``path`` created exclusively with this process's pid; ``release`` removes it."""

    def __init__(self, path: str | os.PathLike[str], what: str) -> None:
        self.path = Path(path)
        self.what = what
        self.held = False

    def acquire(self) -> None:
        """Take the lock, or raise FileError naming the process that holds it."""
        if self.held:
            return
        for _ in range(3):  # a stale lock is removed, then taken by whoever is first
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                pid = _owner(self.path)
                if pid is not None and pid != os.getpid() and _alive(pid):
                    raise FileError(f"{self.what} is in use by process {pid} (lock file "
                                    f"{str(self.path)!r}); wait for it to finish, or remove "
                                    f"the lock file if that process is not deltaprop"
                                    ) from None
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)  # stale: its process is gone (or it is ours)
                continue
            except OSError as exc:
                raise FileError(f"{self.what}: cannot create the lock file "
                                f"{str(self.path)!r} ({exc.strerror or exc})") from None
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{os.getpid()}\n")
            self.held = True
            return
        raise FileError(f"{self.what}: could not take the lock file {str(self.path)!r}")

    def release(self) -> None:
        if self.held and _owner(self.path) == os.getpid():
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        self.held = False
