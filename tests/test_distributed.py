"""Data-parallel training over MPI: the flat-buffer plumbing in process, and real
2-rank jobs under ``mpiexec`` (skipped cleanly when mpi4py or mpiexec is missing)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import deltaprop
from deltaprop.distributed import FlatLayout

RANKS = 2
PER_RANK_BATCH = 8


def _mpiexec() -> str | None:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


MPIEXEC = _mpiexec()
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="mpi4py or mpiexec not installed "
                                                       "(pip install 'deltaprop[mpi]')")

# The worker and the single-process reference build the same problem from this code.
PROBLEM = '''
import numpy as np
import deltaprop

def problem():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((203, 12)).astype(np.float32)   # 203: the last batch is uneven
    y = rng.integers(0, 4, 203)
    return x, y

def network(seed):
    return deltaprop.Sequential([deltaprop.create("dense", units=16), deltaprop.create("tanh"),
                                 deltaprop.create("dense", units=4)], input_shape=(12,), seed=seed)
'''

WORKER = PROBLEM + '''
import os, signal, sys, time
from deltaprop.distributed import Distributed

mode, out, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
dist = Distributed(timeout=timeout)
x, y = problem()
net = network(seed=100 + dist.rank)          # different on purpose: rank 0's are broadcast

def on_epoch_end(epoch, history):
    if dist.rank == 1 and mode == "exception":
        raise RuntimeError("rank 1 failed on purpose")
    if dist.rank == 1 and mode == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    if dist.rank == 1 and mode == "stalled":
        time.sleep(100)                 # alive, but never joins the next allreduce

history = net.fit(x, y, optimizer=deltaprop.create_optimizer("adam", lr=0.01), epochs=3,
                  batch_size=int(sys.argv[4]), seed=5, progress=False, validation=(x, y),
                  distributed=dist, on_epoch_end=on_epoch_end)
in_sync = dist.weights_in_sync(net.params)
if dist.is_root:
    np.savez(out, loss=history.loss, val_accuracy=history.val_accuracy, in_sync=in_sync,
             steps=dist.stats["allreduce_calls"], **net.params)
'''


STOP_WORKER = PROBLEM + '''
import sys
from types import SimpleNamespace
import numpy as np
from deltaprop.distributed import Distributed

dist = Distributed(timeout=30)
x, y = problem()
net = network(seed=1)
from deltaprop.training.losses import OutputLosses
from deltaprop.training.step import TrainingStep

opt = deltaprop.create_optimizer("sgd")
batch, _, _ = dist.prepare(net, opt, batch_size=8, seed=0, progress=False, n_samples=len(x))
reducer = dist.reducer()
stop = SimpleNamespace(signum=None)
reducer.stop = stop
step = TrainingStep(net, OutputLosses(net, "softmax_cross_entropy"), opt, reducer=reducer)
seen = []
for k in range(6):
    if dist.rank == 1 and k == 3:
        stop.signum = 15                 # as if SIGTERM reached rank 1 alone
    part = reducer.part(np.arange(k * batch, (k + 1) * batch))
    step([x[part]], [y[part]])
    seen.append(stop.signum)
print(f"rank {dist.rank} saw {seen}", flush=True)
'''


def run_job(tmp_path: Path, mode: str, timeout: float = 30.0
            ) -> tuple[subprocess.CompletedProcess[str], Path, float]:
    assert MPIEXEC is not None
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    out = tmp_path / "rank0.npz"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run([MPIEXEC, "-n", str(RANKS), sys.executable, str(script), mode,
                           str(out), str(timeout), str(PER_RANK_BATCH)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    return proc, out, time.perf_counter() - start


@needs_mpi
def test_two_ranks_match_one_process_with_the_global_batch(tmp_path: Path) -> None:
    proc, out, _ = run_job(tmp_path, "train")
    assert proc.returncode == 0, proc.stderr
    ns: dict = {}
    exec(PROBLEM, ns)
    x, y = ns["problem"]()
    reference = ns["network"](seed=100)
    history = reference.fit(x, y, optimizer=deltaprop.create_optimizer("adam", lr=0.01),
                            epochs=3, batch_size=RANKS * PER_RANK_BATCH, seed=5,
                            progress=False, validation=(x, y))
    with np.load(out) as got:
        assert bool(got["in_sync"]), "the ranks' weights drifted apart"
        assert int(got["steps"]) == 3 * -(-len(x) // (RANKS * PER_RANK_BATCH)) + 3
        diff = max(float(np.max(np.abs(got[k] - v))) for k, v in reference.params.items())
        print(f"max |weight difference| 2 ranks x batch {PER_RANK_BATCH} vs 1 process x "
              f"batch {RANKS * PER_RANK_BATCH}: {diff:.3g}")
        assert diff < 1e-5
        np.testing.assert_allclose(got["loss"], history.loss, rtol=1e-5)
        np.testing.assert_allclose(got["val_accuracy"], history.val_accuracy)


@needs_mpi
def test_a_stop_request_on_one_rank_reaches_every_rank_at_the_same_step(tmp_path: Path
                                                                        ) -> None:
    script = tmp_path / "stop.py"
    script.write_text(STOP_WORKER)
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(script)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    expected = "[None, None, None, 15, 15, 15]"
    assert f"rank 0 saw {expected}" in proc.stdout
    assert f"rank 1 saw {expected}" in proc.stdout


@needs_mpi
def test_a_stalled_rank_makes_the_other_stop_with_a_clear_error(tmp_path: Path) -> None:
    proc, out, seconds = run_job(tmp_path, "stalled", timeout=2.0)
    assert proc.returncode != 0
    assert "rank 0 of 2: gradient allreduce of step 14" in proc.stderr
    assert "did not complete within 2 s; another rank has died or stalled" in proc.stderr
    assert seconds < 60                  # not the 100 s the stalled rank sleeps
    assert not out.exists()


@needs_mpi
def test_a_rank_that_raises_ends_the_job_with_its_error(tmp_path: Path) -> None:
    proc, out, seconds = run_job(tmp_path, "exception", timeout=60.0)
    assert proc.returncode != 0
    assert "RuntimeError: rank 1 failed on purpose" in proc.stderr
    assert seconds < 40                  # aborted at once, not after the 60 s timeout
    assert not out.exists()


@needs_mpi
def test_a_killed_rank_ends_the_job(tmp_path: Path) -> None:
    proc, out, seconds = run_job(tmp_path, "killed", timeout=2.0)
    assert proc.returncode != 0
    assert seconds < 60
    assert not out.exists()


@needs_mpi
def test_cli_distributed_writes_once_from_rank_0(tmp_path: Path) -> None:
    cli = str(Path(sys.executable).parent / "deltaprop")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([MPIEXEC, "-n", str(RANKS), cli, "train", "--distributed",
                           "--epochs", "2", "--batch-size", "16", "--no-progress",
                           "--out", "model.npz", "--metrics-json", "metrics.json"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("test accuracy:") == 1       # rank 0 alone prints
    assert "distributed over 2 MPI rank(s)" in proc.stdout
    assert json.loads((tmp_path / "metrics.json").read_text())["test_accuracy"] > 0.8
    assert deltaprop.load(tmp_path / "model.npz").n_params == 4810


@needs_mpi
def test_cli_error_on_every_rank_is_one_clean_exit(tmp_path: Path) -> None:
    cli = str(Path(sys.executable).parent / "deltaprop")
    proc = subprocess.run([MPIEXEC, "-n", str(RANKS), cli, "train", "--distributed",
                           "--epochs", "0"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode != 0
    assert "epochs must be a positive integer" in proc.stderr


def test_flat_layout_round_trip_with_scale_and_zeros() -> None:
    rng = np.random.default_rng(0)
    arrays = {"a/W": rng.standard_normal((3, 4)).astype(np.float32),
              "a/b": rng.standard_normal(4).astype(np.float32),
              "c/W": rng.standard_normal((2, 2, 2)).astype(np.float32)}
    layout = FlatLayout(arrays, extra=2)
    flat = layout.pack(arrays, scale=3.0)
    assert flat.shape == (12 + 4 + 8 + 2,) and flat.dtype == np.float32
    for key, view in layout.views(flat).items():
        np.testing.assert_allclose(view, 3.0 * arrays[key], rtol=1e-6)
        assert view.base is not None          # a view, not a copy
    assert not layout.pack(None, out=flat)[:layout.n].any()


def test_flat_layout_mixed_dtypes_use_the_wider_buffer() -> None:
    arrays = {"x": np.ones(3, np.float32), "y": np.full(2, 1 / 3, np.float64)}
    layout = FlatLayout(arrays)
    views = layout.views(layout.pack(arrays))
    assert layout.dtype == np.float64
    assert views["x"].dtype == np.float32 and views["y"][0] == 1 / 3


@needs_mpi
def test_one_rank_is_plain_training() -> None:
    from deltaprop.distributed import Distributed

    ns: dict = {}
    exec(PROBLEM, ns)
    x, y = ns["problem"]()
    a, b = ns["network"](seed=1), ns["network"](seed=1)
    dist = Distributed(timeout=5)
    a.fit(x, y, optimizer="sgd", epochs=1, batch_size=16, seed=2, progress=False,
          distributed=dist)
    b.fit(x, y, optimizer="sgd", epochs=1, batch_size=16, seed=2, progress=False)
    for key, value in b.params.items():
        np.testing.assert_allclose(a.params[key], value, rtol=1e-6, atol=1e-7)
    assert dist.shard(np.arange(5)).tolist() == [0, 1, 2, 3, 4]


@needs_mpi
def test_resume_on_two_ranks_gives_the_uninterrupted_weights(tmp_path: Path) -> None:
    """Active once checkpoints exist (deltaprop.checkpoint, the reliability work)."""
    pytest.importorskip("deltaprop.checkpoint")
    cli = str(Path(sys.executable).parent / "deltaprop")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}

    def train(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([MPIEXEC, "-n", str(RANKS), cli, "train", "--distributed",
                               "--batch-size", "16", "--no-progress", "--seed", "4", *extra],
                              capture_output=True, text=True, timeout=120, env=env,
                              cwd=tmp_path)

    straight = train("--epochs", "2", "--out", "straight.npz")
    assert straight.returncode == 0, straight.stderr
    first = train("--epochs", "1", "--checkpoint", "ck")
    assert first.returncode == 0, first.stderr
    resumed = train("--epochs", "2", "--checkpoint", "ck", "--resume", "--out", "resumed.npz")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    a = deltaprop.load(tmp_path / "straight.npz").params
    b = deltaprop.load(tmp_path / "resumed.npz").params
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
