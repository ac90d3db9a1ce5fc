"""Behaviour of the contrib layers beyond the gradient check: dropout's seeding and
inference identity, batch norm's running statistics through training, save/load and
the optimizer, attention's causal mask, and use by name from a spec file."""

from __future__ import annotations

import numpy as np
import pytest

import deltaprop
from deltaprop import ConfigError, ShapeError


def run(layer, *arrays, train):
    outputs, cache = layer.forward(tuple(arrays), train=train)
    return outputs[0], cache


def built(name, *shapes, **config):
    layer = deltaprop.create(name, **config)
    layer.build(shapes, rng=np.random.default_rng(0))
    return layer


def test_everything_is_registered_with_its_provider():
    registry = deltaprop.get_registry()
    for name in ("dropout", "batch_norm", "layer_norm", "gelu", "silu", "leaky_relu", "elu",
                 "attention"):
        provider = registry.provider("layer", name)
        assert provider.distribution == "deltaprop-contrib"
        assert provider.version
    assert registry.provider("optimizer", "rmsprop").distribution == "deltaprop-contrib"
    assert registry.provider("loss", "huber").distribution == "deltaprop-contrib"


# -- dropout --------------------------------------------------------------------------
def test_dropout_is_the_identity_at_inference(rng):
    x = rng.standard_normal((4, 10)).astype(np.float32)
    y, cache = run(built("dropout", (10,), rate=0.7, seed=1), x, train=False)
    assert cache is None
    np.testing.assert_array_equal(y, x)


def test_dropout_masks_are_seeded_fresh_per_call_and_scaled(rng):
    x = np.ones((200, 50), dtype=np.float32)
    a, b = built("dropout", (50,), rate=0.25, seed=3), built("dropout", (50,), rate=0.25, seed=3)
    first_a, _ = run(a, x, train=True)
    first_b, _ = run(b, x, train=True)
    np.testing.assert_array_equal(first_a, first_b)  # same seed, same masks
    second_a, _ = run(a, x, train=True)
    assert not np.array_equal(first_a, second_a)  # a fresh mask every call
    assert set(np.unique(first_a)) == {0.0, np.float32(1 / 0.75)}
    assert abs(float((first_a == 0).mean()) - 0.25) < 0.02
    assert first_a.dtype == np.float32


def test_dropout_backward_uses_the_mask_of_its_own_call(rng):
    layer = built("dropout", (6,), rate=0.5, seed=0)
    x = rng.standard_normal((3, 6))
    y1, c1 = run(layer, x, train=True)
    y2, c2 = run(layer, x, train=True)
    g = np.ones_like(x)
    (d2,), _ = layer.backward(c2, (g,))
    (d1,), _ = layer.backward(c1, (g,))
    np.testing.assert_array_equal(d1 != 0, y1 != 0)
    np.testing.assert_array_equal(d2 != 0, y2 != 0)


def test_dropout_rejects_a_rate_of_one():
    with pytest.raises(ConfigError, match="rate must be < 1"):
        deltaprop.create("dropout", rate=1.0)


# -- batch norm -----------------------------------------------------------------------
def test_batch_norm_train_uses_batch_statistics_and_eval_running_ones(rng):
    layer = built("batch_norm", (3,), momentum=0.5)
    x = (rng.standard_normal((64, 3)) * 4 + 10).astype(np.float32)
    y, _ = run(layer, x, train=True)
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(axis=0), 1, atol=1e-3)
    np.testing.assert_allclose(layer.params["running_mean"], 0.5 * x.mean(axis=0), rtol=1e-5)
    expected_var = 0.5 * 1 + 0.5 * x.var(axis=0, ddof=1)
    np.testing.assert_allclose(layer.params["running_var"], expected_var, rtol=1e-5)
    before = {k: v.copy() for k, v in layer.params.items()}
    y_eval, cache = run(layer, x, train=False)
    assert cache is None
    assert not np.allclose(y_eval, y, atol=1e-2)  # eval differs: running stats lag
    for key, value in before.items():
        np.testing.assert_array_equal(layer.params[key], value)


def test_batch_norm_channels_first_normalises_per_channel(rng):
    layer = built("batch_norm", (2, 3, 3), axis=1)
    x = rng.standard_normal((5, 2, 3, 3)) + np.array([5.0, -5.0])[None, :, None, None]
    y, _ = run(layer, x.astype(np.float32), train=True)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    assert layer.params["gamma"].shape == (2,)


def test_batch_norm_rejects_the_batch_axis():
    with pytest.raises(ConfigError, match="axis"):
        deltaprop.create("batch_norm", axis=0)
    layer = deltaprop.create("batch_norm", axis=3)
    with pytest.raises(ShapeError, match=r"axis 3.*\(batch, 4\)"):
        layer.build([(4,)])


def network_with_batch_norm():
    x = deltaprop.Input(4, name="x")
    h = deltaprop.create("dense", units=5, label="dense")(x)
    h = deltaprop.create("batch_norm", label="bn")(h)
    y = deltaprop.create("dense", units=2, label="out")(h)
    return deltaprop.Network([x], [y])


def test_the_optimizer_never_trains_running_statistics(rng):
    with deltaprop.tensor.seeded(0):
        net = network_with_batch_norm()
    assert "bn/running_mean" in net.params
    x = rng.standard_normal((16, 4)).astype(np.float32)
    y = rng.integers(0, 2, 16)
    h = x @ net.params["dense/W"] + net.params["dense/b"]  # what batch norm will see
    sgd = deltaprop.create_optimizer("sgd", lr=0.1, momentum=0.9, weight_decay=0.5)
    net.train_step(x, y, loss="softmax_cross_entropy", optimizer=sgd)
    assert "bn/running_mean" not in net.grads and "bn/gamma" in net.grads
    assert not any(key.startswith("bn/running") for key in sgd.state)
    # moved by the forward pass alone (momentum 0.1), not decayed nor stepped by SGD
    np.testing.assert_allclose(net.params["bn/running_mean"], 0.1 * h.mean(axis=0),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(net.params["bn/running_var"],
                               0.9 + 0.1 * h.var(axis=0, ddof=1), rtol=1e-5)
    mean_after_one = net.params["bn/running_mean"].copy()
    net.forward(x, train=False)
    np.testing.assert_array_equal(net.params["bn/running_mean"], mean_after_one)


def test_running_statistics_survive_save_and_load(tmp_path, rng):
    with deltaprop.tensor.seeded(0):
        net = network_with_batch_norm()
    x = rng.standard_normal((32, 4)).astype(np.float32)
    for _ in range(3):
        net.train_step(x, rng.integers(0, 2, 32), loss="softmax_cross_entropy",
                       optimizer="adam")
    deltaprop.save(net, tmp_path / "bn.npz")
    loaded = deltaprop.load(tmp_path / "bn.npz")
    np.testing.assert_array_equal(loaded.params["bn/running_var"], net.params["bn/running_var"])
    np.testing.assert_array_equal(loaded.predict(x), net.predict(x))


# -- attention ------------------------------------------------------------------------
def test_causal_attention_ignores_later_keys_and_values(rng):
    layer = built("attention", (4, 6), (4, 6), (4, 6), num_heads=2, causal=True)
    q, k, v = (rng.standard_normal((2, 4, 6)) for _ in range(3))
    y, _ = run(layer, q, k, v, train=False)
    k2, v2 = k.copy(), v.copy()
    k2[:, 3], v2[:, 3] = 100.0, -100.0  # only the last query may see position 3
    y2, _ = run(layer, q, k2, v2, train=False)
    np.testing.assert_allclose(y2[:, :3], y[:, :3], rtol=1e-6, atol=1e-6)
    assert not np.allclose(y2[:, 3], y[:, 3])


def test_self_attention_sums_the_deltas_of_its_three_uses(rng):
    x = deltaprop.Input((3, 4), name="x", dtype="float64")
    y = deltaprop.create("attention", num_heads=2, dtype="float64")(x, x, x)
    net = deltaprop.Network([x], [y])
    report = deltaprop.testing.check_network_gradients(net, [rng.standard_normal((2, 3, 4))])
    assert "network input 0" in report.checked


def test_attention_shape_errors_name_both_shapes():
    q = deltaprop.Input((3, 5), name="q")
    k = deltaprop.Input((4, 5), name="k")
    v = deltaprop.Input((6, 5), name="v")
    with pytest.raises(ShapeError, match=r"node 'att'.*\(4, 5\).*\(6, 5\)"):
        deltaprop.create("attention", num_heads=1)(q, k, v, name="att")


# -- by name, from a spec -------------------------------------------------------------
SPEC = {
    "name": "contrib_mlp",
    "inputs": {"x": [8]},
    "outputs": ["logits"],
    "nodes": [
        {"name": "h", "layer": "dense", "inputs": ["x"], "units": 16},
        {"name": "norm", "layer": "layer_norm", "inputs": ["h"]},
        {"name": "act", "layer": "gelu", "inputs": ["norm"]},
        {"name": "drop", "layer": "dropout", "inputs": ["act"], "rate": 0.1, "seed": 0},
        {"name": "logits", "layer": "dense", "inputs": ["drop"], "units": 3},
    ],
}


def test_a_spec_composes_contrib_layers_by_name_and_trains(rng):
    net = deltaprop.load_spec(SPEC, seed=0)
    assert net.to_spec()["nodes"][3]["seed"] == 0
    x = rng.standard_normal((96, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    opt = deltaprop.create_optimizer("rmsprop", lr=0.01)
    losses = [net.train_step(x, y, loss="softmax_cross_entropy", optimizer=opt)
              for _ in range(40)]
    assert losses[-1] < 0.6 * losses[0]


def test_huber_is_quadratic_inside_delta_and_linear_outside():
    huber = deltaprop.create_loss("huber", delta=1.0)
    value, _ = huber.forward(np.array([[0.5, 3.0]]), np.zeros((1, 2)))
    assert value == pytest.approx((0.5 * 0.25 + (3.0 - 0.5)) / 2)
