"""The one way deltaprop writes a file and the one way it reads one.

Writes go to a temporary file beside the target, are flushed to disk and renamed into
place, so a failure at any point leaves the old file as it was. A target that is not a
regular file (a device node, a FIFO, a socket, a directory) is refused rather than
replaced; a symbolic link is followed, so the file it points to is replaced and the link
stays. The new file keeps the mode of the file it replaces, or gets the mode the umask
allows for a new file.

Reads open regular files only (a FIFO would block forever, ``/dev/zero`` never ends)
and refuse files larger than a limit; array containers also check the sizes their
members declare against a budget before inflating anything (see ``npz``). The budget is
``DELTAPROP_MAX_READ_BYTES`` (bytes, or with a K/M/G/T suffix).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from ..errors import FileError

READ_LIMIT_ENV = "DELTAPROP_MAX_READ_BYTES"
DEFAULT_READ_LIMIT = 4 << 30
#: text files (specs) are never legitimately this large
TEXT_LIMIT = 64 << 20
_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISDIR, "a folder"))


def file_kind(mode: int) -> str:
    """``mode``'s file type in words, for messages."""
    for test, words in _KINDS:
        if test(mode):
            return words
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def read_limit() -> int:
    """The most bytes one read may hold in memory (``DELTAPROP_MAX_READ_BYTES``)."""
    raw = os.environ.get(READ_LIMIT_ENV, "").strip()
    if not raw:
        return DEFAULT_READ_LIMIT
    text = raw.upper().removesuffix("B").removesuffix("I")
    number, unit = (text[:-1], text[-1]) if text and text[-1] in _SUFFIXES else (text, "")
    try:
        value = int(float(number) * _SUFFIXES[unit])
    except (ValueError, OverflowError):
        value = -1
    if value <= 0:
        raise FileError(f"{READ_LIMIT_ENV}={raw!r}: expected a positive number of bytes "
                        f"such as 8G")
    return value


def budget_hint() -> str:
    return f"raise {READ_LIMIT_ENV} (now {read_limit()} bytes) if this is intended"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_target(path: str | os.PathLike[str]) -> Path:
    """The file a write to ``path`` replaces: symbolic links followed, anything but a
    regular file (or nothing yet) refused."""
    given = Path(path)
    target = Path(os.path.realpath(given))
    try:
        mode = os.stat(given).st_mode  # through links: /proc/self/fd/1 is its pipe
    except FileNotFoundError:
        return target
    except OSError as exc:
        raise FileError(f"cannot write {str(given)!r}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        via = f" (through the link to {os.readlink(given)!r})" if given.is_symlink() else ""
        raise FileError(f"cannot write {str(given)!r}: it is {file_kind(mode)}{via}, not a "
                        f"regular file; refusing to replace it")
    return target


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Write to a temporary file beside ``path``'s target, fsync it, give it the mode of
    the file it replaces (or the umask's), then rename it into place; on any error the
    temporary file is removed and the target is untouched."""
    given = str(path)
    target = write_target(path)
    directory = target.parent
    try:
        old_mode: int | None = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        old_mode = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:  # name the file the caller asked for, not the temporary
        raise FileError(f"cannot write {given!r}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), old_mode if old_mode is not None
                      else 0o666 & ~_umask())
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        write_target(path)  # refuse a special file put there while we wrote
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, FileError):
            raise FileError(f"cannot write {given!r}: {exc.strerror or exc}") from None
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """``data`` into ``path`` through ``atomic_write``."""
    with atomic_write(path) as handle:
        handle.write(data)


@contextlib.contextmanager
def open_regular(path: str | os.PathLike[str], what: str = "file",
                 limit: int | None = None) -> Iterator[IO[bytes]]:
    """Open ``path`` for reading if it is a regular file no larger than ``limit`` (the
    read limit by default); a FIFO is opened without blocking, then refused."""
    shown = f"{what} {str(path)!r}"
    limit = read_limit() if limit is None else limit
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise FileError(f"{shown}: cannot read it (no such file)") from None
    except OSError as exc:
        raise FileError(f"{shown}: cannot read it ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileError(f"{shown}: it is {file_kind(info.st_mode)}, not a regular file")
        if info.st_size > limit:
            raise FileError(f"{shown}: {info.st_size} bytes is more than the read limit of "
                            f"{limit} bytes; {budget_hint()}")
        os.set_blocking(fd, True)
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        yield handle


def read_bytes(path: str | os.PathLike[str], what: str = "file",
               limit: int | None = None) -> bytes:
    """The whole of a regular file, refused past ``limit`` bytes (even if it grows)."""
    limit = read_limit() if limit is None else limit
    with open_regular(path, what, limit) as handle:
        try:
            data = handle.read(limit + 1)
        except OSError as exc:
            raise FileError(f"{what} {str(path)!r}: cannot read it "
                            f"({exc.strerror or exc})") from None
    if len(data) > limit:
        raise FileError(f"{what} {str(path)!r}: more than the read limit of {limit} bytes; "
                        f"{budget_hint()}")
    return data
