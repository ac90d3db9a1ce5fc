"""Memory planning: liveness, the in-place proof, exact cache accounting, and the
per-node memory report (and its CLI switch)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import deltaprop
from deltaprop import Input, Network, create
from deltaprop.cli import main
from deltaprop.execution.memory import ByteTracker, free_after, sole_owner


def mlp(fuse=True, recompute=False, depth=3, width=32, activation="relu", plan_memory=True):
    layers = []
    for _ in range(depth):
        layers += [create("dense", units=width), create(activation)]
    layers.append(create("dense", units=10))
    return deltaprop.Sequential(layers, input_shape=20, seed=0, fuse=fuse, recompute=recompute,
                                plan_memory=plan_memory)


def test_free_after_drops_each_value_after_its_last_reader_but_keeps_outputs():
    # step 0 reads slot 0; step 1 reads 1; step 2 reads 0 and 2; slot 3 is an output
    assert free_after([(0,), (1,), (0, 2)], keep=[3]) == [(), (1,), (0, 2)]
    assert free_after([(0,), (1,)], keep=[1]) == [(0,), ()]


def test_sole_owner_proves_nobody_else_holds_the_array():
    fresh = np.ones(4)
    assert sole_owner(fresh)
    other = fresh
    assert not sole_owner(fresh)
    del other
    assert sole_owner(fresh)
    view = fresh[:2]
    assert not sole_owner(view)  # writes would show through the base array
    assert not sole_owner(fresh)  # the view holds the base
    del view
    held = [fresh]
    assert not sole_owner(fresh)
    held.clear()
    frozen = np.ones(3)
    frozen.flags.writeable = False
    assert not sole_owner(frozen)


def test_byte_tracker_counts_shared_memory_once_against_the_first_holder():
    a, b = np.ones(10), np.ones(5)
    t = ByteTracker()
    assert t.hold(0, (a,)) == 80
    assert t.hold(1, [a, {"x": b}, a[:3]]) == 40
    assert t.current == 120
    assert t.release(1) == 40
    assert t.release(0) == 80
    assert t.current == 0 and t.peak == 120


class SpyRelu(deltaprop.Layer):
    """An element-wise layer that records whether the executor let it work in place."""

    name = "spy_relu"
    elementwise = True
    can_work_in_place = True
    calls: list[str] = []

    def forward(self, inputs, *, train):
        SpyRelu.calls.append("copy")
        y = np.maximum(inputs[0], 0)
        return (y,), (y if train else None)

    def forward_in_place(self, inputs, *, train):
        SpyRelu.calls.append("in place")
        y = np.maximum(inputs[0], 0, out=inputs[0])
        return (y,), (y if train else None)

    def backward(self, cache, grad_outputs, *, needs_grad=None):
        return (self.backward_from_output(cache, grad_outputs[0]),), {}

    def backward_from_output(self, y, g):
        return g * (y > 0)


@pytest.mark.parametrize("fuse", [False, True])
def test_in_place_only_where_the_executor_proves_the_array_unshared(rng, fuse):
    x = Input(4, name="x")
    z = create("dense", units=3)(x)
    net = Network(x, SpyRelu()(z), fuse=fuse)
    assert len(net.plan) == (1 if fuse else 2)
    xs = rng.standard_normal((5, 4)).astype(np.float32)
    SpyRelu.calls.clear()
    y = net.forward(xs, train=True)[0]
    assert SpyRelu.calls == ["in place"]  # dense caches x, not its output
    expected = np.maximum(xs @ net.params["dense/W"] + net.params["dense/b"], 0)
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    (dx,) = net.backward(np.ones_like(y))
    np.testing.assert_allclose(dx, (expected > 0) @ net.params["dense/W"].T, rtol=1e-5)
    # a network input is the caller's array: never overwritten
    x = Input(4, name="x")
    net = Network(x, SpyRelu()(x), fuse=False)
    SpyRelu.calls.clear()
    before = xs.copy()
    net.forward(xs, train=True)
    assert SpyRelu.calls == ["copy"]
    np.testing.assert_array_equal(xs, before)
    # a value that is also a network output or read later is not overwritten
    x = Input(4, name="x")
    z = create("dense", units=3)(x)
    net = Network(x, [SpyRelu()(z), z], fuse=False)
    SpyRelu.calls.clear()
    outs = net.forward(xs)
    assert SpyRelu.calls == ["copy"] and np.any(outs[1] < 0)


def test_cache_bytes_are_exact_and_reused_for_the_same_shapes(rng):
    net = mlp(fuse=False)
    xs = rng.standard_normal((8, 20)).astype(np.float32)
    net.forward(xs, train=True)
    first = net.cache_bytes
    # the input (8x20) and three hidden activations (8x32), each held once
    assert first == 4 * (8 * 20 + 3 * 8 * 32)
    net.backward(np.ones((8, 10), np.float32))
    assert net.cache_bytes == 0 and net.peak_cache_bytes == first
    net.forward(xs, train=True)  # the remembered layout for this batch shape
    assert net.cache_bytes == first
    net.forward(xs[:3], train=True)  # a new batch size: measured again
    assert net.cache_bytes == 4 * (3 * 20 + 3 * 3 * 32)
    net.forward(xs, train=False)
    assert net.cache_bytes == 0


@pytest.mark.parametrize("options", [{"fuse": False}, {"fuse": True},
                                     {"fuse": True, "recompute": True}])
def test_memory_report_lists_every_node_and_the_peak(rng, options):
    net = mlp(**options)
    report = net.memory_report(batch=16)
    names = [row.node for row in report.nodes if row.node != "(inputs)"]
    assert names == [step.name for step in net.plan]
    assert report.batch == 16
    assert report.peak_bytes == net.peak_cache_bytes > 0
    assert net.cache_bytes == 0  # the report's own training pass left nothing behind
    text = str(report)
    assert "peak" in text and report.nodes[0].node in text
    data = report.as_dict()
    assert json.loads(json.dumps(data))["peak_bytes"] == report.peak_bytes
    if not options.get("recompute"):
        # per-node bytes add up to what the executor holds after a forward
        net.forward(np.zeros((16, 20), np.float32), train=True)
        assert report.total_cached_bytes == net.cache_bytes
        first = report.nodes[0].items
        assert any(i.what == "input 0" and i.nbytes == 16 * 20 * 4 for i in first)
        assert all(i.why for row in report.nodes for i in row.items)


def test_memory_report_explains_nodes_without_cache():
    x = Input(4, name="ids", dtype="int64")
    net = Network(x, create("relu")(create("reshape", target_shape=[2, 2])(x)))
    report = net.memory_report(batch=2)
    assert all(row.cached_bytes == 0 for row in report.nodes)
    assert "no gradient" in report.nodes[0].note


def test_planning_fusion_and_recomputation_lower_the_peaks():
    """The figures the benchmark reports: planning and fusion lower the bytes live in
    forward, recomputation the bytes held for backward on a deep net."""
    reports = {}
    for name, options in {"none": {"fuse": False, "plan_memory": False},
                          "planned": {"fuse": False}, "fused": {"fuse": True},
                          "recompute": {"fuse": True, "recompute": True}}.items():
        reports[name] = mlp(depth=9, **options).memory_report(batch=32)
    live = {k: r.peak_live_bytes for k, r in reports.items()}
    held = {k: r.peak_bytes for k, r in reports.items()}
    assert live["planned"] < live["none"]
    assert live["fused"] <= live["planned"]
    assert held["fused"] <= held["none"]
    assert held["recompute"] < 0.7 * held["fused"]


def test_byte_tracker_frees_memory_when_its_last_holder_lets_go():
    a = np.ones(10)
    t = ByteTracker()
    t.hold("first", a)
    t.hold("second", a)
    assert t.release("first") == 0 and t.current == 80
    assert t.release("second") == 80 and t.current == 0


def test_cli_train_memory_report(tmp_path, capsys):
    out = tmp_path / "m.json"
    code = main(["train", "--epochs", "1", "--no-progress", "--memory-report",
                 "--metrics-json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "peak bytes held for backward" in text
    assert json.loads(out.read_text())["memory"]["peak_bytes"] > 0
