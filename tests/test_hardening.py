"""Issue 20's promises that the bad-input corpus cannot hold as files: special files
(devices, FIFOs, links), file modes, a failed write, read budgets, locks, plugins."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from deltaprop.cli import main
from deltaprop.errors import FileError
from deltaprop.storage.files import atomic_write, read_bytes, write_bytes

GOOD_SPEC = Path(__file__).with_name("bad_inputs") / "good" / "mlp.toml"


def one_line_error(capsys, rc: int) -> str:
    _, err = capsys.readouterr()
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deltaprop: error: "), err
    return lines[0]


def train_args(tmp: Path, *extra: str) -> list[str]:
    return ["train", str(GOOD_SPEC), "--epochs", "1", "--no-progress", *extra]


# -- item 1: writes never replace what is not a regular file ------------------------------
@pytest.mark.parametrize("option", ["--out", "--metrics-json", "--plot"])
def test_a_link_to_a_device_is_refused_and_left_alone(option, tmp_path, capsys):
    link = tmp_path / "target"
    link.symlink_to("/dev/null")
    line = one_line_error(capsys, main(train_args(tmp_path, option, str(link))))
    assert option in line and "character device" in line and str(link) in line
    assert link.is_symlink() and stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_link_to_standard_output_is_not_replaced(tmp_path):
    link = tmp_path / "metrics.json"
    link.symlink_to("/proc/self/fd/1")
    done = subprocess.run([sys.executable, "-m", "deltaprop", *train_args(
        tmp_path, "--metrics-json", str(link))], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "FIFO" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert link.is_symlink()


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_a_device_node_made_by_mknod_stays_a_device(tmp_path, capsys):
    node = tmp_path / "null"
    os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    line = one_line_error(capsys, main(train_args(tmp_path, "--out", str(node))))
    assert "--out" in line and "character device" in line
    assert stat.S_ISCHR(os.stat(node).st_mode)


def test_a_device_node_is_refused(tmp_path):
    with pytest.raises(FileError, match="character device"):
        write_bytes("/dev/null", b"x")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(FileError, match="FIFO"):
        write_bytes(fifo, b"x")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_link_to_a_regular_file_is_written_through(tmp_path):
    real = tmp_path / "real.json"
    real.write_bytes(b"old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    write_bytes(link, b"new")
    assert link.is_symlink() and real.read_bytes() == b"new"


def test_the_replaced_files_mode_is_kept_and_a_new_file_honours_the_umask(tmp_path):
    old = tmp_path / "old.bin"
    old.write_bytes(b"old")
    old.chmod(0o640)
    write_bytes(old, b"new")
    assert stat.S_IMODE(os.stat(old).st_mode) == 0o640
    previous = os.umask(0o027)
    try:
        write_bytes(tmp_path / "new.bin", b"new")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "new.bin").st_mode) == 0o640


def test_a_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "model.npz"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(target) as handle:
        handle.write(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]


# -- item 12: reads take regular files only, up to a limit --------------------------------
def test_a_fifo_spec_or_data_file_is_refused_without_hanging(tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    os.mkfifo(spec)
    line = one_line_error(capsys, main(["train", str(spec), "--no-progress"]))
    assert "spec.toml" in line and "FIFO" in line
    data = tmp_path / "data.npz"
    os.mkfifo(data)
    line = one_line_error(capsys, main(["train", "--data", str(data), "--no-progress"]))
    assert "data.npz" in line and "FIFO" in line


def test_a_link_to_dev_zero_is_refused(tmp_path, capsys):
    for name, args in (("spec.toml", ["train", "{p}"]),
                       ("data.npz", ["train", "--data", "{p}"]),
                       ("model.npz", ["evaluate", "{p}"])):
        link = tmp_path / name
        link.symlink_to("/dev/zero")
        line = one_line_error(capsys, main([a.format(p=link) for a in args]))
        assert name in line and "character device" in line


def test_a_file_past_the_read_limit_is_refused_naming_it(tmp_path, monkeypatch):
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * 2048)
    monkeypatch.setenv("DELTAPROP_MAX_READ_BYTES", "1K")
    with pytest.raises(FileError, match=r"big\.toml.*read limit of 1024"):
        read_bytes(big, "spec file")
    monkeypatch.setenv("DELTAPROP_MAX_READ_BYTES", "abc")
    with pytest.raises(FileError, match="DELTAPROP_MAX_READ_BYTES='abc'"):
        read_bytes(big, "spec file")


# -- item 13: array sizes come from their headers, before anything is inflated ------------
def zip_bomb(path: Path, n_values: int) -> None:
    """An .npz whose x_train is n_values float64 zeros, deflated to almost nothing."""
    arrays = {"x_train": np.zeros((n_values // 64, 64)), "y_train": np.zeros(n_values // 64,
              dtype=np.int64), "x_test": np.zeros((2, 64)), "y_test": np.zeros(2, dtype=np.int64)}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, value in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, value)


def test_an_npz_claiming_more_than_the_budget_is_refused_before_inflating(
        tmp_path, capsys, monkeypatch):
    bomb = tmp_path / "bomb.npz"
    zip_bomb(bomb, 4 << 20)  # 32 MiB of float64 in a file of a few dozen KiB
    assert bomb.stat().st_size < 1 << 20
    monkeypatch.setenv("DELTAPROP_MAX_READ_BYTES", "8M")
    line = one_line_error(capsys, main(["train", "--data", str(bomb), "--no-progress"]))
    assert "bomb.npz" in line and "x_train" in line and "DELTAPROP_MAX_READ_BYTES" in line
    monkeypatch.setenv("DELTAPROP_MAX_READ_BYTES", "64M")  # the user raises the budget
    from deltaprop.io.data import load_data
    assert load_data(bomb).x_train.shape == (1 << 16, 64)


# -- item 14: an empty test set, a name too long to load back ------------------------------
def test_an_empty_test_set_reports_no_figures_and_writes_valid_json(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.random((30, 64)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=rng.integers(0, 10, 30),
             x_test=x[:0], y_test=np.zeros(0, dtype=np.int64))
    metrics = tmp_path / "m.json"
    assert main(["train", "--data", str(tmp_path / "d.npz"), "--epochs", "1", "--no-progress",
                 "--metrics-json", str(metrics)]) == 0
    out = capsys.readouterr().out
    assert "test loss: 0.0000" not in out and "test set is empty" in out
    import json
    report = json.loads(metrics.read_text(), parse_constant=lambda c: pytest.fail(c))
    assert report["test_loss"] is None


def test_a_model_whose_metadata_could_not_be_read_back_is_not_written(tmp_path, monkeypatch):
    import deltaprop
    import deltaprop.storage.npz as npz
    net = deltaprop.Sequential([deltaprop.create("dense", units=2)], 3, seed=0)
    target = tmp_path / "m.npz"
    target.write_bytes(b"old")
    monkeypatch.setattr(npz, "MAX_META_BYTES", 4096)
    net.name = "n" * 5000
    with pytest.raises(deltaprop.errors.ModelFileError, match="more than the 4096"):
        deltaprop.save(net, target)
    assert target.read_bytes() == b"old"


# -- item 15: "File too large" names the file ------------------------------------------------
def test_a_write_past_the_file_size_limit_names_the_file(tmp_path):
    import resource
    import signal

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))

    target = tmp_path / "model.npz"
    target.write_bytes(b"old")
    done = subprocess.run([sys.executable, "-m", "deltaprop", *train_args(
        tmp_path, "--out", str(target))], capture_output=True, text=True, timeout=120,
        preexec_fn=small_files)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(target) in lines[0] and "File too large" in lines[0]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]
