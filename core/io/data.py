"""Data sets: the bundled 8x8 digits, MNIST-format IDX folders, and ``.npz`` files.

The digits are the UCI "Optical Recognition of Handwritten Digits" test set
(1797 images of 8x8 pixels, values 0..16; Alpaydin & Kaynak, CC BY 4.0), shipped
in ``deltaprop/data/digits.npz``.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, FileError
from ..storage.files import budget_hint, read_bytes, read_limit
from ..storage.npz import NpzReader, guarded

#: IDX type codes (the third byte of the magic number)
_IDX_DTYPES: dict[int, Any] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
               0x0E: ">f8"}
_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


@dataclass(repr=False)
class Dataset:
    """Train and test arrays; inputs scaled to [0, 1] floats, labels integers."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if len(x) != len(y):
                raise DataError(f"data {self.name!r}: x_{split} has {len(x)} samples but "
                                f"y_{split} has {len(y)}")
            if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
                raise DataError(f"data {self.name!r}: x_{split} has NaN or infinite values")

    def __repr__(self) -> str:  # the sizes, not the arrays
        return (f"<Dataset {self.name!r}: {len(self.x_train)} train / {len(self.x_test)} "
                f"test samples of shape {self.x_train.shape[1:]}, {self.x_train.dtype}>")

    @property
    def n_classes(self) -> int:
        if self.y_train.ndim == 2:  # one-hot rows: one column per class
            return int(self.y_train.shape[1])
        return int(max(self.y_train.max(initial=0), self.y_test.max(initial=0))) + 1

    def reshaped(self, shape: tuple[int, ...]) -> Dataset:
        """The same data with each sample reshaped to ``shape`` when the sizes agree."""
        return Dataset(self.name, fit_to_shape(self.x_train, shape, self.name),
                       self.y_train, fit_to_shape(self.x_test, shape, self.name), self.y_test)


def fit_to_shape(x: np.ndarray, shape: tuple[int, ...], name: str = "data") -> np.ndarray:
    if x.shape[1:] == tuple(shape):
        return x
    if int(np.prod(x.shape[1:])) != int(np.prod(shape)):
        raise DataError(f"data {name!r}: samples of shape {x.shape[1:]} "
                        f"({int(np.prod(x.shape[1:]))} values) do not fit the network input "
                        f"shape {tuple(shape)} ({int(np.prod(shape))} values)")
    return x.reshape(len(x), *shape)


def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """The bundled digits, shuffled with a fixed seed and split: with the default
    ``test_fraction`` 1438 train and 359 test samples, of shape (64,) in [0, 1]."""
    bundled = resources.files("deltaprop").joinpath("data/digits.npz")
    with bundled.open("rb") as handle, np.load(handle, allow_pickle=False) as archive:
        images, labels = archive["images"], archive["labels"]
    order = np.random.default_rng(seed).permutation(len(images))
    images = images[order].astype(np.float32) / 16.0
    labels = labels[order].astype(np.int64)
    n_test = round(len(images) * test_fraction)
    return Dataset("digits", images[n_test:], labels[n_test:], images[:n_test], labels[:n_test])


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """One IDX file (gzipped or not): magic 0 0 type ndim, big-endian dims, data."""
    path = Path(path)
    try:
        raw = read_bytes(path, "IDX file")
        if path.suffix == ".gz":
            raw = _gunzip(raw, read_limit(), f"IDX file {str(path)!r}")
    except FileError as exc:
        raise DataError(str(exc)) from None
    except (OSError, EOFError, zlib.error) as exc:  # zlib.error: a corrupt .gz
        raise DataError(f"IDX file {str(path)!r}: cannot read it ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"IDX file {str(path)!r}: wrong magic number "
                        f"{raw[:4].hex() or '(empty)'}; expected 0000TTNN")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"IDX file {str(path)!r}: header is truncated")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims, dtype=np.float64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"IDX file {str(path)!r}: header declares shape {dims} "
                        f"({expected} bytes) but the file holds {len(raw) - header} bytes")
    values = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return values.astype(dtype.newbyteorder("="))


def _gunzip(raw: bytes, limit: int, where: str) -> bytes:
    """Decompress gzip members, refusing to inflate past ``limit`` bytes."""
    out = bytearray()
    while raw:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out += inflater.decompress(raw, limit + 1 - len(out))
        if len(out) > limit or inflater.unconsumed_tail:
            raise FileError(f"{where}: inflates to more than the read limit of {limit} bytes; "
                            f"{budget_hint()}")
        if not inflater.eof:
            raise EOFError("compressed file ended before the end-of-stream marker")
        raw = inflater.unused_data.lstrip(b"\0")
    return bytes(out)


def _find_idx(folder: Path, stem: str) -> Path:
    for candidate in (stem, f"{stem}.gz", stem.replace("-idx", ".idx"),
                      f"{stem.replace('-idx', '.idx')}.gz"):
        if (folder / candidate).exists():
            return folder / candidate
    raise DataError(f"IDX folder {str(folder)!r}: no {stem}[.gz] file")


def load_idx_folder(folder: str | os.PathLike[str]) -> Dataset:
    """An MNIST-format folder (train/t10k images and labels); pixels scaled to [0, 1]."""
    folder = Path(folder)
    arrays = {key: read_idx(_find_idx(folder, stem)) for key, stem in _IDX_FILES.items()}
    for split in ("train", "test"):
        x = arrays[f"x_{split}"]
        if x.dtype == np.uint8:
            arrays[f"x_{split}"] = x.astype(np.float32) / 255.0
        arrays[f"y_{split}"] = _labels(arrays[f"y_{split}"], f"{folder.name} y_{split}")
    return Dataset(folder.name, arrays["x_train"], arrays["y_train"], arrays["x_test"],
                   arrays["y_test"])


def _labels(y: np.ndarray, name: str) -> np.ndarray:
    floating = y.ndim == 1 and np.issubdtype(y.dtype, np.floating)
    if floating and (not np.all(np.isfinite(y)) or not np.all(y == np.round(y))):
        raise DataError(f"data {name!r}: labels must be whole numbers")
    if np.issubdtype(y.dtype, np.floating) and not np.all(np.isfinite(y)):
        raise DataError(f"data {name!r}: labels hold NaN or infinite values")
    if y.dtype.kind == "u" and y.size and int(y.max()) > np.iinfo(np.int64).max:
        raise DataError(f"data {name!r}: label {int(y.max())} is too large for a class index")
    if y.ndim == 1:
        if y.size and y.min() < 0:
            raise DataError(f"data {name!r}: label {int(y.min())} is negative")
        return y.astype(np.int64)
    return y


def load_npz_dataset(path: str | os.PathLike[str]) -> Dataset:
    """An ``.npz`` with ``x_train, y_train, x_test, y_test`` (never unpickled)."""

    where = f"data file {str(path)!r}"

    def read() -> Dataset:
        with NpzReader(path, kind="data file") as reader:
            reader.reserve(list(_IDX_FILES))  # every size checked before any is inflated
            arrays = {key: reader.read(key) for key in _IDX_FILES}
        for key, value in arrays.items():
            if not np.issubdtype(value.dtype, np.number):
                raise DataError(f"{where}: {key} is not numeric ({value.dtype})")
            if value.dtype.kind == "c":  # making it real would drop half of every value
                raise DataError(f"{where}: {key} is complex ({value.dtype}); deltaprop "
                                f"trains on real numbers")
        for split in ("train", "test"):
            x = arrays[f"x_{split}"]
            arrays[f"x_{split}"] = (x.astype(np.float32) / 255.0 if x.dtype == np.uint8
                                    else x.astype(np.float32, copy=False)
                                    if np.issubdtype(x.dtype, np.floating) else x)
            arrays[f"y_{split}"] = _labels(arrays[f"y_{split}"], f"{Path(path).name} y_{split}")
        return Dataset(Path(path).stem, **arrays)

    return guarded(where, read)


def load_data(source: str | os.PathLike[str] = "digits") -> Dataset:
    """``"digits"`` (bundled), an IDX folder, or an ``.npz`` file."""
    if str(source) == "digits":
        return load_digits()
    path = Path(source)
    if path.is_dir():
        return load_idx_folder(path)
    if path.suffix == ".npz":
        if not path.exists():
            raise DataError(f"data file {str(path)!r}: no such file")
        return load_npz_dataset(path)
    raise DataError(f"data {str(source)!r}: expected 'digits', a folder of IDX files, or an "
                    f".npz file with x_train, y_train, x_test, y_test")


def describe(data: Any) -> str:
    return (f"{data.name}: {len(data.x_train)} train / {len(data.x_test)} test samples of "
            f"shape {data.x_train.shape[1:]}")
