"""Writes the binary part of the bad-input corpus (model files, data files, IDX folders)
from a valid model and valid data, each broken in one way. The files are committed;
run ``python tests/bad_inputs/make_corpus.py`` to regenerate them."""

from __future__ import annotations

import io
import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np

import deltaprop
from deltaprop.storage.npz import META, write_npz

HERE = Path(__file__).parent
MODELS, DATA = HERE / "models", HERE / "data"


def members(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as archive:
        meta = json.loads(archive[META].tobytes().decode())
        arrays = {k: archive[k] for k in archive.files if k != META}
    return meta, arrays


def write_raw_npz(path: Path, entries: dict[str, bytes]) -> None:
    """An npz whose .npy members are given as raw bytes (to forge headers)."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name + ".npy", data)


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def meta_bytes(meta: dict) -> bytes:
    return npy_bytes(np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))


def models() -> None:
    shutil.rmtree(MODELS, ignore_errors=True)
    MODELS.mkdir()
    good = MODELS / "_valid.npz"
    net = deltaprop.load_spec(HERE / "good" / "mlp.toml", seed=0)
    deltaprop.save(net, good)
    raw = good.read_bytes()
    meta, arrays = members(good)

    (MODELS / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    (MODELS / "not_a_zip.npz").write_bytes(b"this is a text file, not a model\n")
    (MODELS / "empty_file.npz").write_bytes(b"")
    write_raw_npz(MODELS / "empty_zip.npz", {})

    missing = dict(arrays)
    del missing["param:out/W"]
    write_npz(MODELS / "missing_array.npz", meta, missing)

    wrong_shape = dict(arrays, **{"param:hidden/W": np.zeros((64, 17), np.float32)})
    write_npz(MODELS / "wrong_shape.npz", meta, wrong_shape)

    wrong_dtype = dict(arrays, **{"param:out/b": arrays["param:out/b"].astype(np.float64)})
    write_npz(MODELS / "wrong_dtype.npz", meta, wrong_dtype)

    entries = {META: meta_bytes(meta)}
    entries.update({k: npy_bytes(v) for k, v in arrays.items()})
    obj = np.empty(10, dtype=object)
    obj[:] = [[1.0]] * 10
    entries["param:out/b"] = npy_bytes(obj, allow_pickle=True)
    write_raw_npz(MODELS / "object_array.npz", entries)

    # a header declaring a shape of 10^12 x 10^12 floats over a few bytes of data
    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 10**12)})
    entries = {META: meta_bytes(meta)}
    entries.update({k: npy_bytes(v) for k, v in arrays.items()})
    entries["param:hidden/W"] = header.getvalue() + b"\0" * 64
    write_raw_npz(MODELS / "huge_declared_shape.npz", entries)

    # a spec asking for 10^9 units while the file holds a few kilobytes of weights
    huge_spec = json.loads(json.dumps(meta))
    huge_spec["spec"]["nodes"][0]["units"] = 10**9
    write_npz(MODELS / "huge_spec_units.npz", huge_spec, arrays)

    plugin = json.loads(json.dumps(meta))
    plugin["spec"]["nodes"][1]["layer"] = "fancy_activation"
    plugin["providers"]["fancy_activation"] = {"plugin": "fancy", "version": "1.2.0",
                                               "distribution": "deltaprop-fancy"}
    write_npz(MODELS / "plugin_not_installed.npz", plugin, arrays)

    write_raw_npz(MODELS / "metadata_not_json.npz",
                  {META: npy_bytes(np.frombuffer(b"{not json", dtype=np.uint8)),
                   **{k: npy_bytes(v) for k, v in arrays.items()}})
    write_npz(MODELS / "wrong_format.npz", dict(meta, format="keras"), arrays)
    write_npz(MODELS / "future_version.npz", dict(meta, version=99), arrays)
    cyclic = json.loads(json.dumps(meta))
    cyclic["spec"]["nodes"][0]["inputs"] = ["out"]
    write_npz(MODELS / "spec_with_cycle.npz", cyclic, arrays)
    write_npz(MODELS / "no_metadata.npz", {}, arrays)
    write_raw_npz(MODELS / "params_only.npz", {k: npy_bytes(v) for k, v in arrays.items()})
    nan_weights = dict(arrays, **{"param:out/W": np.full_like(arrays["param:out/W"], np.nan)})
    write_npz(MODELS / "nan_weights.npz", meta, nan_weights)
    good.unlink()


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    head = bytes([0, 0, type_code, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    return head + array.astype(">u1" if type_code == 0x08 else array.dtype).tobytes()


def idx_folder(name: str, x: np.ndarray, y: np.ndarray, *, break_file: str | None = None,
               how: str = "") -> None:
    folder = DATA / name
    folder.mkdir()
    files = {"train-images-idx3-ubyte": idx_bytes(x), "train-labels-idx1-ubyte": idx_bytes(y),
             "t10k-images-idx3-ubyte": idx_bytes(x[:10]),
             "t10k-labels-idx1-ubyte": idx_bytes(y[:10])}
    if break_file == "magic":
        files["train-labels-idx1-ubyte"] = b"\x08\x03\x00\x00" + files[
            "train-labels-idx1-ubyte"][4:]
    elif break_file == "size":
        files["train-images-idx3-ubyte"] = files["train-images-idx3-ubyte"][:-100]
    for fname, data in files.items():
        (folder / fname).write_bytes(data)


def data() -> None:
    shutil.rmtree(DATA, ignore_errors=True)
    DATA.mkdir()
    rng = np.random.default_rng(0)
    x = rng.random((40, 64)).astype(np.float32)
    y = rng.integers(0, 10, 40)

    def npz(name: str, **override: np.ndarray) -> None:
        arrays = {"x_train": x, "y_train": y, "x_test": x[:8], "y_test": y[:8], **override}
        np.savez(DATA / name, **{k: v for k, v in arrays.items() if v is not None})

    npz("labels_out_of_range.npz", y_train=np.where(y == 3, 12, y))
    npz("negative_label.npz", y_test=np.where(y[:8] == y[0], -1, y[:8]))
    npz("fractional_labels.npz", y_train=y + 0.5)
    x_nan = x.copy()
    x_nan[17, 5] = np.nan
    npz("nan_inputs.npz", x_train=x_nan)
    x_inf = x[:8].copy()
    x_inf[2, 2] = np.inf
    npz("inf_test_inputs.npz", x_test=x_inf)
    npz("length_mismatch.npz", y_train=y[:33])
    npz("missing_y_test.npz", y_test=None)
    npz("text_inputs.npz", x_train=np.array([["a"] * 64] * 40))
    npz("wrong_sample_shape.npz", x_train=x[:, :50], x_test=x[:8, :50])
    npz("empty_training_set.npz", x_train=x[:0], y_train=y[:0])
    new_data_cases(npz, x, y)
    (DATA / "truncated.npz").write_bytes((DATA / "nan_inputs.npz").read_bytes()[:300])
    (DATA / "table.csv").write_text("1,2,3\n")
    images = (rng.random((40, 8, 8)) * 255).astype(np.uint8)
    labels = rng.integers(0, 10, 40).astype(np.uint8)
    idx_folder("idx_wrong_magic", images, labels, break_file="magic")
    idx_folder("idx_size_mismatch", images, labels, break_file="size")
    (DATA / "idx_missing_file").mkdir()
    (DATA / "idx_missing_file" / "train-images-idx3-ubyte").write_bytes(idx_bytes(images))


def new_data_cases(npz, x: np.ndarray, y: np.ndarray) -> None:
    """Issue 20's data cases (also written alone by ``--only-new``)."""
    npz("complex_inputs.npz", x_train=x.astype(np.complex64))
    npz("huge_label.npz", y_train=np.where(y == 3, 10**9, y))
    npz("uint64_labels.npz", y_train=np.where(y == 3, 2**64 - 1, y).astype(np.uint64))
    one_hot = np.eye(10)[y]
    nan_rows = one_hot.copy()
    nan_rows[5, 2] = np.nan
    npz("nan_one_hot.npz", y_train=nan_rows, y_test=one_hot[:8])
    npz("negated_one_hot.npz", y_train=-one_hot, y_test=one_hot[:8])


def checkpoints() -> None:
    """A checkpoint of another network, to be refused on --resume."""
    folder = HERE / "checkpoints" / "other_network"
    shutil.rmtree(folder.parent, ignore_errors=True)
    folder.mkdir(parents=True)
    net = deltaprop.Sequential([deltaprop.create("dense", units=7),
                                deltaprop.create("dense", units=10)], 64, seed=0)
    rng = np.random.default_rng(0)
    net.fit(rng.random((20, 64)).astype(np.float32), rng.integers(0, 10, 20), epochs=1,
            progress=False, checkpoint=folder, optimizer="sgd")


if __name__ == "__main__" and sys.argv[1:] == ["--only-new"]:
    generator = np.random.default_rng(0)
    x_new = generator.random((40, 64)).astype(np.float32)
    y_new = generator.integers(0, 10, 40)

    def npz_new(name: str, **override: np.ndarray) -> None:
        arrays = {"x_train": x_new, "y_train": y_new, "x_test": x_new[:8],
                  "y_test": y_new[:8], **override}
        np.savez(DATA / name, **arrays)

    new_data_cases(npz_new, x_new, y_new)
elif __name__ == "__main__":
    models()
    data()
    checkpoints()
