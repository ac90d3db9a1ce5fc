"""The trace of a training step (``Network.trace``): its numbers are those of the real
step. Gradient norms equal those of ``net.grads``; the deltas of a small dense network
equal a hand computation; a value read by two nodes gets two contributions whose
sum is the delta its producer receives; update ratios are those of the SGD step."""

from __future__ import annotations

import json

import numpy as np
import pytest

import deltaprop as dp
from deltaprop.tensor import seeded

N = 6


def dense_sigmoid(seed: int = 0, **options) -> dp.Network:
    """x (4) -> dense "h" (5) -> sigmoid "act" -> dense "out" (3), float64."""
    with seeded(seed):
        x = dp.Input((4,), name="x", dtype="float64")
        h = dp.create("dense", units=5, dtype="float64", label="h")(x, name="h")
        a = dp.create("sigmoid", dtype="float64")(h, name="act")
        y = dp.create("dense", units=3, dtype="float64", label="out")(a, name="out")
    return dp.Network(x, y, **options)


def fan_out(seed: int = 0) -> dp.Network:
    """x -> dense "a" read by relu "r1" and tanh "r2" -> add "sum" -> dense "out"."""
    with seeded(seed):
        x = dp.Input((4,), name="x", dtype="float64")
        a = dp.create("dense", units=5, dtype="float64", label="a")(x, name="a")
        r1 = dp.create("relu", dtype="float64")(a, name="r1")
        r2 = dp.create("tanh", dtype="float64")(a, name="r2")
        s = dp.create("add", dtype="float64")(r1, r2, name="sum")
        y = dp.create("dense", units=3, dtype="float64", label="out")(s, name="out")
    return dp.Network(x, y)


@pytest.fixture
def batch(rng):
    return rng.standard_normal((N, 4)), rng.integers(0, 3, N)


def softmax_ce_delta(z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1
    return p / len(labels)


@pytest.mark.parametrize("fuse", [True, False])
def test_deltas_and_gradients_match_a_hand_computation(batch, fuse):
    x, labels = batch
    net = dense_sigmoid(fuse=fuse)
    W1, b1 = net.params["h/W"].copy(), net.params["h/b"].copy()
    W2, b2 = net.params["out/W"].copy(), net.params["out/b"].copy()
    # by hand: forward, then the deltas of the appendix
    z1 = x @ W1 + b1
    y1 = 1 / (1 + np.exp(-z1))
    z2 = y1 @ W2 + b2
    d2 = softmax_ce_delta(z2, labels)  # the delta arriving on "out"
    dy1 = d2 @ W2.T  # the delta "out" passes to its input
    dz1 = dy1 * y1 * (1 - y1)
    grads = {"out/W": y1.T @ d2, "out/b": d2.sum(0), "h/W": x.T @ dz1, "h/b": dz1.sum(0)}
    lr = 0.1
    with net.trace() as t:
        loss = net.train_step(x, labels, loss="softmax_cross_entropy",
                              optimizer=dp.create_optimizer("sgd", lr=lr))
    data = t.to_dict()
    json.dumps(data)  # plain data
    assert data["loss"] == pytest.approx(loss)
    out = t.node("out")
    assert out.backward["delta_norms"] == pytest.approx([np.linalg.norm(d2)])
    assert out.backward["input_delta_norms"] == pytest.approx([np.linalg.norm(dy1)])
    assert out.forward["mean"] == pytest.approx(z2.mean())
    assert out.forward["std"] == pytest.approx(z2.std())
    assert out.forward["max"] == pytest.approx(z2.max())
    if fuse:  # one node runs dense and sigmoid; its delta is that of the sigmoid's output
        hidden = t.node("h")
        assert hidden is t.node("act") and hidden.fused
        assert [p["name"] for p in hidden.parts] == ["h", "act"]
        assert hidden.backward["delta_norms"] == pytest.approx([np.linalg.norm(dy1)])
        assert "σ′(z)" in hidden.rule and "Wᵀ" in hidden.rule
    else:
        assert t.node("act").backward["delta_norms"] == pytest.approx([np.linalg.norm(dy1)])
        assert t.node("act").backward["input_delta_norms"] == pytest.approx(
            [np.linalg.norm(dz1)])
        assert t.node("h").backward["delta_norms"] == pytest.approx([np.linalg.norm(dz1)])
    for node in data["nodes"]:
        for pname, value in node["backward"].get("param_grad_norms", {}).items():
            key = node["param_keys"][pname]
            assert value == pytest.approx(np.linalg.norm(grads[key]))
            assert value == pytest.approx(np.linalg.norm(net.grads[key]))
            before = {"h/W": W1, "h/b": b1, "out/W": W2, "out/b": b2}[key]
            ratio = node["update_ratios"][pname]
            if np.linalg.norm(before) == 0:
                assert ratio is None  # a bias of zeros has no ratio
            else:
                assert ratio == pytest.approx(lr * value / np.linalg.norm(before))


def test_the_schema_of_the_issue(batch):
    x, labels = batch
    net = dense_sigmoid()
    with net.trace() as t:
        net.train_step(x, labels, loss="softmax_cross_entropy", optimizer="sgd")
    data = json.loads(json.dumps(t.to_dict()))
    assert isinstance(data["loss"], float)
    for node in data["nodes"]:
        for key in ("name", "layer", "input_shapes", "output_shapes", "forward",
                    "cache_bytes", "backward", "update_ratios"):
            assert key in node
        assert set(node["forward"]) == {"mean", "std", "min", "max"}
        assert isinstance(node["backward"]["delta_norms"], list)
        params = set(node["backward"]["param_grad_norms"])
        assert params == {k.split("/", 1)[1] for k in net.params
                          if k.split("/", 1)[0] in [p["name"] for p in node["parts"]]}
    assert data["nodes"][0]["input_shapes"] == [[N, 4]]
    assert data["nodes"][0]["cache_bytes"] > 0  # dense keeps its input
    assert "loss" in t.table() and "out" in t.table()


def test_fan_out_contributions_sum_to_the_delta_of_the_producer(batch):
    x, labels = batch
    net = fan_out()
    W, b = net.params["a/W"], net.params["a/b"]
    W_out = net.params["out/W"]
    z = x @ W + b
    r1, r2 = np.maximum(z, 0), np.tanh(z)
    d_out = softmax_ce_delta((r1 + r2) @ W_out + net.params["out/b"], labels)
    d_sum = d_out @ W_out.T  # add passes it to both inputs
    from_r1, from_r2 = d_sum * (r1 > 0), d_sum * (1 - r2 ** 2)
    with net.trace() as t:
        net.train_step(x, labels, loss="softmax_cross_entropy", optimizer="sgd")
    a = t.node("a")
    (contributions,) = a.backward["contributions"]
    by_reader = {c["from"]: c["norm"] for c in contributions}
    assert by_reader == pytest.approx({"r1": np.linalg.norm(from_r1),
                                       "r2": np.linalg.norm(from_r2)})
    total = np.linalg.norm(from_r1 + from_r2)
    assert a.backward["contribution_sum_norms"] == pytest.approx([total])
    assert a.backward["delta_norms"] == pytest.approx([total])
    # a value read once has one contribution and no sum
    assert t.node("out").backward["contribution_sum_norms"] == [None]
    assert "add" in t.node("sum").rule or "Δ_i = Δ'" in t.node("sum").rule


def test_gradient_norms_of_the_digits_cnn_equal_net_grads():
    net = dp.load_spec("examples/digits_cnn.toml", seed=0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, *net.input_shapes[0])).astype("float32")
    with net.trace() as t:
        net.train_step(x, np.arange(8) % 10, loss="softmax_cross_entropy", optimizer="adam")
    seen = set()
    for node in t.nodes:
        assert node.ran and node.output_histogram["counts"]
        assert node.backward["delta_histogram"]["counts"]
        for pname, value in node.backward["param_grad_norms"].items():
            key = node.param_keys[pname]
            seen.add(key)
            assert value == pytest.approx(float(np.linalg.norm(net.grads[key])), rel=1e-5)
            assert node.update_ratios[pname] is None or node.update_ratios[pname] > 0
        if node.layer.startswith("conv2d"):
            assert "W (" in node.rule
        assert node.layer.endswith("relu") == (node.saturation is not None)
    assert seen == set(net.params)


def test_a_shared_layer_gets_the_summed_gradient(batch):
    x, labels = batch
    with seeded(0):
        inp = dp.Input((4,), name="x", dtype="float64")
        shared = dp.create("dense", units=4, dtype="float64", label="shared")
        y = shared(dp.create("tanh", dtype="float64")(shared(inp, name="first"), name="t"),
                   name="second")
        y = dp.create("dense", units=3, dtype="float64", label="out")(y, name="out")
    net = dp.Network(inp, y)
    with net.trace() as t:
        net.train_step(x, labels, loss="softmax_cross_entropy", optimizer="sgd")
    first, second = t.node("first"), t.node("second")
    assert first.shared_with == ["second"]
    expected = np.linalg.norm(net.grads["shared/W"])
    assert first.backward["param_grad_norms"]["W"] == pytest.approx(expected)
    assert second.backward["param_grad_norms"]["W"] == pytest.approx(expected)
    here = first.backward["param_grad_norms_here"]["W"]
    assert here != pytest.approx(expected)  # this node's share only


def test_saturation_of_a_sigmoid_driven_hard(batch):
    x, labels = batch
    net = dense_sigmoid(fuse=False)
    net.params["h/W"][...] *= 100
    with net.trace() as t:
        net.train_step(x, labels, loss="softmax_cross_entropy", optimizer="sgd")
    act = t.node("act")
    y = 1 / (1 + np.exp(-(x @ (net.params["h/W"]) + net.params["h/b"])))
    assert act.saturation["kind"] == "saturated"
    assert act.saturation["share"] > 0.5
    assert act.saturation["share"] == pytest.approx(np.mean((y < 0.01) | (y > 0.99)), abs=0.2)
    assert t.node("h").saturation is None  # a dense layer says nothing


def test_recomputed_and_left_out_nodes_are_marked(batch):
    x, labels = batch
    with seeded(0):
        inp = dp.Input((4,), name="x", dtype="float64")
        y = inp
        for i in range(6):
            y = dp.create("dense", units=4, dtype="float64")(y, name=f"d{i}")
            y = dp.create("tanh", dtype="float64")(y, name=f"t{i}")
        y = dp.create("dense", units=3, dtype="float64", label="logits")(y, name="logits")
        y = dp.create("softmax", dtype="float64")(y, name="probs")
    net = dp.Network(inp, y, recompute=2)
    with net.trace() as t:
        net.train_step(x, labels, loss="cross_entropy", optimizer="sgd")
    assert any(n.recomputed for n in t.nodes)
    probs = t.node("probs")
    assert not probs.ran  # the fused loss reads the logits
    assert t.to_dict()["losses"][0]["loss"] == "softmax_cross_entropy"
    assert t.to_dict()["losses"][0]["reads"] == "logits"
    for node in t.nodes:
        for pname, value in node.backward.get("param_grad_norms", {}).items():
            assert value == pytest.approx(np.linalg.norm(net.grads[node.param_keys[pname]]))


def test_an_evaluation_after_the_step_keeps_the_trace(batch):
    x, labels = batch
    net = dense_sigmoid()
    with net.trace() as t:
        net.train_step(x, labels, loss="softmax_cross_entropy", optimizer="sgd")
        before = t.to_dict()
        net.evaluate(x, labels)
        net.predict(x)
    assert t.to_dict() == before
    assert net.hooks == []  # the block removed its recorder
    with net.trace() as t:
        net.train_step(x, labels, loss="softmax_cross_entropy", optimizer="sgd")
        last = net.train_step(x, labels, loss="softmax_cross_entropy", optimizer="sgd")
    assert t.to_dict()["steps_recorded"] == 2 and t.loss == pytest.approx(last)


class NoRule(dp.Layer):
    """A third party's layer without ``describe_backward``: still traced."""

    name = "no_rule_scale"

    def forward(self, inputs, *, train):
        return (inputs[0] * 2,), None

    def backward(self, cache, grad_outputs):
        return (grad_outputs[0] * 2,), {}


def test_a_layer_without_a_rule_still_gets_its_numbers(batch):
    x, labels = batch
    with seeded(0):
        inp = dp.Input((4,), name="x", dtype="float64")
        y = dp.create("dense", units=4, dtype="float64", label="first")(inp, name="first")
        y = NoRule(dtype="float64")(y, name="scale")
        y = dp.create("dense", units=3, dtype="float64", label="out")(y, name="out")
    net = dp.Network(inp, y)
    with net.trace() as t:
        net.train_step(x, labels, loss="softmax_cross_entropy", optimizer="sgd")
    node = t.node("scale")
    assert node.rule is None
    assert node.forward["mean"] == pytest.approx(2 * t.node("first").forward["mean"])
    assert node.backward["delta_norms"][0] > 0
    assert "does not describe its rule" in t.to_html()


def test_a_forward_and_backward_without_a_training_step(batch):
    x, _ = batch
    net = dense_sigmoid(fuse=False)
    with net.trace() as t:
        (y,) = net.forward(x, train=True)
        net.backward(np.ones_like(y))
    assert t.loss is None
    assert t.node("out").backward["delta_norms"] == pytest.approx([np.sqrt(y.size)])
    for node in t.nodes:
        for pname, value in node.backward.get("param_grad_norms", {}).items():
            assert value == pytest.approx(np.linalg.norm(net.grads[node.param_keys[pname]]))


def test_every_builtin_layer_family_describes_its_rule():
    shapes = {"dense": ({"units": 3}, [(4,)]), "sigmoid": ({}, [(4,)]), "tanh": ({}, [(4,)]),
              "relu": ({}, [(4,)]), "softmax": ({}, [(4,)]),
              "conv2d": ({"filters": 2}, [(1, 5, 5)]), "max_pool2d": ({}, [(1, 4, 4)]),
              "avg_pool2d": ({}, [(1, 4, 4)]), "global_avg_pool2d": ({}, [(1, 4, 4)]),
              "rnn": ({"units": 3}, [(5, 2)]), "lstm": ({"units": 3}, [(5, 2)]),
              "gru": ({"units": 3}, [(5, 2)]), "add": ({}, [(4,), (4,)]),
              "concat": ({}, [(4,), (2,)]), "split": ({}, [(4,)])}
    for name, (config, input_shapes) in shapes.items():
        layer = dp.create(name, **config)
        inputs = [dp.Input(s) for s in input_shapes]
        layer(*inputs)
        rule = layer.describe_backward(input_shapes)
        assert rule and "Δ" in rule, name
    for name in ("mse", "softmax_cross_entropy", "cross_entropy", "binary_cross_entropy"):
        assert "Δ" in dp.create_loss(name).describe_backward((3,)), name


def test_histograms_count_like_numpy(rng):
    from deltaprop.graph.trace import BINS, histogram
    for a in (rng.standard_normal(5000).astype("float32"), rng.random((7, 9)),
              np.maximum(rng.standard_normal(300), 0)):
        h = histogram(a)
        expected, _ = np.histogram(a, bins=BINS, range=(a.min(), a.max()))
        assert h["counts"] == list(expected)
        assert (h["low"], h["high"]) == (a.min(), a.max())
    assert histogram(np.full(4, 2.0))["counts"] == [4]
    assert histogram(np.array([1.0, np.nan]))["counts"] == []
