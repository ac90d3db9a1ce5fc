"""Inference on one network from several threads at once gives exactly the results of
serial calls: layers keep no per-call state, and the executor's inference path keeps
its values in locals. Checked for whole networks (fan-out, shared layers, several
outputs) and for every registered layer's examples, so new layers are covered."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from helpers_registry import layer_examples

import deltaprop
from deltaprop.testing import make_layer

THREADS, CALLS = 4, 12
GRAPH = {
    "inputs": {"x": [6], "z": [2, 3]}, "outputs": ["out", "parts:1", "act"],
    "nodes": [
        {"name": "parts", "layer": "split", "inputs": ["x"], "sections": [2, 4]},
        {"name": "h", "layer": "dense", "inputs": ["parts:0"], "units": 6},
        {"name": "again", "shares": "h", "inputs": ["parts:0"]},
        {"name": "sum", "layer": "add", "inputs": ["h", "again", "x"]},
        {"name": "grid", "layer": "reshape", "inputs": ["sum"], "target_shape": [2, 3]},
        {"name": "both", "layer": "concat", "inputs": ["grid", "z"], "axis": 1},
        {"name": "flat", "layer": "flatten", "inputs": ["both"]},
        {"name": "act", "layer": "softmax", "inputs": ["flat"]},
        {"name": "t", "layer": "tanh", "inputs": ["act"]},
        {"name": "out", "layer": "dense", "inputs": ["t"], "units": 3}],
}


def run_concurrently(fn, jobs):
    """Run ``fn(job)`` for every job on THREADS threads released together."""
    barrier = threading.Barrier(THREADS)

    def worker(chunk):
        barrier.wait()
        return [fn(job) for job in chunk]

    chunks = [jobs[i::THREADS] for i in range(THREADS)]
    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(worker, chunks))
    ordered = [None] * len(jobs)
    for i, chunk_results in enumerate(results):
        ordered[i::THREADS] = chunk_results
    return ordered


def assert_same(a, b):
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y)


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_threads_give_the_serial_results_on_a_graph(batch):
    net = deltaprop.load_spec(json.loads(json.dumps(GRAPH)), seed=0)
    rng = np.random.default_rng(batch)
    jobs = [[rng.standard_normal((batch, 6)).astype(np.float32),
             rng.standard_normal((batch, 2, 3)).astype(np.float32)]
            for _ in range(THREADS * CALLS)]
    serial = [net.forward(job) for job in jobs]
    threaded = run_concurrently(net.forward, jobs)
    for s, t in zip(serial, threaded, strict=True):
        assert_same(s, t)


def test_threads_predict_like_serial_calls():
    from deltaprop.cli import default_spec

    net = deltaprop.load_spec(default_spec(64, 10), seed=1)
    rng = np.random.default_rng(0)
    jobs = [rng.random((int(rng.integers(1, 300)), 64)).astype(np.float32)
            for _ in range(THREADS * 4)]
    serial = [net.predict(x, batch_size=32) for x in jobs]
    threaded = run_concurrently(lambda x: net.predict(x, batch_size=32), jobs)
    for s, t in zip(serial, threaded, strict=True):
        assert np.array_equal(s, t)




@pytest.mark.parametrize(("layer_class", "example"), layer_examples())
def test_every_layer_is_safe_to_share_between_threads(layer_class, example):
    layer = make_layer(layer_class, example["input_shapes"], **example["config"])
    rng = np.random.default_rng(0)
    jobs = [tuple(layer_class.sample_inputs(rng, layer.input_shapes, int(b), layer.dtype))
            for b in rng.integers(1, 9, THREADS * CALLS)]
    serial = [layer.forward(job, train=False)[0] for job in jobs]
    threaded = run_concurrently(lambda job: layer.forward(job, train=False)[0], jobs)
    for s, t in zip(serial, threaded, strict=True):
        assert_same(s, t)
