"""Issue 20, items 2, 5 and 9: one run per checkpoint directory (a pid lock), layer
generators in checkpoints (a seeded dropout resumes bit for bit), and the resumes that
must be questioned (fewer epochs, changed layers, removed optimizer state, NaN weights)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import deltaprop
from deltaprop.storage.npz import NpzReader, write_npz
from deltaprop.training.checkpoint import CheckpointError, checkpoint_path


def problem(activation: str = "tanh", dropout: bool = False, seed: int = 1):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 5)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    layers = [deltaprop.create("dense", units=8), deltaprop.create(activation)]
    if dropout:
        layers.append(deltaprop.create("dropout", rate=0.3, seed=7))
    layers.append(deltaprop.create("dense", units=2))
    return deltaprop.Sequential(layers, 5, seed=seed), x, y


def fit(net, x, y, tmp, epochs, **kw):
    return net.fit(x, y, optimizer=kw.pop("optimizer", "adam"), epochs=epochs, batch_size=7,
                   seed=5, progress=False, checkpoint=tmp, **kw)


class Stop(Exception):
    pass


def stop_after(epoch_index):
    def hook(epoch, history):
        if epoch == epoch_index:
            raise Stop
    return hook


# -- item 2: a lock with the owner's pid ------------------------------------------------
HOLD_LOCK = """
import sys, time
from deltaprop.storage.lock import PidLock
PidLock(sys.argv[1], "checkpoint").acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_run_on_a_locked_directory_is_refused_naming_the_pid(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK,
                               str(tmp_path / "checkpoint.npz.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        (tmp_path / ".checkpoint.npz.abc.tmp").write_bytes(b"being written")
        net, x, y = problem()
        with pytest.raises(CheckpointError, match=f"in use by process {holder.pid}"):
            fit(net, x, y, tmp_path, 1, resume=True)
        assert (tmp_path / ".checkpoint.npz.abc.tmp").exists(), "another run's file deleted"
    finally:
        holder.kill()
        holder.wait()
    net, x, y = problem()  # the holder is gone, and the kernel released its lock with it
    fit(net, x, y, tmp_path, 1, resume=True)
    assert not (tmp_path / "checkpoint.npz.lock").exists(), "the lock outlived the run"
    assert not (tmp_path / ".checkpoint.npz.abc.tmp").exists()


# -- item 5: the generators layers draw from are in the checkpoint -----------------------
def test_a_seeded_dropout_resumes_bit_for_bit(tmp_path):
    if "dropout" not in deltaprop.get_registry().names("layer"):
        pytest.skip("needs the contrib dropout layer")
    net, x, y = problem(dropout=True)
    net.fit(x, y, optimizer="adam", epochs=3, batch_size=7, seed=5, progress=False)
    reference = {k: v.copy() for k, v in net.params.items()}
    net, x, y = problem(dropout=True)
    with pytest.raises(Stop):
        fit(net, x, y, tmp_path, 3, checkpoint_every=2, on_epoch_end=stop_after(0))
    net, x, y = problem(dropout=True)
    fit(net, x, y, tmp_path, 3, resume=True)
    for key, value in reference.items():
        assert value.tobytes() == net.params[key].tobytes(), key


def test_a_checkpoint_without_the_dropout_generator_is_refused(tmp_path):
    if "dropout" not in deltaprop.get_registry().names("layer"):
        pytest.skip("needs the contrib dropout layer")
    for label, change in (("lacks the random generator state", {}),
                          ("bad random generator state", "bad")):
        net, x, y = problem(dropout=True)
        fit(net, x, y, tmp_path / label, 1)
        path = checkpoint_path(tmp_path / label)
        with NpzReader(path) as reader:
            meta = reader.read_json()
            arrays = {k: reader.read(k) for k in reader.members if k != "__deltaprop__"}
        states = meta["checkpoint"]["layer_generators"]
        meta["checkpoint"]["layer_generators"] = (
            {} if change == {} else {
                node: {attribute: {**state, "state": {"state": 2 ** 300, "inc": 1}}
                       for attribute, state in generators.items()}
                for node, generators in states.items()})
        write_npz(path, meta, arrays)
        net, x, y = problem(dropout=True)
        with pytest.raises(CheckpointError, match=label):
            fit(net, x, y, tmp_path / label, 2, resume=True)


# -- item 9: resumes that must be questioned --------------------------------------------
def test_fewer_epochs_than_done_are_refused(tmp_path):
    net, x, y = problem()
    fit(net, x, y, tmp_path, 3)
    net, x, y = problem()
    with pytest.raises(CheckpointError, match="more than the 2 epoch"):
        fit(net, x, y, tmp_path, 2, resume=True)


def test_a_changed_activation_with_the_same_shapes_is_refused(tmp_path):
    net, x, y = problem("tanh")
    fit(net, x, y, tmp_path, 1)
    net, x, y = problem("sigmoid")
    with pytest.raises(CheckpointError, match="'tanh' -> 'sigmoid'"):
        fit(net, x, y, tmp_path, 2, resume=True)


def rewrite(path, change):
    with NpzReader(path) as reader:
        meta = reader.read_json()
        arrays = {k: reader.read(k) for k in reader.members if k != "__deltaprop__"}
    change(meta, arrays)
    write_npz(path, meta, arrays)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_removed_optimizer_state_is_refused(tmp_path, optimizer):
    opt = (deltaprop.create_optimizer("sgd", lr=0.05, momentum=0.9) if optimizer == "sgd"
           else "adam")
    net, x, y = problem()
    fit(net, x, y, tmp_path, 1, optimizer=opt)

    def strip(meta, arrays):
        kept = [n for n in meta["checkpoint"]["optimizer_state"] if n == "t"]
        meta["checkpoint"]["optimizer_state"] = kept
        for name in list(arrays):
            if name.startswith("optimizer:") and name != "optimizer:t":
                del arrays[name]

    rewrite(checkpoint_path(tmp_path), strip)
    net, x, y = problem()
    with pytest.raises(CheckpointError, match="lacks optimizer state"):
        fit(net, x, y, tmp_path, 2, resume=True, optimizer=opt)

    def no_steps(meta, arrays):
        meta["checkpoint"]["optimizer_state"] = []
        arrays.pop("optimizer:t")

    rewrite(checkpoint_path(tmp_path), no_steps)
    with pytest.raises(CheckpointError, match="step count"):
        fit(net, x, y, tmp_path, 2, resume=True, optimizer=opt)


def test_nan_weights_in_a_checkpoint_are_refused(tmp_path):
    net, x, y = problem()
    fit(net, x, y, tmp_path, 1)
    rewrite(checkpoint_path(tmp_path),
            lambda meta, arrays: arrays[next(k for k in arrays if k.startswith("param:"))]
            .__setitem__((0,), np.nan))
    net, x, y = problem()
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        fit(net, x, y, tmp_path, 2, resume=True)


def test_the_cli_names_the_epochs_and_the_lock(tmp_path, capsys):
    from deltaprop.cli import main
    spec = os.path.join(os.path.dirname(__file__), "bad_inputs", "good", "mlp.toml")
    common = ["train", spec, "--no-progress", "--batch-size", "64", "--checkpoint",
              str(tmp_path)]
    assert main([*common, "--epochs", "2"]) == 0
    capsys.readouterr()
    assert main([*common, "--epochs", "1", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "more than the 1 epoch" in err[0], err
    # the lock was released by the refused run: a third one works
    assert main([*common, "--epochs", "3", "--resume"]) == 0


# -- item 8: a config that cannot be written back fails when the network is built --------
class Renamed(deltaprop.Layer):
    name = "renamed_config"

    def __init__(self, *, factor: float = 2.0, dtype: str = "float32",
                 label: str | None = None) -> None:
        super().__init__(dtype=dtype, label=label)
        self.scale = factor  # stored under another name: get_config cannot read `factor`

    def forward(self, inputs, *, train):
        return (inputs[0] * self.scale,), None

    def backward(self, cache, grad_outputs):
        return (grad_outputs[0] * self.scale,), {}


class SetConfig(Renamed):
    name = "set_config"

    def __init__(self, *, factor: object = frozenset({1, 2}), dtype: str = "float32",
                 label: str | None = None) -> None:
        super().__init__(dtype=dtype, label=label)
        self.factor = factor
        self.scale = 1.0


@pytest.mark.parametrize("cls, words", [(Renamed, "not stored under the attribute 'factor'"),
                                        (SetConfig, "frozenset")])
def test_a_config_that_cannot_be_saved_fails_at_build_naming_node_and_key(cls, words):
    x = deltaprop.Input((3,), name="x")
    with pytest.raises(deltaprop.errors.ConfigError,
                       match=f"node 'scaler' \\({cls.name}\\): config key 'factor'.*{words}"):
        cls()(x, name="scaler")


def test_a_shuffling_generator_state_out_of_range_is_refused(tmp_path):
    net, x, y = problem()
    fit(net, x, y, tmp_path, 1)
    rewrite(checkpoint_path(tmp_path), lambda meta, arrays: meta["checkpoint"]["rng"].update(
        state={"state": 2 ** 300, "inc": -1}))
    net, x, y = problem()
    with pytest.raises(CheckpointError, match="bad generator state"):
        fit(net, x, y, tmp_path, 2, resume=True)
