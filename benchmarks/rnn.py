"""Recurrent layers, forward plus backward over a whole sequence: deltaprop's rnn, lstm and
gru (through the network executor) against torch.nn.RNN/LSTM/GRU on the CPU, and the
cache an LSTM keeps per time step.

    python -m benchmarks.rnn [--quick]

Case of the issue: T=32, batch 64, 64 input features, 128 hidden units, float32.

Rows, per cell: one thread each (CPU time and wall clock); all cores in one process
(OpenBLAS's threads against PyTorch's, and Python threads on a share of the batch
each); and all cores as deltaprop uses them, data parallel over MPI ranks
(``--distributed``): two ranks of one thread each, half the batch each, the gradients
allreduced, against PyTorch's threads on the whole batch.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from typing import Any

import numpy as np

import deltaprop
from benchmarks.common import (
    SETTLE_SECONDS,
    Timings,
    format_rows,
    interleaved_medians,
    row,
    settled_call_ms,
    torch_or_none,
)
from benchmarks.distributed import mpiexec, print_result, run_job

T, BATCH, FEATURES, HIDDEN = 32, 64, 64, 128
CELLS = ("rnn", "lstm", "gru")


def blas_loaded() -> bool:
    """Whether threadpoolctl sees a BLAS library in this process (numpy's)."""
    from threadpoolctl import threadpool_info

    return any(info["user_api"] == "blas" for info in threadpool_info())


def set_blas_threads(n: int) -> None:
    """numpy's BLAS at ``n`` threads, through threadpoolctl."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n, user_api="blas")


def set_threads(n: int | None, torch: Any) -> None:
    """Both libraries at ``n`` threads (None: as many as cores), so that neither gets
    more cores than the other; on a loaded machine one thread each is the fairer race."""
    n_cores = os.cpu_count() or 1
    n = n_cores if n is None else n
    set_blas_threads(n)
    if torch is not None:
        torch.set_num_threads(n)


def make_network(cell: str, units: int = HIDDEN, features: int = FEATURES,
                 steps: int = T, seed: int = 0) -> Any:
    layer = deltaprop.create(cell, units=units, return_sequences=True)
    return deltaprop.Sequential([layer], input_shape=(steps, features), seed=seed)


def deltaprop_step(net: Any, x: np.ndarray, grad: np.ndarray) -> None:
    net.forward(x, train=True)
    net.backward(grad, input_grads=True)


def lstm_cache_report(batch: int = BATCH, units: int = HIDDEN, features: int = FEATURES,
                      steps: int = T) -> dict[str, Any]:
    """Bytes the executor holds for one LSTM node after a training forward, per step and
    per sample, and why each is needed: the step's GEMM input [x_t, 1, h_{t-1}]
    (features + 1 + units), for dW_x, the bias gradient and dW_h in one GEMM (the first
    step's h_{t-1} is h0); for each of the four gates the factor its delta is dh or dc
    multiplied by (4 units: i' g, f' c_{t-1}, (1 - g^2) i / 4, o' tanh(c_t), formed in
    the forward while the gates are in cache); o (1 - tanh(c_t)^2) (units), which
    carries dh into dc; and f (units), which carries dc to c_{t-1}."""
    net = make_network("lstm", units, features, steps)
    x = np.random.default_rng(0).standard_normal((batch, steps, features)).astype(np.float32)
    net.forward(x, train=True)
    total = net.cache_bytes
    per_step = total / steps
    itemsize = 4
    breakdown = {"x_1_h": (features + 1 + units) * itemsize,
                 "gate_factors": 4 * units * itemsize,
                 "o_dtanh_c": units * itemsize, "f": units * itemsize}
    return {"cache_bytes": total, "bytes_per_step": per_step,
            "bytes_per_step_per_sample": per_step / batch,
            "explained_per_sample": sum(breakdown.values()), "breakdown": breakdown}


def torch_step(torch: Any, cell: str, x: np.ndarray, grad: np.ndarray) -> Any:
    """PyTorch's forward plus backward of the same cell over the same sequence; the
    module is the step's ``module`` attribute."""
    module = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM,
              "gru": torch.nn.GRU}[cell](FEATURES, HIDDEN, batch_first=True)
    xt = torch.from_numpy(x).requires_grad_(True)
    gt = torch.from_numpy(grad)

    def step() -> None:
        module.zero_grad(set_to_none=True)
        xt.grad = None
        out, _ = module(xt)
        out.backward(gt)

    step.module = module  # type: ignore[attr-defined]
    return step


def threaded_step(cell: str, x: np.ndarray, grad: np.ndarray, n: int,
                  set_blas_threads: Any) -> Any:
    """deltaprop's step with ``n`` Python threads on 1/n of the batch each, OpenBLAS at one
    thread meanwhile (``set_blas_threads``), and the parameter
    gradients summed: how far threads get numpy on several cores in one process (each
    numpy call holds the interpreter lock for its dispatch). The library does not do
    this; the row measures what it would gain."""
    from concurrent.futures import ThreadPoolExecutor

    parts = np.array_split(np.arange(len(x)), n)
    nets = [make_network(cell) for _ in parts]  # the same seed: the same weights
    pool = ThreadPoolExecutor(max_workers=n - 1)

    def part(k: int) -> None:
        deltaprop_step(nets[k], x[parts[k]], grad[parts[k]])

    def step() -> None:
        set_blas_threads(1)
        try:
            others = [pool.submit(part, k) for k in range(1, n)]
            part(0)
            for job in others:
                job.result()
        finally:
            set_blas_threads(n)
        total = nets[0].grads
        for net in nets[1:]:
            for name, g in net.grads.items():
                total[name] += g

    return step


def case_name(cell: str) -> str:
    return f"{cell} T{T} b{BATCH} {FEATURES}->{HIDDEN} f+b"


def sequences() -> tuple[np.ndarray, np.ndarray]:
    """The case's input sequence and output delta, the same in every process."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, T, FEATURES)).astype(np.float32)
    grad = rng.standard_normal((BATCH, T, HIDDEN)).astype(np.float32)
    return x, grad


def run(quick: bool = False) -> list[dict[str, Any]]:
    deltaprop.retain_freed_memory()  # this suite trains networks, as deltaprop train does
    x, grad = sequences()
    torch = torch_or_none()
    rows = []
    repeats = 5 if quick else 30
    cores = os.cpu_count() or 1
    blas = blas_loaded()  # without it the threads candidate would oversubscribe: left out
    for threads, cell in [(t, c) for t in (1, None) for c in CELLS]:
        set_threads(threads, torch)
        net = make_network(cell)
        candidates: dict[str, Any] = {
            "deltaprop": lambda net=net: deltaprop_step(net, x, grad)}
        if threads is None and cores > 1 and blas:
            candidates[f"deltaprop {cores} threads"] = threaded_step(cell, x, grad, cores,
                                                                     set_blas_threads)
        if torch is not None:
            candidates["torch"] = torch_step(torch, cell, x, grad)
        reference = "torch" if torch is not None else "deltaprop"
        case = case_name(cell)
        timing: dict[str, Any] = {
            "repeats": repeats, "warmup": 2 if quick else 5,
            "settle_seconds": 0.0 if threads == 1 else SETTLE_SECONDS}
        if threads == 1:
            # one thread each: CPU time measures the work even when other jobs share
            # the cores (wall time then measures the queue too)
            ms = interleaved_medians(candidates, timer=time.process_time, **timing)
            rows.append(row("rnn", f"{case} 1 thread cpu", ms, reference))
        # wall time whatever ``--clock`` says: with several threads the process's CPU
        # time adds up every thread, those that only spin too
        ms = interleaved_medians(candidates, timer=time.perf_counter, **timing)
        label = "1 thread wall" if threads == 1 else "all cores wall"
        rows.append(row("rnn", f"{case} {label}", ms, reference))
    set_threads(None, torch)
    rows.extend(data_parallel_rows(repeats))
    cache = lstm_cache_report()
    rows.append({"benchmark": "rnn", "case": "lstm cache", "ms": {}, "reference": "",
                 **cache})
    return rows


def data_parallel_rows(repeats: int, ranks: int = 2) -> list[dict[str, Any]]:
    """The 'ranks' rows, from an MPI job of ``ranks`` processes (none without mpi4py or
    with fewer cores than ranks)."""
    from deltaprop.distributed import mpi_available

    if not mpi_available() or (os.cpu_count() or 1) < ranks:
        return []
    return list(run_job([mpiexec(), "-n", str(ranks), sys.executable, "-m", "benchmarks.rnn",
                         "--ranks-job", str(repeats)]))


def ranks_job(repeats: int) -> list[dict[str, Any]]:
    """One process of the data-parallel rows (under mpiexec; rank 0 returns the rows).

    Each rank runs the cell on its half of the batch with one thread, and the gradients
    are summed by the same polled allreduce ``fit`` uses: deltaprop's, and PyTorch's run
    the same way. Rank 0 alternates, in shuffled order, a step of each of those (the ranks
    lined up by a barrier, timed on rank 0 up to the allreduce's end) with a step of
    PyTorch on all cores over the whole batch, during which the other ranks sleep rather
    than spin, so that PyTorch has every core."""
    from deltaprop.distributed import Distributed, FlatLayout

    dist = Distributed(timeout=600)
    gc.disable()  # as in interleaved_medians; this process only benchmarks
    torch = torch_or_none()
    x, grad = sequences()
    mine = dist.shard(np.arange(BATCH))
    xs, gs = x[mine], grad[mine]
    # (0 stop | 1 + index of the ranked candidate to step, untimed steps before it)
    command = np.zeros(2, dtype=np.int64)

    def receive_command() -> None:
        # sleeping between polls: while PyTorch runs, this rank must leave the cores alone
        dist.wait(dist.comm.Ibcast(command, root=0), "benchmark command", spin=0.0,
                  nap=5e-4)

    def one_thread() -> None:
        if torch is not None:
            torch.set_num_threads(1)

    def ranked(local: Any, grads: Any) -> Any:
        """``local`` on this rank's shard, then the allreduce of ``grads()``."""
        local()
        layout = FlatLayout(grads())
        flat = layout.empty()

        def step() -> None:
            local()
            dist.allreduce_sum(layout.pack(grads(), out=flat), "gradient allreduce")

        step.local = local  # type: ignore[attr-defined]
        return step

    def timed_step(step: Any, settle: int) -> float:
        for _ in range(settle):
            step()
        dist.comm.Barrier()
        t0 = time.perf_counter()
        step()
        return (time.perf_counter() - t0) * 1e3

    rows = []
    order = np.random.default_rng(0)
    for cell in CELLS:
        one_thread()
        net = make_network(cell)
        steps = {"deltaprop": ranked(lambda net=net: deltaprop_step(net, xs, gs),
                                     lambda net=net: net.grads)}
        if torch is not None:
            half = torch_step(torch, cell, xs, gs)
            steps[f"torch {dist.size} ranks"] = ranked(
                half, lambda m=half.module: {n: p.grad.numpy()
                                             for n, p in m.named_parameters()})
        ranked_names = list(steps)  # a command names one by its index here
        if not dist.is_root:
            while True:
                receive_command()
                if command[0] == 0:
                    break
                timed_step(steps[ranked_names[command[0] - 1]], int(command[1]))
            continue
        settle = {}
        for name, step in steps.items():  # alone: the other ranks wait for a command
            t0 = time.perf_counter()
            step.local()
            settle[name] = max(1, round(SETTLE_SECONDS / (time.perf_counter() - t0)))
        names = list(ranked_names)
        if torch is not None:
            names.insert(1, "torch")
            whole = torch_step(torch, cell, x, grad)
        samples: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(repeats + 3):  # the first three rounds warm up
            for i in order.permutation(len(names)):
                name = names[i]
                if name == "torch":
                    torch.set_num_threads(os.cpu_count() or 1)
                    ms = settled_call_ms(whole)
                else:
                    one_thread()
                    command[:] = (1 + ranked_names.index(name), settle[name])
                    receive_command()
                    ms = timed_step(steps[name], settle[name])
                samples[name].append(ms)
        command[:] = (0, 0)
        receive_command()
        timings = Timings({k: v[3:] for k, v in samples.items()})
        rows.append(row("rnn", f"{case_name(cell)} {dist.size} ranks wall", timings,
                        "torch" if torch is not None else "deltaprop",
                        note=f"{dist.size} MPI ranks of one thread, batch {len(mine)} "
                             f"each, against torch's {os.cpu_count()} threads on the "
                             f"whole batch"))
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--ranks-job" in argv:
        rows = ranks_job(int(argv[argv.index("--ranks-job") + 1]))
        if rows:
            print_result(rows)
        return 0
    rows = run(quick="--quick" in argv)
    timed = [r for r in rows if r["ms"]]
    print(format_rows(timed))
    for r in rows:
        if r["case"] == "lstm cache":
            print(f"lstm cache: {r['cache_bytes']} bytes for {T} steps of batch {BATCH}: "
                  f"{r['bytes_per_step']:.0f} bytes per step, "
                  f"{r['bytes_per_step_per_sample']:.0f} per step per sample "
                  f"({' + '.join(f'{k} {v}' for k, v in r['breakdown'].items())} = "
                  f"{r['explained_per_sample']})")
    return 0


if __name__ == "__main__":
    deltaprop.retain_freed_memory()  # each rank keeps freed memory, as deltaprop train does
    raise SystemExit(main())
