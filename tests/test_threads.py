"""Threads sharing one network: inference from other threads while one thread trains
leaves training exactly as it would be alone, and each thread's training forward
waits for that thread's own backward (the pending forward is per thread)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import deltaprop as dp
from deltaprop.tensor import seeded

READERS = 3


def build(seed: int = 0, **options) -> dp.Network:
    with seeded(seed):
        x = dp.Input((6,), name="x", dtype="float64")
        h = dp.create("dense", units=8, dtype="float64")(x, name="h")
        h = dp.create("relu", dtype="float64")(h, name="act")
        h = dp.create("dense", units=8, dtype="float64")(h, name="h2")
        h = dp.create("tanh", dtype="float64")(h, name="act2")
        z = dp.create("dense", units=3, dtype="float64")(h, name="out")
        y = dp.create("softmax", dtype="float64")(z, name="probs")
    return dp.Network(x, y, **options)


def params(net: dp.Network) -> dict[str, bytes]:
    return {k: v.tobytes() for k, v in net.params.items()}


class Readers:
    """``READERS`` threads calling ``call(i)`` in a loop until stopped; each has made
    one call before ``start`` returns."""

    def __init__(self, call) -> None:
        self.call = call
        self.stop = threading.Event()
        self.started = threading.Barrier(READERS + 1)
        self.counts = [0] * READERS
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(READERS)]

    def _run(self, i: int) -> None:
        first = True
        try:
            while first or not self.stop.is_set():
                self.call(i)
                self.counts[i] += 1
                if first:
                    first = False
                    self.started.wait()
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)
            self.started.abort()

    def __enter__(self) -> Readers:
        for t in self.threads:
            t.start()
        self.started.wait(timeout=30)
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in self.threads)


@pytest.mark.parametrize("options", [{}, {"recompute": True}, {"fuse": False}],
                         ids=["default", "recompute", "unfused"])
def test_inference_from_other_threads_does_not_disturb_fit(rng, options):
    x = rng.standard_normal((96, 6))
    labels = rng.integers(0, 3, 96)
    fit = {"loss": "cross_entropy", "epochs": 3, "batch_size": 8, "seed": 7,
           "progress": False}
    alone = build(**options)
    history_alone = alone.fit(x, labels, **fit)

    net = build(**options)
    probes = [rng.standard_normal((n, 6)) for n in (1, 5, 33)]
    seen: list[list[np.ndarray]] = [[] for _ in range(READERS)]

    def infer(i: int) -> None:
        if i == 0:
            (y,) = net.forward(probes[i])
        elif i == 1:
            y = net.predict(probes[i], batch_size=2)
        else:
            y = net.evaluate(probes[i], labels[:33], loss="cross_entropy")["loss"]
            y = np.array([[y]])
        if len(seen[i]) < 50:
            seen[i].append(y)

    with Readers(infer) as readers:
        history = net.fit(x, labels, **fit)
    assert not readers.errors, readers.errors
    assert all(c > 0 for c in readers.counts)
    assert history.loss == history_alone.loss
    assert params(net) == params(alone)
    for i, outputs in enumerate(seen):
        for y in outputs:
            assert np.all(np.isfinite(y))
            if i < 2:
                assert y.shape == (len(probes[i]), 3)
                np.testing.assert_allclose(y.sum(axis=-1), 1.0, rtol=1e-12)


def test_inference_threads_with_hooks_and_anomaly_detection_during_fit(rng):
    x = rng.standard_normal((64, 6))
    labels = rng.integers(0, 3, 64)
    fit = {"loss": "cross_entropy", "epochs": 2, "batch_size": 8, "seed": 1,
           "progress": False, "detect_anomaly": True}

    class Count(dp.Hook):
        def __init__(self):
            self.batches = 0

        def batch_end(self, epoch, batch, loss):
            self.batches += 1

    alone = build()
    alone.fit(x, labels, **fit)
    net = build()
    count = Count()
    probe = rng.standard_normal((4, 6))
    with Readers(lambda i: net.forward(probe)) as readers:
        net.fit(x, labels, hooks=[count], **fit)
    assert not readers.errors, readers.errors
    assert count.batches == 16
    assert params(net) == params(alone)


def test_carried_state_inference_threads_during_bptt_fit(rng):
    def recurrent():
        with seeded(0):
            x = dp.Input((3, 2), name="x", dtype="float64")
            h = dp.create("gru", units=4, return_sequences=True, dtype="float64")(x)
            y = dp.create("dense", units=3, dtype="float64")(h)
        return dp.Network(x, y)

    x = rng.standard_normal((16, 6, 2))
    labels = rng.integers(0, 3, (16, 6))
    fit = {"epochs": 2, "batch_size": 4, "seed": 0, "progress": False, "bptt": 3}
    alone = recurrent()
    alone.fit(x, labels, **fit)
    net = recurrent()
    states = [dp.CarriedState() for _ in range(READERS)]
    probe = rng.standard_normal((2, 3, 2))

    def generate(i: int) -> None:
        (y,) = net.forward(probe, state=states[i])
        assert y.shape == (2, 3, 3) and np.all(np.isfinite(y))
        net.predict(probe, state=states[i])

    with Readers(generate) as readers:
        net.fit(x, labels, **fit)
    assert not readers.errors, readers.errors
    assert params(net) == params(alone)
    assert all(len(s) == 1 for s in states)


# -- per-thread pending forward -----------------------------------------------------------------
def serial_reference(net: dp.Network, jobs):
    out = []
    for x, g in jobs:
        net.forward(x, train=True)
        (dx,) = net.backward(g)
        out.append((dx, {k: np.array(v) for k, v in net.grads.items()}))
    return out


def test_two_threads_forward_then_backward_get_their_own_caches(rng):
    net = build()
    jobs = [(rng.standard_normal((n, 6)), rng.standard_normal((n, 3))) for n in (4, 7)]
    expected = serial_reference(net, jobs)
    both_forwarded = threading.Barrier(2)
    turn = [threading.Event(), threading.Event()]
    results: list = [None, None]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            x, g = jobs[i]
            net.forward(x, train=True)
            both_forwarded.wait(timeout=30)  # both forwards pending at once
            turn[i].wait(timeout=30)  # the second thread runs backward first
            (dx,) = net.backward(g)
            results[i] = (dx, {k: np.array(v) for k, v in net.grads.items()})
            if i == 1:
                turn[0].set()
        except BaseException as exc:
            errors.append(exc)
            both_forwarded.abort()
            turn[0].set()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    turn[1].set()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    for (dx, grads), (dx_ref, grads_ref) in zip(results, expected, strict=True):
        assert np.array_equal(dx, dx_ref)
        for k in grads_ref:
            assert np.array_equal(grads[k], grads_ref[k]), k


@pytest.mark.parametrize("options", [{}, {"recompute": True}, {"plan_memory": False}],
                         ids=["default", "recompute", "no_plan_memory"])
def test_threads_training_forward_and_backward_concurrently(rng, options):
    net = build(**options)
    threads_n, rounds = 4, 15
    jobs = [[(rng.standard_normal((n, 6)), rng.standard_normal((n, 3)))
             for n in rng.integers(1, 9, rounds)] for _ in range(threads_n)]
    expected = [serial_reference(net, js) for js in jobs]
    barrier = threading.Barrier(threads_n)
    results: list[list[np.ndarray]] = [[] for _ in range(threads_n)]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for x, g in jobs[i]:
                net.forward(x, train=True)
                barrier.wait(timeout=30)  # every thread's forward pending together
                (dx,) = net.backward(g)
                results[i].append(dx)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    for got, want in zip(results, expected, strict=True):
        assert len(got) == rounds
        for dx, (dx_ref, _) in zip(got, want, strict=True):
            assert np.array_equal(dx, dx_ref)


def test_backward_needs_a_forward_on_the_same_thread(rng):
    net = build()
    x = rng.standard_normal((3, 6))
    net.forward(x, train=True)  # pending on this thread only
    caught: list[BaseException] = []

    def other() -> None:
        try:
            net.backward(np.ones((3, 3)))
        except BaseException as exc:
            caught.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join(timeout=30)
    assert len(caught) == 1 and isinstance(caught[0], dp.GraphError)
    assert "forward(train=True)" in str(caught[0])
    (dx,) = net.backward(np.ones((3, 3)))  # this thread's forward is still waiting
    assert dx.shape == x.shape


def test_inference_on_another_thread_keeps_this_threads_pending_forward(rng):
    net = build()
    x = rng.standard_normal((3, 6))
    g = rng.standard_normal((3, 3))
    (expected,) = serial_reference(net, [(x, g)])
    net.forward(x, train=True)
    t = threading.Thread(target=lambda: [net.forward(rng.standard_normal((5, 6)))
                                         for _ in range(5)])
    t.start()
    t.join(timeout=30)
    (dx,) = net.backward(g)
    assert np.array_equal(dx, expected[0])
    for k, v in expected[1].items():
        assert np.array_equal(net.grads[k], v)


def test_a_new_forward_on_the_same_thread_ends_the_wait(rng):
    net = build()
    x = rng.standard_normal((3, 6))
    net.forward(x, train=True)
    net.forward(x)  # inference on this thread: the training forward is dropped
    with pytest.raises(dp.GraphError, match="forward"):
        net.backward(np.ones((3, 3)))
    net.forward(x, train=True)
    net.backward(np.ones((3, 3)))
    with pytest.raises(dp.GraphError):  # each forward's caches serve one backward
        net.backward(np.ones((3, 3)))
