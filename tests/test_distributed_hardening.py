"""Issue 20, items 4 and 6: under MPI a SIGTERM that reaches one rank stops every rank at
the same position, rank 0 saves it and no other rank claims to have; ranks started with
different optimizer settings, learning rates or data are refused at start-up."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_distributed import MPIEXEC, PROBLEM, needs_mpi

from deltaprop.storage.npz import NpzReader

SIGNAL_WORKER = PROBLEM + '''
import os, signal, sys
from deltaprop.distributed import Distributed
from deltaprop.execution.hooks import Hook

mode, folder = sys.argv[1], sys.argv[2]
dist = Distributed(timeout=60)
x, y = problem()
net = network(seed=1)

class SignalAt(Hook):
    def batch_end(self, epoch, batch, loss):   # after the step's allreduce: rank 1 alone
        if mode == "batch" and dist.rank == 1 and (epoch, batch) == (1, 4):
            os.kill(os.getpid(), signal.SIGTERM)

def on_epoch_end(epoch, history):             # after the epoch's save, before its check
    if mode == "epoch" and dist.rank == 1 and epoch == 0:
        os.kill(os.getpid(), signal.SIGTERM)

try:
    net.fit(x, y, optimizer="adam", epochs=4, batch_size=8, seed=5, progress=False,
            distributed=dist, checkpoint=folder, on_epoch_end=on_epoch_end,
            hooks=[SignalAt()])
except Exception as exc:
    print(f"rank {dist.rank}: {exc}", file=sys.stderr, flush=True)
    sys.exit(3)
print(f"rank {dist.rank}: finished", flush=True)
'''

SETTINGS_WORKER = PROBLEM + '''
import sys
from deltaprop.distributed import Distributed

what = sys.argv[1]
dist = Distributed(timeout=60)
x, y = problem()
lr = 0.01 * (1 + dist.rank) if what == "lr" else 0.01
beta1 = 0.9 - 0.1 * dist.rank if what == "beta1" else 0.9
if what == "data" and dist.rank == 1:
    x = x[::-1].copy()                         # the same size, other data
net = network(seed=1)
net.fit(x, y, optimizer=deltaprop.create_optimizer("adam", lr=lr, beta1=beta1), epochs=1,
        batch_size=8, seed=5, progress=False, distributed=dist)
print(f"rank {dist.rank}: finished", flush=True)
'''


def job(tmp_path: Path, source: str, *args: str) -> tuple[subprocess.CompletedProcess[str],
                                                        float]:
    assert MPIEXEC is not None
    script = tmp_path / "worker.py"
    script.write_text(source)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).parent)}
    start = time.perf_counter()
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(script), *args],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    return proc, time.perf_counter() - start


@needs_mpi
@pytest.mark.parametrize("mode, position", [("batch", (1, 6)), ("epoch", (1, 0))])
def test_sigterm_to_one_rank_stops_both_where_rank_0_saved(tmp_path, mode, position):
    folder = tmp_path / "ck"
    proc, seconds = job(tmp_path, SIGNAL_WORKER, mode, str(folder))
    assert seconds < 45, f"a rank waited for the timeout ({seconds:.0f} s)"
    assert "finished" not in proc.stdout, proc.stdout
    # mpiexec forwards the ranks' stderr in chunks: two messages may share a line
    messages = re.findall(r"(rank \d: .*?)(?=rank \d: |\n|$)", proc.stderr)
    rank0 = [m for m in messages if m.startswith("rank 0:")]
    rank1 = [m for m in messages if m.startswith("rank 1:")]
    assert rank0 and "checkpoint saved" in rank0[0], proc.stderr
    assert rank1 and "checkpoint saved" not in rank1[0] and "rank 0 saves" in rank1[0]
    epoch, batch = position
    where = f"epoch {epoch + 1} after {batch} batch(es)"
    assert where in rank0[0] and where in rank1[0], proc.stderr
    with NpzReader(folder / "checkpoint.npz", kind="checkpoint") as reader:
        info = reader.read_json()["checkpoint"]
    assert (info["epoch"], info["batch"]) == position


@needs_mpi
@pytest.mark.parametrize("what, words", [("lr", "optimizer and its settings"),
                                         ("beta1", "optimizer and its settings"),
                                         ("data", "training data")])
def test_ranks_with_different_settings_or_data_are_refused(tmp_path, what, words):
    proc, seconds = job(tmp_path, SETTINGS_WORKER, what)
    assert proc.returncode != 0 and "finished" not in proc.stdout
    assert words in proc.stderr and "differ from rank 0's" in proc.stderr, proc.stderr
    assert seconds < 45
