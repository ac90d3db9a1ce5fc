"""Nothing is lost on interruption: a training process killed at any point and resumed
ends with the same weights, bit for bit, as one never interrupted; a writer killed
mid-save leaves the previous checkpoint loadable; a run that diverges stops with the
node at fault and leaves the last good checkpoint.

The interrupted runs are real ``deltaprop train`` processes (tests/crash_driver.py)
that receive real signals: at a named optimizer step, in the middle of a checkpoint
write, and at moments chosen by a timer from outside.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import deltaprop
from deltaprop.errors import DeltapropError, TrainingError
from deltaprop.storage.npz import NpzReader, write_npz
from deltaprop.training.anomaly import AnomalyDetector, AnomalyError
from deltaprop.training.checkpoint import (
    CheckpointError,
    TrainingInterrupted,
    checkpoint_path,
    load_checkpoint,
)
from deltaprop.training.losses import OutputLosses
from deltaprop.training.step import TrainingStep

DRIVER = Path(__file__).with_name("crash_driver.py")
EPOCHS, BATCH, STEPS = 3, 32, 45  # the bundled digits: 1438 training samples, 45 batches
TOTAL = EPOCHS * STEPS
COMMON = ["train", "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--seed", "3",
          "--no-progress"]


def drive(workdir: Path, mode: str, n: int, *extra: str, timeout: float = 120
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(DRIVER), mode, str(n), *COMMON, *extra],
                          cwd=workdir, capture_output=True, text=True, timeout=timeout)


def weights(path: Path) -> dict[str, np.ndarray]:
    with NpzReader(path) as reader:
        return {k: reader.read(k) for k in reader.members if k.startswith("param:")}


def assert_bitwise_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert a[key].tobytes() == b[key].tobytes(), f"{key} differs"


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, np.ndarray], float]:
    """An uninterrupted run without any checkpointing: the reference."""
    work = tmp_path_factory.mktemp("baseline")
    done = drive(work, "none", 0, "--out", "out.npz", "--metrics-json", "m.json")
    assert done.returncode == 0, done.stderr
    metrics = json.loads((work / "m.json").read_text())
    return weights(work / "out.npz"), metrics["final_train_loss"]


def net_for_checkpoint() -> deltaprop.Network:
    from deltaprop.cli import default_spec

    return deltaprop.load_spec(default_spec(64, 10))


def last_saved_step(n: int, every: int | None) -> int:
    """Global step of the newest checkpoint when a kill arrives right after the update of
    step ``n``, before anything else (saves come at the start, every ``every`` batches
    within an epoch, and at each epoch's end)."""
    best = 0
    for step in range(1, n):
        batch = (step - 1) % STEPS + 1
        if batch == STEPS or (every and batch % every == 0):
            best = step
    return best


def resume_and_compare(work: Path, baseline: tuple[dict[str, np.ndarray], float],
                       args: list[str], *, from_checkpoint: bool = True) -> None:
    done = drive(work, "none", 0, *args, "--resume")
    assert done.returncode == 0, done.stderr
    assert ("resuming from" in done.stdout) == from_checkpoint, done.stdout
    assert_bitwise_equal(weights(work / "out.npz"), baseline[0])
    assert json.loads((work / "m.json").read_text())["final_train_loss"] == baseline[1]
    assert not list(work.glob("ck/.*.tmp")), "a half-written checkpoint was left behind"


# (signal, optimizer step after which it arrives, --checkpoint-every)
POINTS = [
    ("kill", 1, None),         # before any save but the initial one
    ("kill", 20, 7),           # mid-epoch, resumed from a mid-epoch checkpoint
    ("kill", STEPS, None),     # after the last batch of an epoch, before its save
    ("kill", 70, None),        # mid-epoch, resumed from the epoch boundary
    ("kill", TOTAL, 10),       # after the very last step
    ("term", 30, None),        # SIGTERM mid-epoch: saves there and exits 143
    ("int", 100, 4),           # SIGINT mid-epoch: saves there and exits 130
    ("term", 2 * STEPS, None),  # SIGTERM on an epoch boundary
]


@pytest.mark.parametrize(("mode", "step", "every"), POINTS,
                         ids=[f"{m}-at-step-{s}-every-{e}" for m, s, e in POINTS])
def test_interrupted_run_resumes_bit_for_bit(tmp_path, baseline, mode, step, every):
    args = ["--checkpoint", "ck", "--out", "out.npz", "--metrics-json", "m.json"]
    if every:
        args += ["--checkpoint-every", str(every)]
    done = drive(tmp_path, mode, step, *args)
    expected_rc = {"kill": -signal.SIGKILL, "term": 128 + signal.SIGTERM,
                   "int": 128 + signal.SIGINT}[mode]
    assert done.returncode == expected_rc, done.stderr
    assert not (tmp_path / "out.npz").exists() and not (tmp_path / "m.json").exists()
    ckpt = load_checkpoint(tmp_path / "ck", net_for_checkpoint())
    saved = ckpt.position.epoch * STEPS + ckpt.position.batch
    if mode == "kill":
        assert saved == last_saved_step(step, every)
    else:  # a signal that can be handled saves exactly where training stopped
        assert saved == step
        stderr = done.stderr.strip().splitlines()
        assert len(stderr) == 1 and "checkpoint saved" in stderr[0], done.stderr
    resume_and_compare(tmp_path, baseline, args)


@pytest.mark.parametrize("save_number", [1, 3, 5])
def test_writer_killed_mid_save_leaves_the_previous_checkpoint(tmp_path, baseline,
                                                              save_number):
    """Saves are: 1 the initial state, 2..4 the ends of epochs 1..3, 5 the --out model."""
    args = ["--checkpoint", "ck", "--out", "out.npz", "--metrics-json", "m.json"]
    done = drive(tmp_path, "kill-in-save", save_number, *args)
    assert done.returncode == -signal.SIGKILL
    assert not (tmp_path / "out.npz").exists()
    leftovers = list(tmp_path.glob("ck/.*.tmp")) + list(tmp_path.glob(".out.npz.*.tmp"))
    assert leftovers, "the writer was not killed mid-save"
    if save_number == 1:  # nothing was saved before: no checkpoint at all, not a broken one
        assert not checkpoint_path(tmp_path / "ck").exists()
    else:
        ckpt = load_checkpoint(tmp_path / "ck", net_for_checkpoint())
        assert (ckpt.position.epoch, ckpt.position.batch) == (min(save_number - 2, 3), 0)
    resume_and_compare(tmp_path, baseline, args, from_checkpoint=save_number > 1)


def test_sigterm_mid_save_finishes_the_save_then_stops(tmp_path, baseline):
    """SIGTERM while the end-of-epoch-1 checkpoint is half written: the write completes,
    training stops there with exit status 143, and resuming loses nothing."""
    args = ["--checkpoint", "ck", "--out", "out.npz", "--metrics-json", "m.json"]
    done = drive(tmp_path, "term-in-save", 2, *args)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert "interrupted by SIGTERM at epoch 2 after 0 batch(es)" in done.stderr
    pos = load_checkpoint(tmp_path / "ck", net_for_checkpoint()).position
    assert (pos.epoch, pos.batch) == (1, 0)
    resume_and_compare(tmp_path, baseline, args)


def test_killed_from_outside_at_random_moments(tmp_path, baseline):
    """SIGKILL from another process at a random moment after the run has saved a new
    checkpoint (so each round makes progress however slow the machine), resume, again."""
    args = ["--checkpoint", "ck", "--checkpoint-every", "5", "--out", "out.npz",
            "--metrics-json", "m.json"]
    ckpt_file = checkpoint_path(tmp_path / "ck")
    rng = np.random.default_rng(7)
    positions: list[int] = []
    for _ in range(3):
        seen = ckpt_file.stat().st_mtime_ns if ckpt_file.exists() else None
        proc = subprocess.Popen([sys.executable, str(DRIVER), "none", "0", *COMMON, *args,
                                 "--resume"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline and (
                not ckpt_file.exists() or ckpt_file.stat().st_mtime_ns == seen):
            time.sleep(0.005)
        time.sleep(float(rng.uniform(0.0, 0.15)))
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        pos = load_checkpoint(ckpt_file, net_for_checkpoint()).position
        positions.append(pos.epoch * STEPS + pos.batch)
    assert positions == sorted(positions), f"a resumed run went backwards: {positions}"
    resume_and_compare(tmp_path, baseline, args)


# -- in-process: the API, and what a checkpoint refuses -----------------------------------

@pytest.fixture(autouse=True)
def default_signal_handlers():
    """Python's usual handlers for the in-process signal tests, however pytest was
    started (a background job ignores SIGINT, and deltaprop keeps it ignored)."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def small_problem(seed: int = 0, n: int = 60):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 5)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    net = deltaprop.Sequential([deltaprop.create("dense", units=8), deltaprop.create("tanh"),
                                deltaprop.create("dense", units=2)], 5, seed=1)
    return net, x, y


class Crash(Exception):
    pass


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fit_resumes_after_a_crash_in_process(tmp_path, optimizer):
    def opt():
        return deltaprop.create_optimizer(optimizer, lr=0.05, **(
            {"momentum": 0.9} if optimizer == "sgd" else {}))

    net, x, y = small_problem()
    net.fit(x, y, optimizer=opt(), epochs=4, batch_size=7, seed=5, progress=False)
    reference = {k: v.copy() for k, v in net.params.items()}

    def crash(epoch, history):
        if epoch == 1:
            raise Crash

    net, x, y = small_problem()
    with pytest.raises(Crash):
        net.fit(x, y, optimizer=opt(), epochs=4, batch_size=7, seed=5, progress=False,
                checkpoint=tmp_path, checkpoint_every=3, on_epoch_end=crash)
    net, x, y = small_problem(n=60)
    net = deltaprop.Sequential([deltaprop.create("dense", units=8), deltaprop.create("tanh"),
                                deltaprop.create("dense", units=2)], 5, seed=99)
    history = net.fit(x, y, optimizer=opt(), epochs=4, batch_size=7, seed=5, progress=False,
                      checkpoint=tmp_path, resume=True)
    assert len(history.loss) == 4
    assert_bitwise_equal(net.params, reference)


def test_a_resumed_run_has_the_whole_history_of_validation_figures(tmp_path):
    net, x, y = small_problem()
    settings = {"epochs": 3, "batch_size": 8, "seed": 0, "progress": False,
                "validation": (x[:20], y[:20])}
    whole = net.fit(x, y, **settings)

    def stop_after_first(epoch, history):
        if epoch == 0:
            raise Crash

    net, x, y = small_problem()
    with pytest.raises(Crash):
        net.fit(x, y, checkpoint=tmp_path, on_epoch_end=stop_after_first, **settings)
    net, x, y = small_problem()
    resumed = net.fit(x, y, checkpoint=tmp_path, resume=True, **settings)
    assert resumed.val_metrics == whole.val_metrics
    assert len(resumed.val_metrics) == 3 and {"loss", "accuracy"} <= set(whole.val_metrics[0])
    assert (resumed.loss, resumed.val_loss, resumed.val_accuracy) == (
        whole.loss, whole.val_loss, whole.val_accuracy)


def test_resume_refuses_another_run(tmp_path):
    net, x, y = small_problem()
    net.fit(x, y, optimizer="adam", epochs=1, batch_size=8, seed=0, progress=False,
            checkpoint=tmp_path)
    with pytest.raises(CheckpointError, match="batch_size was 8, now 9"):
        net.fit(x, y, optimizer="adam", epochs=2, batch_size=9, seed=0, progress=False,
                checkpoint=tmp_path, resume=True)
    with pytest.raises(CheckpointError, match="training data differ"):
        net.fit(x[::-1], y[::-1], optimizer="adam", epochs=2, batch_size=8, seed=0,
                progress=False, checkpoint=tmp_path, resume=True)
    with pytest.raises(CheckpointError, match="seed was 0, now 1"):
        net.fit(x, y, optimizer="adam", epochs=2, batch_size=8, seed=1, progress=False,
                checkpoint=tmp_path, resume=True)
    other = deltaprop.Sequential([deltaprop.create("dense", units=3),
                                  deltaprop.create("dense", units=2)], 5, seed=1)
    with pytest.raises(CheckpointError, match="parameters do not match"):
        other.fit(x, y, optimizer="adam", epochs=2, batch_size=8, seed=0, progress=False,
                  checkpoint=tmp_path, resume=True)
    with pytest.raises(TrainingError, match="resume needs a checkpoint"):
        net.fit(x, y, epochs=1, resume=True, progress=False)


def test_corrupt_checkpoints_are_refused_cleanly(tmp_path):
    net, x, y = small_problem()
    net.fit(x, y, epochs=1, batch_size=8, seed=0, progress=False, checkpoint=tmp_path,
            checkpoint_every=2)
    path = checkpoint_path(tmp_path)
    raw = path.read_bytes()
    for i, cut in enumerate([0, 10, len(raw) // 3, len(raw) - 5]):
        bad = tmp_path / f"cut{i}" / "checkpoint.npz"
        bad.parent.mkdir()
        bad.write_bytes(raw[:cut])
        with pytest.raises(CheckpointError):
            load_checkpoint(bad, net)
    with NpzReader(path) as reader:
        meta = reader.read_json()
        arrays = {k: reader.read(k) for k in reader.members if k != "__deltaprop__"}
    tampered = {
        "position": lambda m, a: m["checkpoint"].update(batch=-1),
        "rng": lambda m, a: m["checkpoint"].update(rng={"bit_generator": "nope"}),
        "order": lambda m, a: (m["checkpoint"].update(has_order=True, batch=2),
                               a.update(order=np.zeros(60, dtype=np.int64))),
        "no-order": lambda m, a: m["checkpoint"].update(batch=2),
        "far-batch": lambda m, a: (m["checkpoint"].update(has_order=True, batch=99),
                                   a.update(order=np.arange(60))),
        "opt-shape": lambda m, a: a.update({"optimizer:dense/W::m": np.zeros(2, np.float32)}),
        "history": lambda m, a: m["checkpoint"].update(history={"loss": ["x"]}),
    }
    for name, change in tampered.items():
        m, a = json.loads(json.dumps(meta)), dict(arrays)
        change(m, a)
        bad = tmp_path / f"bad-{name}" / "checkpoint.npz"
        bad.parent.mkdir()
        write_npz(bad, m, a)
        fresh, _, _ = small_problem()
        with pytest.raises(DeltapropError, match="checkpoint"):
            fresh.fit(x, y, epochs=2, batch_size=8, seed=0, progress=False,
                      checkpoint=bad.parent, resume=True)


def test_signal_in_process_saves_and_raises(tmp_path):
    net, x, y = small_problem()
    sent = []

    def on_epoch_end(epoch, history):
        if not sent:
            sent.append(epoch)
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(TrainingInterrupted, match="SIGTERM") as info:
        net.fit(x, y, epochs=3, batch_size=8, seed=0, progress=False, checkpoint=tmp_path,
                on_epoch_end=on_epoch_end)
    assert info.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored
    pos = load_checkpoint(tmp_path, net).position
    assert (pos.epoch, pos.batch) == (1, 0)


def test_a_second_signal_stops_at_once_and_keeps_the_last_checkpoint(tmp_path):
    net, x, y = small_problem()

    def on_epoch_end(epoch, history):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted, match="interrupted twice by SIGINT"):
        net.fit(x, y, epochs=3, batch_size=8, seed=0, progress=False, checkpoint=tmp_path,
                detect_anomaly=True, on_epoch_end=on_epoch_end)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    pos = load_checkpoint(tmp_path, net).position
    assert (pos.epoch, pos.batch) == (1, 0)  # the end-of-epoch save before the signals


# -- divergence: the node at fault, and the last good checkpoint ----------------------------

def test_an_ignored_signal_stays_ignored(tmp_path):
    net, x, y = small_problem()
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def on_epoch_end(epoch, history):
        os.kill(os.getpid(), signal.SIGINT)

    history = net.fit(x, y, epochs=2, batch_size=8, seed=0, progress=False,
                      checkpoint=tmp_path, on_epoch_end=on_epoch_end)
    assert len(history.loss) == 2  # not interrupted
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_divergence_names_the_node_and_keeps_the_last_good_checkpoint(tmp_path):
    net, x, y = small_problem()
    opt = deltaprop.create_optimizer("sgd", lr=1e30)
    with pytest.raises(AnomalyError) as info:
        net.fit(x * 1e3, y, optimizer=opt, epochs=5, batch_size=8, seed=0, progress=False,
                checkpoint=tmp_path, checkpoint_every=1, detect_anomaly=True)
    message = str(info.value)
    assert "epoch 1, batch" in message and "last good checkpoint" in message
    assert "non-finite" in message
    ckpt = load_checkpoint(tmp_path, net)
    assert all(np.isfinite(v).all() for v in ckpt.params.values())
    failed_batch = int(message.split("batch ")[1].split(":")[0])
    assert ckpt.position.batch == failed_batch - 1


class GradBomb(deltaprop.Layer):
    """Identity forward, NaN delta backward: a backward bug the detector must pin down."""

    name = "grad_bomb"

    def forward(self, inputs, *, train):
        return (inputs[0] * 1.0,), (True if train else None)

    def backward(self, cache, grad_outputs, *, needs_grad=None):
        return (np.full_like(grad_outputs[0], np.nan),), {}


def test_anomaly_names_the_first_node_forward_and_backward():
    def checked_train_step(net, x, y, *, loss, optimizer, detector):
        step = TrainingStep(net, OutputLosses(net, loss), optimizer, hooks=[detector])
        return step([x], [y])

    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    y = np.array([0, 1, 0, 1])
    loss = deltaprop.create_loss("softmax_cross_entropy")
    inp = deltaprop.Input(3)
    h = deltaprop.create("dense", units=4, label="first")(inp)
    h = deltaprop.create("tanh", label="squash")(h)
    out = deltaprop.create("dense", units=2, label="second")(h)
    net = deltaprop.Network(inp, out)
    net.layers[2].params["W"][0, 0] = np.inf
    before = {k: v.copy() for k, v in net.params.items()}
    with pytest.raises(AnomalyError, match=r"node 'second' \(dense\) output 0 became "
                                           r"non-finite.*parameter\(s\) W"):
        checked_train_step(net, x, y, loss=loss, optimizer=deltaprop.create_optimizer("sgd"),
                           detector=AnomalyDetector())
    assert not net.hooks  # the step's hook never attached to the network
    for k, v in net.params.items():  # no update was applied
        assert np.array_equal(v, before[k])

    inp = deltaprop.Input(3)
    h = deltaprop.create("dense", units=4, label="first")(inp)
    h = GradBomb(label="bomb")(h)
    out = deltaprop.create("dense", units=2, label="second")(h)
    net = deltaprop.Network(inp, out)
    with pytest.raises(AnomalyError, match=r"node 'bomb' \(grad_bomb\) gradient for input 0"):
        checked_train_step(net, x, y, loss=loss, optimizer=deltaprop.create_optimizer("sgd"),
                           detector=AnomalyDetector())


def test_cli_divergence_under_detect_anomaly(tmp_path):
    from deltaprop.cli import main

    spec = tmp_path / "net.json"
    spec.write_text(json.dumps({
        "inputs": {"x": [64]}, "outputs": ["out"],
        "nodes": [{"name": "hidden", "layer": "dense", "inputs": ["x"], "units": 16},
                  {"name": "act", "layer": "tanh", "inputs": ["hidden"]},
                  {"name": "out", "layer": "dense", "inputs": ["act"], "units": 10}],
        "train": {"optimizer": "sgd", "epochs": 2}}))
    out = tmp_path / "out.npz"
    rc = main(["train", str(spec), "--lr", "1e36", "--detect-anomaly", "--checkpoint",
               str(tmp_path / "ck"), "--out", str(out), "--no-progress"])
    assert rc != 0 and not out.exists()
    ckpt = load_checkpoint(tmp_path / "ck", deltaprop.load_spec(spec))
    assert all(np.isfinite(v).all() for v in ckpt.params.values())
