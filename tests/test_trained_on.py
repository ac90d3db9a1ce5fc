"""Models remember what they were trained on (name, source, sample shape; not the data),
``deltaprop evaluate`` reads that data unless told ``--data``, and a shape mismatch
names the data, the expected shape and the --data option. Older files still load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

import deltaprop as dp
from deltaprop.storage.npz import write_npz

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def deltaprop(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "deltaprop", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def small_npz(path: Path, shape=(5, 5), classes=3) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.random((30, *shape)).astype("f4"),
             y_train=rng.integers(0, classes, 30), x_test=rng.random((12, *shape)).astype("f4"),
             y_test=rng.integers(0, classes, 12))
    return path


def test_a_trained_model_remembers_its_data_and_evaluate_reads_it(tmp_path):
    data = small_npz(tmp_path / "tiles.npz")
    model = tmp_path / "m.npz"
    trained = deltaprop("train", "--data", "tiles.npz", "--epochs", "1", "--out", "m.npz",
                        "--no-progress", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    net = dp.load(model)
    assert net.trained_on == {"name": "tiles", "source": str(data), "sample_shape": [5, 5]}
    evaluated = deltaprop("evaluate", str(model))  # another folder: the path is absolute
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"data: {data} (what {model} was trained on" in evaluated.stdout
    wrong = deltaprop("evaluate", str(model), "--data", "digits")
    assert wrong.returncode == 2
    message = wrong.stderr
    assert "data 'digits': samples of shape (64,)" in message
    assert "network input shape (25,)" in message
    assert "trained on 'tiles' (samples of shape (5, 5)" in message
    assert "--data" in message and message.count("\n") == 1


def test_a_spec_on_the_wrong_data_points_at_data():
    result = deltaprop("train", str(EXAMPLES / "fashion_cnn.toml"), "--epochs", "1")
    assert result.returncode == 2
    assert "data 'digits'" in result.stderr and "--data" in result.stderr


def test_older_model_files_without_it_still_load(tmp_path):
    x = dp.Input(3)
    net = dp.Network(x, dp.create("dense", units=2)(x))
    path = tmp_path / "old.npz"
    dp.save(net, path)  # never trained by the CLI: nothing recorded, no key written
    assert dp.load(path).trained_on == {}
    from deltaprop.storage.model_format import model_arrays, model_meta

    meta = model_meta(net)
    meta["trained_on"] = {"name": 3, "sample_shape": [-1, "x"], "source": "a.npz"}
    write_npz(path, meta, model_arrays(net))
    assert dp.load(path).trained_on == {"source": "a.npz"}  # what is malformed is dropped
    assert json.dumps(dp.load(path).trained_on)
