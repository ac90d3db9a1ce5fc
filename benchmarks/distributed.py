"""Data-parallel training over MPI on this machine: one Fashion-MNIST epoch on 1 and 2
ranks (one BLAS thread each, the same global batch, so the same arithmetic), the time
per step spent in the gradient allreduce, and the per-step compute that the scaling
model of docs/distributed.md starts from.

The network is dense (784-256-128-10, ReLU): this branch has no convolution layer yet,
so the Fashion CNN of the issue is replaced by this MLP.

    python -m benchmarks.distributed [--quick]
    python -m benchmarks.distributed --cost-model      # the speedup table of the docs
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import deltaprop

FASHION = "/usr/share/datasets/fashion-mnist"
GLOBAL_BATCH = 64
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def fashion_network(seed: int = 0) -> Any:
    import deltaprop

    return deltaprop.Sequential(
        [deltaprop.create("dense", units=256, kernel_initializer="he_normal"),
         deltaprop.create("relu"),
         deltaprop.create("dense", units=128, kernel_initializer="he_normal"),
         deltaprop.create("relu"),
         deltaprop.create("dense", units=10)], input_shape=(784,), seed=seed)


def digits_network(seed: int = 0) -> Any:
    """The network ``deltaprop train`` uses without a spec."""
    from deltaprop import load_spec
    from deltaprop.cli import default_spec

    return load_spec(default_spec(64, 10), seed=seed)


# -- one process of a measurement (run under mpiexec, or alone for the plain baseline) --
def worker(mode: str, samples: int, global_batch: int = GLOBAL_BATCH) -> dict[str, Any]:
    import deltaprop
    from deltaprop.data import load_data

    data = load_data(FASHION)
    x, y = data.x_train.reshape(len(data.x_train), -1)[:samples], data.y_train[:samples]
    net = fashion_network()
    optimizer = deltaprop.create_optimizer("adam", lr=1e-3)
    dist = None
    size = 1
    if mode == "distributed":
        from deltaprop.distributed import Distributed

        dist = Distributed(timeout=300)
        size = dist.size
        dist.comm.Barrier()
    start = time.perf_counter()
    history = net.fit(x, y, optimizer=optimizer, epochs=1, batch_size=global_batch // size,
                      seed=0, progress=False, distributed=dist)
    epoch = time.perf_counter() - start
    steps = -(-samples // global_batch)
    result = {"mode": mode, "ranks": size, "samples": samples, "epoch_s": epoch,
              "steps": steps, "loss": history.loss[-1], "n_params": net.n_params}
    if dist is not None:
        result["allreduce_ms_per_step"] = (dist.stats["allreduce_seconds"] * 1e3
                                           / max(dist.stats["allreduce_calls"], 1))
        result["compute_ms_per_step"] = dist.stats["compute_seconds"] * 1e3 / steps
        # the allreduce alone, the ranks lined up by a barrier before each call
        buffer = np.ones(net.n_params + 2, dtype=np.float32)
        alone = []
        for _ in range(60):
            dist.comm.Barrier()
            t0 = time.perf_counter()
            dist.allreduce_sum(buffer, "benchmark allreduce")
            alone.append((time.perf_counter() - t0) * 1e3)
        blocking = []
        for _ in range(60):
            dist.comm.Barrier()
            t0 = time.perf_counter()
            dist.comm.Allreduce(dist._MPI.IN_PLACE, buffer)
            blocking.append((time.perf_counter() - t0) * 1e3)
        result["allreduce_alone_ms"] = float(np.median(alone[10:]))
        result["allreduce_blocking_ms"] = float(np.median(blocking[10:]))
        if not dist.is_root:
            return {}
    return result


def example_networks() -> dict[str, Any]:
    """The networks of the scaling model: the CLI's default, the benchmark's dense
    Fashion network, and every ``examples/*.toml`` spec that exists."""
    from deltaprop import load_spec

    nets = {"digits default (64-64-10)": digits_network(),
            "fashion dense (784-256-128-10)": fashion_network()}
    for path in sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.toml")):
        try:
            nets[f"examples/{path.name}"] = load_spec(path, seed=0)
        except Exception as exc:  # a spec that needs a plugin not installed here
            print(f"skipping {path.name}: {exc}", file=sys.stderr)
    return nets


def compute_per_step(batch: int = 32, repeats: int = 30) -> dict[str, dict[str, float]]:
    """Median ms of one local training step (forward, backward, update) per network,
    on random inputs of its input shape."""
    import deltaprop
    from benchmarks.common import interleaved_medians

    rng = np.random.default_rng(0)
    cases = {}
    for name, net in example_networks().items():
        if len(net.inputs) != 1 or len(net.outputs) != 1:
            continue
        x = rng.random((batch, *net.input_shapes[0])).astype(net.inputs[0].dtype)
        classes = net.output_shapes[0][-1]
        y = rng.integers(0, classes, batch)
        loss = (net.train_config or {}).get("loss", "softmax_cross_entropy")
        opt = deltaprop.create_optimizer("adam", lr=1e-3)
        cases[name] = (net, x, y, opt, loss)
    ms = interleaved_medians({name: (lambda c=c: c[0].train_step(
        c[1], c[2], loss=c[4], optimizer=c[3])) for name, c in cases.items()},
        repeats=repeats, warmup=5)
    return {name: {"ms": ms[name], "n_params": cases[name][0].n_params,
                   "grad_bytes": 4 * cases[name][0].n_params} for name in cases}


# -- the scaling model ----------------------------------------------------------------------
def allreduce_seconds(grad_bytes: float, ranks: int, gbit_per_s: float,
                      latency_s: float) -> float:
    """Ring allreduce: 2(N-1) messages per rank, each of S/N bytes, so every rank sends
    and receives 2(N-1)/N * S bytes and pays 2(N-1) latencies."""
    if ranks <= 1:
        return 0.0
    moved = 2 * (ranks - 1) / ranks * grad_bytes
    return moved * 8 / (gbit_per_s * 1e9) + 2 * (ranks - 1) * latency_s


def predicted_speedup(compute_s: float, grad_bytes: float, ranks: int, gbit_per_s: float,
                      latency_s: float) -> float:
    """Throughput of N ranks over one process at the same per-rank batch (no overlap of
    the allreduce with backward: that is what deltaprop does)."""
    return ranks * compute_s / (compute_s + allreduce_seconds(grad_bytes, ranks, gbit_per_s,
                                                              latency_s))


NETWORKS_LINKS = ((10, 25e-6), (100, 5e-6))   # (Gbit/s, per-message latency)
RANK_COUNTS = (2, 4, 8, 16, 32, 64)


def speedup_table(networks: dict[str, dict[str, float]]) -> str:
    """A markdown table of predicted speedups for the measured compute times."""
    head = "| network | params | gradient | compute/step | link | " + " | ".join(
        f"N={n}" for n in RANK_COUNTS) + " |"
    lines = [head, "|" + "---|" * (5 + len(RANK_COUNTS))]
    for name, info in networks.items():
        for gbit, latency in NETWORKS_LINKS:
            compute_s = info["ms"] / 1e3
            cells = [f"{predicted_speedup(compute_s, info['grad_bytes'], n, gbit, latency):.1f}"
                     for n in RANK_COUNTS]
            lines.append(f"| {name} | {info['n_params']:,} | {info['grad_bytes'] / 1e6:.3g} MB | "
                         f"{info['ms']:.3g} ms | {gbit} Gbit/s | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- driver -----------------------------------------------------------------------------------
def _python_env() -> dict[str, str]:
    """This environment with one BLAS/OpenMP thread per process and this checkout on the
    path: what every rank of a benchmark job runs with."""
    root = str(Path(__file__).resolve().parent.parent)
    return {**os.environ, **ONE_THREAD,
            "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}


def mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else "mpiexec"


def print_result(result: Any) -> None:
    """How a benchmark job's root process hands ``result`` to ``run_job``."""
    print("RESULT " + json.dumps(result), flush=True)


def run_job(command: list[str]) -> Any:
    """Run a benchmark job (``command``, one thread per process) and return what it
    printed with ``print_result``; its stderr's end if it fails."""
    proc = subprocess.run(command, capture_output=True, text=True, env=_python_env(),
                          timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-2000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    return json.loads(lines[-1][len("RESULT "):])


def launch(ranks: int, mode: str, samples: int, global_batch: int = GLOBAL_BATCH
           ) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.distributed", "--worker", mode, str(samples),
               str(global_batch)]
    if mode == "distributed":
        command = [mpiexec(), "-n", str(ranks), *command]
    return dict(run_job(command))


def run(quick: bool = False) -> list[dict[str, Any]]:
    from benchmarks.common import row

    samples = 6000 if quick else 60000
    repeats = 1 if quick else 3
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "1 rank": [], "2 ranks": []}
    weak: list[dict[str, Any]] = []  # 2 ranks x 64: the per-rank batch kept, as Horovod does
    for _ in range(repeats):           # interleaved, so a busy spell hits each alike
        runs["plain"].append(launch(1, "plain", samples))
        runs["1 rank"].append(launch(1, "distributed", samples))
        runs["2 ranks"].append(launch(2, "distributed", samples))
        weak.append(launch(2, "distributed", samples, 2 * GLOBAL_BATCH))

    def median(name: str, key: str) -> float:
        return float(np.median([r[key] for r in runs[name]]))

    steps = runs["plain"][0]["steps"]
    epoch = {name: median(name, "epoch_s") * 1e3 for name in runs}
    rows = [row("distributed", f"fashion epoch {samples} samples", epoch, "plain",
                steps=steps, global_batch=GLOBAL_BATCH,
                speedup_2_ranks=epoch["plain"] / epoch["2 ranks"])]
    per_step = {name: epoch[name] / steps for name in runs}
    rows.append(row("distributed", "fashion step (epoch / steps)", per_step, "plain"))
    rows.append(row("distributed", "allreduce per step, in fit",
                    {n: median(n, "allreduce_ms_per_step") for n in ("1 rank", "2 ranks")},
                    "1 rank", note="includes waiting for the slower rank"))
    rows.append(row("distributed", "forward+backward per step, in fit",
                    {n: median(n, "compute_ms_per_step") for n in ("1 rank", "2 ranks")},
                    "1 rank", note="rank 0, its shard only"))
    rows.append(row("distributed", "allreduce alone, 2 ranks",
                    {"polled": median("2 ranks", "allreduce_alone_ms"),
                     "blocking": median("2 ranks", "allreduce_blocking_ms")}, "blocking",
                    bytes=4 * (runs["plain"][0]["n_params"] + 2)))
    weak_epoch = float(np.median([r["epoch_s"] for r in weak])) * 1e3
    rows.append(row("distributed", f"epoch, per-rank batch {GLOBAL_BATCH}",
                    {"1 rank": epoch["1 rank"], "2 ranks": weak_epoch}, "1 rank",
                    steps_2_ranks=weak[0]["steps"], speedup=epoch["1 rank"] / weak_epoch,
                    allreduce_ms_per_step=float(np.median(
                        [r["allreduce_ms_per_step"] for r in weak]))))
    compute = _compute_subprocess()
    rows.append(row("distributed", "compute per step, batch 32",
                    {name: info["ms"] for name, info in compute.items()},
                    next(iter(compute))))
    return rows


def _compute_subprocess() -> dict[str, dict[str, float]]:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.distributed", "--compute"],
                          capture_output=True, text=True, env=_python_env(), timeout=600,
                          check=True)
    return json.loads(proc.stdout.splitlines()[-1])


def main(argv: list[str]) -> None:
    if "--worker" in argv:
        at = argv.index("--worker")
        result = worker(argv[at + 1], int(argv[at + 2]), int(argv[at + 3]))
        if result:
            print_result(result)
    elif "--compute" in argv:
        print(json.dumps(compute_per_step()))
    elif "--cost-model" in argv:
        print(speedup_table(_compute_subprocess()))
    else:
        from benchmarks.common import format_rows

        rows = run(quick="--quick" in argv)
        print(format_rows(rows))
        for r in rows:
            extra = {k: v for k, v in r.items() if k not in ("benchmark", "case", "ms",
                                                               "reference", "ratio")}
            if extra:
                print(f"  {r['case']}: {extra}")


if __name__ == "__main__":
    deltaprop.retain_freed_memory()  # each rank keeps freed memory, as deltaprop train does
    main(sys.argv[1:])
