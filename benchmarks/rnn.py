"""Recurrent layers, forward plus backward over a whole sequence: deltaprop's rnn, lstm and
gru (through the network executor) against torch.nn.RNN/LSTM/GRU on the CPU, and the
cache an LSTM keeps per time step.

    python -m benchmarks.rnn [--quick]

Case of the issue: T=32, batch 64, 64 input features, 128 hidden units, float32.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import numpy as np

import deltaprop
from benchmarks.common import SETTLE_SECONDS, format_rows, interleaved_medians, row, torch_or_none

T, BATCH, FEATURES, HIDDEN = 32, 64, 64, 128


def _openblas() -> Any:
    """numpy's bundled OpenBLAS through ctypes (to set its thread count), or None."""
    import ctypes
    import glob
    import os

    libs = glob.glob(os.path.join(os.path.dirname(np.__file__) + ".libs", "*openblas*"))
    for path in libs:
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                     "openblas_set_num_threads"):
            if hasattr(lib, name):
                return getattr(lib, name), getattr(lib, name.replace("set", "get"), None)
    return None


def set_threads(n: int | None, torch: Any) -> None:
    """Both libraries at ``n`` threads (None: as many as cores), so that neither gets
    more cores than the other; on a loaded machine one thread each is the fairer race."""
    n_cores = os.cpu_count() or 1
    n = n_cores if n is None else n
    blas = _openblas()
    if blas is not None:
        blas[0](n)
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


def run(quick: bool = False) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, T, FEATURES)).astype(np.float32)
    grad = rng.standard_normal((BATCH, T, HIDDEN)).astype(np.float32)
    torch = torch_or_none()
    rows = []
    repeats = 5 if quick else 30
    for threads, cell in [(t, c) for t in (1, None) for c in ("rnn", "lstm", "gru")]:
        set_threads(threads, torch)
        net = make_network(cell)
        candidates = {"deltaprop": lambda net=net: deltaprop_step(net, x, grad)}
        if torch is not None:
            module = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM,
                      "gru": torch.nn.GRU}[cell](FEATURES, HIDDEN, batch_first=True)
            xt = torch.from_numpy(x).requires_grad_(True)
            gt = torch.from_numpy(grad)

            def torch_step(module: Any = module, xt: Any = xt, gt: Any = gt) -> None:
                module.zero_grad(set_to_none=True)
                xt.grad = None
                out, _ = module(xt)
                out.backward(gt)

            candidates["torch"] = torch_step
        reference = "torch" if torch is not None else "deltaprop"
        case = f"{cell} T{T} b{BATCH} {FEATURES}->{HIDDEN} f+b"
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
    cache = lstm_cache_report()
    rows.append({"benchmark": "rnn", "case": "lstm cache", "ms": {}, "reference": "",
                 **cache})
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
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
    raise SystemExit(main())
