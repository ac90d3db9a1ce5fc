"""Hooks watch the executor and the training loop: ``forward_node`` per executed step
in plan order, ``backward_node`` in reverse, the loss and the update of each training
step, and each batch and epoch of ``fit``. Anomaly detection is such a hook and runs
the same training step: with it, weights end bit for bit as without it, also with the
softmax + cross-entropy fusion and with truncated BPTT and checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

import deltaprop as dp
from deltaprop.execution.step import Step
from deltaprop.tensor import seeded
from deltaprop.training.anomaly import AnomalyError

N = 10


def build(*, softmax: bool = True, seed: int = 0, **options) -> dp.Network:
    """x -> dense "h" -> relu "act" -> dense "out" (-> softmax "probs")."""
    with seeded(seed):
        x = dp.Input((4,), name="x", dtype="float64")
        h = dp.create("dense", units=5, dtype="float64", label="h")(x, name="h")
        h = dp.create("relu", dtype="float64")(h, name="act")
        y = dp.create("dense", units=3, dtype="float64", label="out")(h, name="out")
        if softmax:
            y = dp.create("softmax", dtype="float64")(y, name="probs")
    return dp.Network(x, y, **options)


@pytest.fixture
def data(rng):
    return rng.standard_normal((N, 4)), rng.integers(0, 3, N)


class Recorder(dp.Hook):
    """Records every event with copies of what it is shown."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.forward: list[dict] = []
        self.backward: list[dict] = []
        self.loss: list[tuple] = []
        self.updates: list[tuple] = []

    def names(self, kind: str) -> list[str]:
        return [e[1] for e in self.events if e[0] == kind]

    def forward_node(self, step, inputs, outputs, cache, cache_bytes):
        assert isinstance(step, Step)
        self.events.append(("forward", step.name))
        self.forward.append({
            "step": step, "cache": cache, "cache_bytes": cache_bytes,
            "inputs": [None if a is None else a.copy() for a in inputs],
            "outputs": [a.copy() for a in outputs]})

    def backward_node(self, step, grad_outputs, grad_inputs, grad_params):
        self.events.append(("backward", step.name))
        self.backward.append({
            "step": step, "grad_outputs": [g.copy() for g in grad_outputs],
            "grad_inputs": [None if g is None else g.copy() for g in grad_inputs],
            "grad_params": {k: v.copy() for k, v in grad_params.items()}})

    def loss_computed(self, value, grads):
        self.events.append(("loss", value))
        self.loss.append((value, [(name, g.copy()) for name, g in grads]))

    def before_update(self, grads):
        self.events.append(("before_update", None))
        self.updates.append(("before", {k: v.copy() for k, v in grads.items()}))

    def after_update(self, params, optimizer):
        self.events.append(("after_update", None))
        self.updates.append(("after", {k: v.copy() for k, v in params.items()}, optimizer))

    def batch_start(self, epoch, batch):
        self.events.append(("batch_start", (epoch, batch)))

    def batch_end(self, epoch, batch, loss):
        self.events.append(("batch_end", (epoch, batch, loss)))

    def epoch_end(self, epoch, metrics):
        self.events.append(("epoch_end", (epoch, dict(metrics))))


# -- the executor ------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [{}, {"fuse": False}, {"plan_memory": False}],
                         ids=["default", "unfused", "no_plan_memory"])
def test_forward_node_runs_per_executed_step_in_plan_order(data, options):
    x, _ = data
    net = build(**options)
    hook = Recorder()
    with net.hooked(hook):
        (y,) = net.forward(x)
    assert hook.names("forward") == [s.name for s in net.plan]
    assert [r["step"] for r in hook.forward] == list(net.plan)
    np.testing.assert_array_equal(hook.forward[0]["inputs"][0], x)
    for before, after in zip(hook.forward, hook.forward[1:]):  # a chain: out k feeds k+1
        if after["inputs"][0] is None:  # consumed in place
            assert after["step"].in_place
        else:
            np.testing.assert_array_equal(before["outputs"][0], after["inputs"][0])
    np.testing.assert_array_equal(hook.forward[-1]["outputs"][0], y)
    assert all(r["cache"] is None and r["cache_bytes"] == 0 for r in hook.forward)
    assert hook.backward == [] and hook.loss == []


def test_the_plan_is_fused_and_the_hook_sees_fused_steps(data):
    x, _ = data
    net = build()
    assert [s.name for s in net.plan] == ["h+act", "out", "probs"]
    assert [s.name for s in net.steps] == ["h", "act", "out", "probs"]
    hook = Recorder()
    with net.hooked(hook):
        net.forward(x)
    assert hook.names("forward") == ["h+act", "out", "probs"]


@pytest.mark.parametrize("options", [{}, {"fuse": False}, {"plan_memory": False}],
                         ids=["default", "unfused", "no_plan_memory"])
def test_cache_bytes_sum_to_the_executors_figure(data, options):
    x, _ = data
    net = build(**options)
    net.forward(x, train=True)  # without hooks: the figure the plan measured
    unwatched = net.cache_bytes
    net.backward(np.ones((N, 3)))
    hook = Recorder()
    with net.hooked(hook):
        net.forward(x, train=True)
        assert sum(r["cache_bytes"] for r in hook.forward) == net.cache_bytes
        assert net.cache_bytes == unwatched > 0
        assert net.peak_cache_bytes == net.cache_bytes
        assert all(r["cache"] is not None for r in hook.forward)
        net.backward(np.ones((N, 3)))
    assert net.cache_bytes == 0


def test_backward_node_runs_in_reverse_plan_order_with_its_deltas(data, rng):
    x, _ = data
    net = build()
    hook = Recorder()
    g = rng.standard_normal((N, 3))
    with net.hooked(hook):
        net.forward(x, train=True)
        (dx,) = net.backward(g)
    assert hook.names("backward") == [s.name for s in reversed(net.plan)]
    assert [r["step"] for r in hook.backward] == list(reversed(net.plan))
    np.testing.assert_array_equal(hook.backward[0]["grad_outputs"][0], g)
    for later, earlier in zip(hook.backward, hook.backward[1:]):
        np.testing.assert_array_equal(later["grad_inputs"][0], earlier["grad_outputs"][0])
    np.testing.assert_array_equal(hook.backward[-1]["grad_inputs"][0], dx)
    summed: dict[str, np.ndarray] = {}
    for r in hook.backward:
        step = r["step"]
        assert set(r["grad_params"]) == set(step.layer.params)
        for pname, grad in r["grad_params"].items():
            summed[step.param_keys[pname]] = grad
    assert summed.keys() == net.grads.keys()
    for k in summed:
        np.testing.assert_array_equal(summed[k], net.grads[k])


def test_backward_node_of_a_shared_layer_is_called_per_use(rng):
    with seeded(0):
        x = dp.Input((3,), name="x", dtype="float64")
        dense = dp.create("dense", units=3, dtype="float64", label="shared")
        h = dense(x, name="first")
        h = dp.create("tanh", dtype="float64")(h, name="act")
        y = dense(h, name="second")
    net = dp.Network(x, y, fuse=False)
    hook = Recorder()
    with net.hooked(hook):
        net.forward(rng.standard_normal((4, 3)), train=True)
        net.backward(np.ones((4, 3)))
    assert hook.names("backward") == ["second", "act", "first"]
    parts = [r["grad_params"]["W"] for r in hook.backward if r["grad_params"]]
    np.testing.assert_allclose(parts[0] + parts[1], net.grads["shared/W"], rtol=1e-12)


def test_without_input_gradients_the_first_step_passes_none(data):
    x, labels = data
    net = build()
    hook = Recorder()
    with net.hooked(hook):
        net.train_step(x, labels, loss="cross_entropy", optimizer="sgd")
    first = hook.backward[-1]
    assert first["step"].name == "h+act"
    assert first["grad_inputs"] == [None]


# -- the training step --------------------------------------------------------------------------
def test_train_step_events_in_order_with_their_arguments(data):
    x, labels = data
    net = build()
    hook = Recorder()
    optimizer = dp.create_optimizer("sgd", lr=0.1)
    before = {k: v.copy() for k, v in net.params.items()}
    with net.hooked(hook):
        value = net.train_step(x, labels, loss="cross_entropy", optimizer=optimizer)
    kinds = [e[0] for e in hook.events]
    # the softmax is left out: cross-entropy of its input is computed in one pass
    assert kinds == ["forward", "forward", "loss", "backward", "backward", "before_update",
                     "after_update"]
    assert hook.names("forward") == ["h+act", "out"]
    assert hook.names("backward") == ["out", "h+act"]
    (loss_value, loss_grads), = hook.loss
    assert loss_value == value
    ((name, delta),) = loss_grads
    assert name == "probs" and delta.shape == (N, 3)
    np.testing.assert_array_equal(hook.backward[0]["grad_outputs"][0], delta)
    (_, grads), (_, params, seen_optimizer) = hook.updates
    assert seen_optimizer is optimizer
    assert grads.keys() == net.params.keys()
    for k in grads:
        np.testing.assert_array_equal(grads[k], net.grads[k])
        np.testing.assert_allclose(params[k], before[k] - 0.1 * grads[k], rtol=1e-12)
        np.testing.assert_array_equal(params[k], net.params[k])


def test_loss_computed_sees_the_weighted_total_of_several_outputs(data, rng):
    x, labels = data
    with seeded(0):
        inp = dp.Input((4,), name="x", dtype="float64")
        a = dp.create("dense", units=3, dtype="float64")(inp, name="cls")
        b = dp.create("dense", units=2, dtype="float64")(inp, name="reg")
    net = dp.Network(inp, [a, b])
    hook = Recorder()
    values = rng.standard_normal((N, 2))
    with net.hooked(hook):
        total = net.train_step(x, [labels, values], loss=["softmax_cross_entropy", "mse"],
                               optimizer="sgd", loss_weights=[1.0, 0.5])
    (value, grads), = hook.loss
    assert value == total
    assert [name for name, _ in grads] == ["cls", "reg"]


# -- attach and detach ----------------------------------------------------------------------------
def test_add_and_remove_hook(data):
    x, _ = data
    net = build()
    hook = Recorder()
    assert net.add_hook(hook) is hook
    net.forward(x)
    assert len(hook.forward) == 3
    net.remove_hook(hook)
    net.forward(x)
    assert len(hook.forward) == 3
    assert net.hooks == []


def test_hooked_detaches_at_the_end_of_the_block_even_on_error(data):
    x, _ = data
    net = build()
    a, b = Recorder(), Recorder()
    with pytest.raises(ZeroDivisionError), net.hooked(a, b):
        net.forward(x)
        raise ZeroDivisionError
    assert net.hooks == []
    net.forward(x)
    assert len(a.forward) == len(b.forward) == 3


def test_hooks_are_called_in_the_order_they_were_added(data):
    x, _ = data
    net = build()
    order = []

    class Named(dp.Hook):
        def __init__(self, name):
            self.name = name

        def forward_node(self, step, inputs, outputs, cache, cache_bytes):
            order.append((step.name, self.name))

    with net.hooked(Named("a"), Named("b")):
        net.forward(x)
    assert order == [(s.name, h) for s in net.plan for h in ("a", "b")]


def test_only_a_hook_may_be_added():
    net = build()
    with pytest.raises(dp.GraphError, match="Hook"):
        net.add_hook(lambda *args: None)


def test_a_hook_overriding_nothing_changes_nothing(data):
    x, labels = data
    plain, watched = build(), build()
    with watched.hooked(dp.Hook()):
        watched.fit(x, labels, loss="cross_entropy", epochs=2, batch_size=4, seed=0,
                    progress=False)
    plain.fit(x, labels, loss="cross_entropy", epochs=2, batch_size=4, seed=0, progress=False)
    for k in plain.params:
        assert np.array_equal(plain.params[k], watched.params[k])


# -- a hook that raises stops the call ---------------------------------------------------------
class Stop(Exception):
    pass


class RaiseAt(dp.Hook):
    def __init__(self, method: str, when: int = 0) -> None:
        self.method, self.when, self.calls = method, when, 0

    def _maybe(self):
        self.calls += 1
        if self.calls > self.when:
            raise Stop(self.method)

    def forward_node(self, step, inputs, outputs, cache, cache_bytes):
        if self.method == "forward_node":
            self._maybe()

    def backward_node(self, step, grad_outputs, grad_inputs, grad_params):
        if self.method == "backward_node":
            self._maybe()

    def loss_computed(self, value, grads):
        if self.method == "loss_computed":
            self._maybe()

    def before_update(self, grads):
        if self.method == "before_update":
            self._maybe()

    def batch_start(self, epoch, batch):
        if self.method == "batch_start":
            self._maybe()

    def batch_end(self, epoch, batch, loss):
        if self.method == "batch_end":
            self._maybe()


def test_a_raising_forward_hook_stops_inference(data):
    x, _ = data
    net = build()
    hook = RaiseAt("forward_node", when=1)
    with pytest.raises(Stop), net.hooked(hook):
        net.forward(x)
    assert hook.calls == 2  # the second step's hook raised; the third never ran
    (y,) = net.forward(x)
    assert y.shape == (N, 3)


@pytest.mark.parametrize("method", ["forward_node", "backward_node", "loss_computed",
                                    "before_update"])
def test_a_raising_hook_stops_the_training_step_before_the_update(data, method):
    x, labels = data
    net = build()
    before = {k: v.copy() for k, v in net.params.items()}
    with pytest.raises(Stop, match=method), net.hooked(RaiseAt(method)):
        net.train_step(x, labels, loss="cross_entropy", optimizer="sgd")
    for k, v in net.params.items():
        assert np.array_equal(v, before[k])
    net.train_step(x, labels, loss="cross_entropy", optimizer="sgd")  # works again
    assert not np.array_equal(net.params["out/W"], before["out/W"])


@pytest.mark.parametrize("method", ["batch_start", "batch_end", "forward_node",
                                    "before_update"])
def test_a_raising_hook_stops_fit(data, method):
    x, labels = data
    net = build()
    counter = Recorder()
    hook = RaiseAt(method, when=1)
    with pytest.raises(Stop):
        net.fit(x, labels, loss="cross_entropy", epochs=3, batch_size=4, seed=0,
                progress=False, hooks=[counter, hook])
    assert counter.names("epoch_end") == []
    assert len(counter.names("batch_start")) <= 2
    assert net.hooks == []


# -- fit ---------------------------------------------------------------------------------------
def test_fit_hooks_see_every_batch_and_epoch(data):
    x, labels = data
    net = build()
    hook = Recorder()
    history = net.fit(x, labels, loss="cross_entropy", epochs=2, batch_size=4, seed=0,
                      progress=False, hooks=[hook], validation=(x, labels))
    assert net.hooks == []  # a run's hooks watch that run only
    starts = hook.names("batch_start")
    ends = hook.names("batch_end")
    epochs = hook.names("epoch_end")
    assert starts == [(e, b) for e in range(2) for b in range(3)]
    assert [(e, b) for e, b, _ in ends] == starts
    assert [e for e, _ in epochs] == [0, 1]
    for e, metrics in epochs:
        assert metrics["loss"] == history.loss[e]
        assert metrics["val_loss"] == history.val_loss[e]
        assert metrics["val_accuracy"] == history.val_accuracy[e]
    sizes = [4, 4, 2]
    for e in range(2):
        batch_losses = [loss for ep, _, loss in ends if ep == e]
        assert np.dot(batch_losses, sizes) / N == pytest.approx(history.loss[e], rel=1e-12)
    assert len(hook.loss) == 6 and len(hook.updates) == 12
    assert [loss for _, _, loss in ends] == [value for value, _ in hook.loss]
    kinds = [e[0] for e in hook.events if e[0] in ("batch_start", "loss", "batch_end",
                                                  "epoch_end")]
    assert kinds == (["batch_start", "loss", "batch_end"] * 3 + ["epoch_end"]) * 2
    # each batch runs the plan less the softmax; validation runs it whole in inference
    per_batch = ["h+act", "out"]
    trained = [r["step"].name for r in hook.forward if r["cache"] is not None]
    assert trained == per_batch * 6


def test_network_hooks_also_see_fit(data):
    x, labels = data
    net = build()
    hook = net.add_hook(Recorder())
    net.fit(x, labels, loss="cross_entropy", epochs=1, batch_size=4, seed=0, progress=False)
    assert hook.names("batch_start") == [(0, 0), (0, 1), (0, 2)]
    assert len(hook.names("epoch_end")) == 1
    assert len(hook.loss) == 3
    assert net.hooks == [hook]


# -- anomaly detection is the same step --------------------------------------------------------
def fit_twice(make, x, y, **kwargs):
    plain, watched = make(), make()
    hp = plain.fit(x, y, progress=False, **kwargs)
    hw = watched.fit(x, y, progress=False, detect_anomaly=True, **kwargs)
    return plain, watched, hp, hw


def assert_bitwise_equal(a: dp.Network, b: dp.Network) -> None:
    assert a.params.keys() == b.params.keys()
    for k in a.params:
        assert a.params[k].tobytes() == b.params[k].tobytes(), k


@pytest.mark.parametrize(("softmax", "loss"), [
    (False, "softmax_cross_entropy"),
    (True, "cross_entropy"),
    (True, "mse"),
], ids=["logits", "softmax+cross_entropy", "softmax+mse"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_detect_anomaly_gives_bit_identical_weights(data, softmax, loss, optimizer):
    x, labels = data
    y = labels if loss != "mse" else np.eye(3)[labels]
    plain, watched, hp, hw = fit_twice(lambda: build(softmax=softmax), x, y, loss=loss,
                                       optimizer=optimizer, epochs=3, batch_size=4, seed=5)
    assert hp.loss == hw.loss
    assert_bitwise_equal(plain, watched)


def test_detect_anomaly_is_bit_identical_in_float32(data):
    x, labels = data

    def make():
        with seeded(0):
            inp = dp.Input((4,), name="x")
            h = dp.create("dense", units=5)(inp, name="h")
            h = dp.create("sigmoid")(h, name="act")
            z = dp.create("dense", units=3)(h, name="out")
            y = dp.create("softmax")(z, name="probs")
        return dp.Network(inp, y)

    plain, watched, hp, hw = fit_twice(make, x.astype(np.float32), labels,
                                       loss="cross_entropy", epochs=3, batch_size=4, seed=3)
    assert all(v.dtype == np.float32 for v in plain.params.values())
    assert hp.loss == hw.loss
    assert_bitwise_equal(plain, watched)


def test_detect_anomaly_keeps_the_softmax_cross_entropy_fusion(data):
    x, labels = data
    net = build()
    hook = Recorder()
    net.fit(x, labels, loss="cross_entropy", epochs=1, batch_size=N, seed=0, progress=False,
            detect_anomaly=True, hooks=[hook])
    assert hook.names("forward") == ["h+act", "out"]
    ((name, delta),) = hook.loss[0][1]
    assert name == "probs" and delta.shape == (N, 3)


@pytest.mark.parametrize("options", [{"recompute": 1}, {"fuse": False},
                                     {"plan_memory": False}],
                         ids=["recompute", "unfused", "no_plan_memory"])
def test_detect_anomaly_is_bit_identical_under_every_plan_option(data, options):
    x, labels = data
    plain, watched, hp, hw = fit_twice(lambda: build(**options), x, labels,
                                       loss="cross_entropy", epochs=2, batch_size=4, seed=1)
    assert hp.loss == hw.loss
    assert_bitwise_equal(plain, watched)


def test_detect_anomaly_with_multiple_outputs_is_bit_identical(data, rng):
    x, labels = data
    values = rng.standard_normal((N, 2))

    def make():
        with seeded(0):
            inp = dp.Input((4,), name="x", dtype="float64")
            h = dp.create("dense", units=5, dtype="float64")(inp, name="h")
            h = dp.create("tanh", dtype="float64")(h, name="act")
            z = dp.create("dense", units=3, dtype="float64")(h, name="logits")
            p = dp.create("softmax", dtype="float64")(z, name="cls")
            r = dp.create("dense", units=2, dtype="float64")(h, name="reg")
        return dp.Network(inp, [p, r])

    plain, watched, hp, hw = fit_twice(make, x, [labels, values],
                                       loss=["cross_entropy", "mse"], loss_weights=[1, 0.3],
                                       epochs=2, batch_size=3, seed=2)
    assert hp.loss == hw.loss
    assert_bitwise_equal(plain, watched)


class NaNAfter(dp.Layer):
    """Identity until ``armed``; then its output holds a NaN."""

    name = "nan_after"
    armed = False

    def forward(self, inputs, *, train):
        y = inputs[0].copy()
        if self.armed:
            y[0, 0] = np.nan
        return (y,), None

    def backward(self, cache, grad_outputs):
        return (grad_outputs[0],), {}


def test_detect_anomaly_names_the_node_and_keeps_the_weights(data):
    x, labels = data
    with seeded(0):
        inp = dp.Input((4,), name="x", dtype="float64")
        h = dp.create("dense", units=5, dtype="float64")(inp, name="h")
        bad = NaNAfter(dtype="float64")
        h = bad(h, name="bad")
        y = dp.create("dense", units=3, dtype="float64")(h, name="out")
    net = dp.Network(inp, y)
    net.fit(x, labels, epochs=1, batch_size=4, seed=0, progress=False, detect_anomaly=True)
    bad.armed = True
    before = {k: v.copy() for k, v in net.params.items()}
    with pytest.raises(AnomalyError, match="node 'bad'") as info:
        net.fit(x, labels, epochs=1, batch_size=4, seed=0, progress=False,
                detect_anomaly=True)
    assert "epoch 1, batch 1" in str(info.value)
    for k, v in net.params.items():
        assert np.array_equal(v, before[k])


# -- truncated BPTT with checkpoints and anomaly detection ----------------------------------------
K, STEPS, FEATURES, CLASSES = 3, 6, 2, 3


def recurrent(cell: str = "rnn", seed: int = 0) -> dp.Network:
    with seeded(seed):
        x = dp.Input((K, FEATURES), name="x", dtype="float64")
        h = dp.create(cell, units=4, return_sequences=True, dtype="float64")(x, name="rec")
        y = dp.create("dense", units=CLASSES, dtype="float64")(h, name="out")
        y = dp.create("softmax", dtype="float64")(y, name="probs")
    return dp.Network(x, y)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_bptt_with_checkpoint_and_detect_anomaly_runs_the_same_step(rng, tmp_path, cell):
    x = rng.standard_normal((8, STEPS, FEATURES))
    labels = rng.integers(0, CLASSES, (8, STEPS))
    plain, full = recurrent(cell), recurrent(cell)
    hp = plain.fit(x, labels, loss="cross_entropy", bptt=K, epochs=2, batch_size=4, seed=0,
                   progress=False)
    hook = Recorder()
    hf = full.fit(x, labels, loss="cross_entropy", bptt=K, epochs=2, batch_size=4, seed=0,
                  progress=False, checkpoint=tmp_path / "ck", detect_anomaly=True,
                  hooks=[hook], validation=(x, labels))
    assert hp.loss == hf.loss
    assert_bitwise_equal(plain, full)
    assert (tmp_path / "ck").exists() and any((tmp_path / "ck").iterdir())
    # two windows per batch, each one training step (with the softmax left out)
    assert len(hook.loss) == 2 * 2 * 2
    assert hook.names("batch_start") == [(e, b) for e in range(2) for b in range(2)]
    ev = full.evaluate(x, labels, loss="cross_entropy", bptt=K)
    assert hf.val_loss[-1] == pytest.approx(ev["loss"], rel=1e-12)
    assert 0 <= ev["accuracy"] <= 1


def test_bptt_resume_from_checkpoint_with_detect_anomaly(rng, tmp_path):
    x = rng.standard_normal((8, STEPS, FEATURES))
    labels = rng.integers(0, CLASSES, (8, STEPS))
    whole = recurrent()
    whole.fit(x, labels, loss="cross_entropy", bptt=K, epochs=2, batch_size=4, seed=0,
              progress=False)
    first = recurrent()
    first.fit(x, labels, loss="cross_entropy", bptt=K, epochs=1, batch_size=4, seed=0,
              progress=False, checkpoint=tmp_path / "ck", detect_anomaly=True)
    resumed = recurrent(seed=99)  # other initial weights: the checkpoint must restore them
    resumed.fit(x, labels, loss="cross_entropy", bptt=K, epochs=2, batch_size=4, seed=0,
                progress=False, checkpoint=tmp_path / "ck", resume=True, detect_anomaly=True)
    assert_bitwise_equal(whole, resumed)
