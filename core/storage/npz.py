"""The npz container deltaprop writes and reads: atomic writes, and member-by-member
reads that check each array's header before allocating and never unpickle.

Model files and checkpoints are both such containers (see ``model_format``).
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import zipfile
import zlib
from collections.abc import Callable
from typing import IO, Any

import numpy as np

from ..errors import DeltapropError, FileError, ModelFileError
from .files import atomic_write, budget_hint, open_regular, read_limit

META = "__deltaprop__"
MAX_META_BYTES = 64 << 20

def write_npz(path: str | os.PathLike[str], meta: dict[str, Any],
              arrays: dict[str, np.ndarray]) -> None:
    """An uncompressed npz of ``arrays`` plus ``meta`` as JSON bytes, written atomically."""
    blob = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    if blob.size > MAX_META_BYTES:  # a reader would refuse it: do not write it
        raise ModelFileError(f"cannot write {str(path)!r}: its metadata (spec and names) "
                             f"takes {blob.size} bytes, more than the {MAX_META_BYTES} a "
                             f"model file may hold (a huge network name or config value?)")
    try:
        with atomic_write(path) as handle:
            write_members(handle, {META: blob, **arrays})
    except FileError as exc:
        raise ModelFileError(str(exc)) from None
    except OSError as exc:
        raise ModelFileError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None


def write_members(handle: IO[bytes], arrays: dict[str, np.ndarray]) -> None:
    """What ``np.savez`` writes (an uncompressed zip of ``.npy`` members), but with the
    archive closed on failure too: numpy 1.26's savez leaves it to the garbage
    collector, which retries the failed write and prints a second error."""
    with zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


class NpzReader:
    """Reads members of an ``.npz`` one at a time, checking each header (dtype, shape,
    declared size) before any data is allocated, never unpickling."""

    def __init__(self, path: str | os.PathLike[str], kind: str = "model file") -> None:
        self.path = str(path)
        self.where = f"{kind} {self.path!r}"
        self.budget = read_limit()  # bytes the arrays read so far may inflate to
        self._reserved: set[str] = set()
        self._file = contextlib.ExitStack()
        try:
            handle = self._file.enter_context(open_regular(path, kind))
            self.zip = zipfile.ZipFile(handle)
        except FileError as exc:
            self._file.close()
            raise ModelFileError(str(exc)) from None
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            self._file.close()
            raise ModelFileError(f"{self.where}: not a valid .npz (zip) file ({exc})") from None
        self.members = {n[:-4]: n for n in self.zip.namelist() if n.endswith(".npy")}

    def close(self) -> None:
        self.zip.close()
        self._file.close()

    def reserve(self, names: list[str]) -> None:
        """Refuse to read ``names`` when the sizes their headers declare exceed what is
        left of the read budget: checked before anything is inflated."""
        declared = self.param_bytes(names)
        if declared > self.budget:
            raise ModelFileError(f"{self.where}: arrays {', '.join(map(repr, names))} "
                                 f"declare {declared} bytes in all, more than the "
                                 f"{self.budget} bytes left of the read limit; "
                                 f"{budget_hint()}")
        self.budget -= declared
        self._reserved.update(names)

    def __enter__(self) -> NpzReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def header(self, name: str) -> tuple[tuple[int, ...], np.dtype[Any]]:
        if name not in self.members:
            raise ModelFileError(f"{self.where}: array {name!r} is missing")
        with self.zip.open(self.members[name]) as stream:
            version = np.lib.format.read_magic(stream)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
            elif version in ((2, 0), (3, 0)):
                shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
            else:  # pragma: no cover - numpy rejects unknown versions in read_magic
                raise ModelFileError(f"{self.where}: array {name!r} has format {version}")
        if dtype.hasobject:
            raise ModelFileError(f"{self.where}: array {name!r} holds Python objects; "
                                 f"refusing to unpickle it")
        info = self.zip.getinfo(self.members[name])
        declared = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        if declared > info.file_size:
            raise ModelFileError(f"{self.where}: array {name!r} declares shape {shape} "
                                 f"({declared} bytes) but holds only {info.file_size} bytes")
        return tuple(shape), dtype

    def read(self, name: str, *, shape: tuple[int, ...] | None = None,
             dtype: Any = None) -> np.ndarray:
        got_shape, got_dtype = self.header(name)
        if shape is not None and got_shape != tuple(shape):
            raise ModelFileError(f"{self.where}: array {name!r} has shape {got_shape}, "
                                 f"expected {tuple(shape)}")
        if dtype is not None and got_dtype != np.dtype(dtype):
            raise ModelFileError(f"{self.where}: array {name!r} has dtype {got_dtype}, "
                                 f"expected {np.dtype(dtype)}")
        declared = int(np.prod(got_shape, dtype=np.float64)) * got_dtype.itemsize
        if name in self._reserved:
            declared = 0
        elif declared > self.budget:
            raise ModelFileError(f"{self.where}: array {name!r} declares {declared} bytes, "
                                 f"more than the {self.budget} bytes left of the read limit; "
                                 f"{budget_hint()}")
        self.budget -= declared
        with self.zip.open(self.members[name]) as stream:  # reads the declared bytes only
            return np.lib.format.read_array(stream, allow_pickle=False)

    def read_json(self) -> dict[str, Any]:
        shape, dtype = self.header(META)
        if dtype != np.uint8 or len(shape) != 1 or shape[0] > MAX_META_BYTES:
            raise ModelFileError(f"{self.where}: bad metadata array")
        try:
            meta = json.loads(self.read(META).tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ModelFileError(f"{self.where}: metadata is not valid JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise ModelFileError(f"{self.where}: metadata must be a JSON object")
        return meta

    def param_bytes(self, names: list[str]) -> int:
        total = 0
        for name in names:
            shape, dtype = self.header(name)
            total += int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        return total


def guarded(where: str, action: Callable[[], Any]) -> Any:
    """Run a file-reading action so that anything but deltaprop's own errors becomes a
    ModelFileError naming the file: corrupt input must never leak numpy internals."""
    try:
        return action()
    except DeltapropError:
        raise
    except (ValueError, TypeError, KeyError, EOFError, OSError, zipfile.BadZipFile,
            RecursionError, MemoryError, OverflowError, IndexError, AttributeError,
            NotImplementedError, RuntimeError, zlib.error, struct.error) as exc:
        # NotImplementedError: an unsupported zip compression; RuntimeError: encrypted
        raise ModelFileError(f"{where}: unreadable ({type(exc).__name__}: {exc})") from None
