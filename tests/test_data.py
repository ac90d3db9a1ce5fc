"""Data loaders: the bundled digits, IDX folders, .npz files."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from deltaprop import DataError
from deltaprop.data import load_data, load_digits, read_idx


def write_idx(path, array, type_code=0x08):
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as handle:
        handle.write(data)


def test_digits_are_bundled_and_split_reproducibly():
    data = load_digits()
    assert len(data.x_train) + len(data.x_test) == 1797
    assert data.x_train.shape[1:] == (64,)
    assert data.x_train.dtype == np.float32 and 0 <= data.x_train.min() <= data.x_train.max() <= 1
    assert set(np.unique(data.y_train)) == set(range(10))
    np.testing.assert_array_equal(load_digits().y_test, data.y_test)
    assert data.reshaped((1, 8, 8)).x_train.shape[1:] == (1, 8, 8)
    with pytest.raises(DataError, match="do not fit"):
        data.reshaped((7, 7))


def test_idx_folder_gzipped_and_plain(tmp_path, rng):
    images = rng.integers(0, 256, (5, 4, 4)).astype(np.uint8)
    labels = rng.integers(0, 3, 5).astype(np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images[:2])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels[:2])
    data = load_data(tmp_path)
    np.testing.assert_allclose(data.x_train, images / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(data.y_test, labels[:2])


def test_idx_errors_name_the_file(tmp_path):
    bad_magic = tmp_path / "bad"
    bad_magic.write_bytes(b"\x01\x02\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(DataError, match=r"bad'.*wrong magic"):
        read_idx(bad_magic)
    short = tmp_path / "short"
    short.write_bytes(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"abc")
    with pytest.raises(DataError, match=r"short'.*declares shape"):
        read_idx(short)


def test_npz_dataset_and_bad_sources(tmp_path):
    path = tmp_path / "set.npz"
    np.savez(path, x_train=np.ones((3, 2)), y_train=np.array([0, 1, 1]),
             x_test=np.ones((1, 2)), y_test=np.array([1]))
    assert load_data(path).n_classes == 2
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.ones((3, 2)), y_train=np.array([0, 1]),
             x_test=np.ones((1, 2)), y_test=np.array([1]))
    with pytest.raises(DataError, match="3 samples but y_train has 2"):
        load_data(bad)
    with pytest.raises(DataError, match="expected 'digits'"):
        load_data(tmp_path / "nothing.csv")
