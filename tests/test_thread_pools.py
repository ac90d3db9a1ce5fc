"""BLAS/OpenMP thread pools: ``--threads N`` for one process, and under ``--distributed``
ranks x threads no more than the cores unless the environment says otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_distributed import MPIEXEC

from deltaprop import cli
from deltaprop.training.threads import THREAD_VARIABLES, current_threads, plan_threads


@pytest.fixture
def no_thread_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(("processes", "cores", "threads"),
                         [(2, 2, 1), (2, 8, 4), (3, 8, 2), (4, 2, 1)])
def test_ranks_share_out_the_cores(no_thread_variables, processes, cores, threads):
    plan = plan_threads(processes, cores=cores)
    assert plan.threads == threads
    assert processes * plan.threads <= max(cores, processes)
    assert f"{processes} ranks on {cores} cores" in plan.reason


def test_one_process_keeps_its_pools_and_threads_overrides(no_thread_variables):
    assert plan_threads(1, cores=8).threads is None
    assert plan_threads(4, requested=3, cores=2).threads == 3
    assert "--threads" in plan_threads(4, requested=3).reason


def test_the_environment_wins_over_the_default(monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    plan = plan_threads(2, cores=2)
    assert plan.threads is None
    assert "OPENBLAS_NUM_THREADS=2" in plan.reason


def test_train_threads_limits_the_pools_while_it_trains(monkeypatch):
    before = current_threads()
    seen: dict[str, int] = {}

    def fake_train(args):
        seen.update(current_threads())
        return 0

    monkeypatch.setattr(cli, "_train", fake_train)
    assert cli.main(["train", "--threads", "1"]) == 0
    assert seen and set(seen.values()) == {1}  # numpy's BLAS at least
    assert current_threads() == before  # restored afterwards


def test_threads_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--threads", "0"])
    assert "--threads: must be a positive integer" in capsys.readouterr().err



RANK_SCRIPT = textwrap.dedent("""
    import json, sys
    from deltaprop.training.distributed import run_on_ranks
    from deltaprop.training.threads import current_threads, usable_cores

    def command(args, distributed):
        with open(f"{sys.argv[1]}/rank{distributed.rank}.json", "w") as handle:
            json.dump({"pools": current_threads(), "cores": usable_cores()}, handle)
        return 0

    sys.exit(run_on_ranks(command, None, timeout=60))
""")


@pytest.mark.skipif(MPIEXEC is None,
                    reason="mpi4py or mpiexec not installed (pip install 'deltaprop[mpi]')")
def test_each_rank_runs_its_share_of_the_cores(tmp_path: Path) -> None:
    assert MPIEXEC is not None
    script = tmp_path / "ranks.py"
    script.write_text(RANK_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(script), str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "per rank: 2 ranks on" in proc.stdout
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert seen["pools"]
        share = max(1, seen["cores"] // 2)
        assert all(n == share for n in seen["pools"].values()), seen
