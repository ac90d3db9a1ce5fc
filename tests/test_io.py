"""save/load: one .npz with the spec and the weights, atomic, never unpickled."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

import deltaprop
from deltaprop import ModelFileError, load, save
from deltaprop.storage import npz
from deltaprop.storage.model_format import PARAM_PREFIX
from deltaprop.storage.npz import META, write_npz


@pytest.fixture
def net():
    return deltaprop.load_spec({
        "inputs": {"x": [5]},
        "outputs": ["out"],
        "nodes": [
            {"name": "h", "layer": "dense", "inputs": ["x"], "units": 4},
            {"name": "a", "layer": "sigmoid", "inputs": ["h"]},
            {"name": "out", "layer": "dense", "inputs": ["a"], "units": 3},
        ],
    }, seed=0)


def test_round_trip_gives_identical_outputs(tmp_path, net, rng):
    path = tmp_path / "model.npz"
    save(net, path)
    again = load(path)
    x = rng.standard_normal((7, 5))
    np.testing.assert_array_equal(net.forward(x)[0], again.forward(x)[0])
    assert again.to_spec() == net.to_spec()
    with np.load(path, allow_pickle=False) as archive:
        assert set(archive.files) == {META, *(PARAM_PREFIX + k for k in net.params)}


def test_a_failed_save_leaves_the_old_file(tmp_path, net, monkeypatch):
    path = tmp_path / "model.npz"
    save(net, path)
    before = path.read_bytes()

    def explode(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(npz, "write_members", explode)
    with pytest.raises(ModelFileError, match="No space left"):
        save(net, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.npz"]  # no temporary left behind


def rewrite(src, dst, *, meta=None, arrays=None, drop=()):
    with np.load(src, allow_pickle=False) as archive:
        content = {k: archive[k] for k in archive.files if k not in drop}
    stored = json.loads(content.pop(META).tobytes())
    m = stored if meta is None else meta
    content.update(arrays or {})
    write_npz(dst, m, content)


def test_corrupt_files_are_rejected_naming_the_file(tmp_path, net):
    good = tmp_path / "good.npz"
    save(net, good)
    key = next(iter(net.params))

    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    not_zip = tmp_path / "not_zip.npz"
    not_zip.write_text("hello")
    missing = tmp_path / "missing.npz"
    rewrite(good, missing, drop=(PARAM_PREFIX + key,))
    wrong_shape = tmp_path / "wrong_shape.npz"
    rewrite(good, wrong_shape, arrays={PARAM_PREFIX + key: np.zeros((2, 2), np.float32)})
    wrong_dtype = tmp_path / "wrong_dtype.npz"
    rewrite(good, wrong_dtype, arrays={PARAM_PREFIX + key: net.params[key].astype(np.float64)})
    objects = tmp_path / "objects.npz"
    with zipfile.ZipFile(objects, "w") as zf:
        with zf.open(PARAM_PREFIX + key + ".npy", "w") as handle:
            np.lib.format.write_array(handle, np.array([{"a": 1}], dtype=object),
                                      allow_pickle=True)
        with zf.open(META + ".npy", "w") as handle:
            meta = {"format": "deltaprop-model", "version": 1, "spec": net.to_spec(),
                    "params": [key]}
            np.lib.format.write_array(handle, np.frombuffer(json.dumps(meta).encode(), np.uint8))
    cases = {truncated: "truncated|not a valid|unreadable", not_zip: "not a valid .npz",
             missing: "missing", wrong_shape: "shape", wrong_dtype: "dtype",
             objects: "Python objects"}
    for path, message in cases.items():
        with pytest.raises(ModelFileError, match=message) as info:
            load(path)
        assert path.name in str(info.value)


def test_a_huge_declared_shape_is_refused_before_allocating(tmp_path, net):
    good = tmp_path / "good.npz"
    save(net, good)
    with np.load(good, allow_pickle=False) as archive:
        meta = json.loads(archive[META].tobytes())
    meta["spec"]["nodes"][0]["units"] = 10**12
    huge = tmp_path / "huge.npz"
    rewrite(good, huge, meta=meta)
    with pytest.raises(ModelFileError, match="refused before allocating"):
        load(huge)


def test_a_layer_whose_plugin_is_gone_names_the_distribution(tmp_path, net):
    good = tmp_path / "good.npz"
    save(net, good)
    with np.load(good, allow_pickle=False) as archive:
        meta = json.loads(archive[META].tobytes())
    meta["spec"]["nodes"][1]["layer"] = "swish_deluxe"
    meta["providers"]["swish_deluxe"] = {"plugin": "fancy", "distribution": "fancy-layers",
                                         "version": "1.2"}
    gone = tmp_path / "gone.npz"
    rewrite(good, gone, meta=meta)
    with pytest.raises(ModelFileError, match=r"swish_deluxe.*fancy-layers"):
        load(gone)


def test_a_node_named_by_the_user_keys_its_layers_parameters(tmp_path):
    """The spec that rebuilds a saved network labels each layer by its node's name, so
    the network must key parameters by that name too, or its file would not load."""
    x = deltaprop.Input((3,))
    hidden = deltaprop.create("dense", units=4)(x, name="hidden")
    net = deltaprop.Network(x, deltaprop.create("dense", units=2)(hidden))
    assert list(net.params) == ["hidden/W", "hidden/b", "dense/W", "dense/b"]
    deltaprop.save(net, tmp_path / "m.npz")
    again = deltaprop.load(tmp_path / "m.npz")
    for key, value in net.params.items():
        np.testing.assert_array_equal(again.params[key], value)
