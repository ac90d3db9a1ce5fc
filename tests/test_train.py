"""Training: steps, fit, reproducibility, optimizers' update rules, data checks."""

from __future__ import annotations

import numpy as np
import pytest

import deltaprop
from deltaprop import DataError, create, create_optimizer
from deltaprop.data import load_digits


def small_net(seed=0):
    return deltaprop.Sequential([create("dense", units=16), create("tanh"),
                                 create("dense", units=10)], input_shape=64, seed=seed)


def test_fit_learns_digits_and_is_reproducible():
    data = load_digits()
    runs = []
    for _ in range(2):
        net = small_net()
        history = net.fit(data.x_train, data.y_train, optimizer=create_optimizer("adam", lr=0.01),
                          epochs=8, batch_size=32, seed=5, progress=False,
                          validation=(data.x_test, data.y_test))
        runs.append((net, history))
    (a, ha), (b, hb) = runs
    assert ha.loss == hb.loss
    for key in a.params:
        np.testing.assert_array_equal(a.params[key], b.params[key])
    assert ha.loss[-1] < ha.loss[0] / 4
    assert ha.val_accuracy[-1] > 0.9
    metrics = a.evaluate(data.x_test, data.y_test)
    assert metrics["accuracy"] == pytest.approx(ha.val_accuracy[-1])
    assert a.predict(data.x_test).shape == (len(data.x_test), 10)


def test_train_step_keeps_optimizer_state_across_calls(rng):
    net = small_net()
    opt = create_optimizer("sgd", lr=0.1, momentum=0.9)
    x, y = rng.standard_normal((8, 64)), rng.integers(0, 10, 8)
    first = net.train_step(x, y, loss="softmax_cross_entropy", optimizer=opt)
    for _ in range(20):
        last = net.train_step(x, y, loss="softmax_cross_entropy", optimizer=opt)
    assert opt.t == 21 and opt.state
    assert last < first


def reference_adam(p, grads, lr=0.01, b1=0.9, b2=0.999, eps=1e-8):
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return p


def reference_sgd(p, grads, lr, momentum, nesterov, wd):
    buf = None
    for g in grads:
        g = g + wd * p
        buf = g if buf is None else momentum * buf + g
        p = p - lr * (g + momentum * buf if nesterov else buf)
    return p


def test_optimizers_follow_the_published_update_rules(rng):
    p0 = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) for _ in range(5)]
    adam = create_optimizer("adam", lr=0.01)
    p = p0.copy()
    for g in grads:
        adam.step({"w": p}, {"w": g})
    np.testing.assert_allclose(p, reference_adam(p0, grads), rtol=1e-12)
    for nesterov in (False, True):
        sgd = create_optimizer("sgd", lr=0.1, momentum=0.9, nesterov=nesterov,
                               weight_decay=0.01)
        p = p0.copy()
        for g in grads:
            sgd.step({"w": p}, {"w": g})
        np.testing.assert_allclose(p, reference_sgd(p0, grads, 0.1, 0.9, nesterov, 0.01),
                                   rtol=1e-12)


def test_optimizer_state_round_trips():
    adam = create_optimizer("adam")
    p, g = np.ones(3), np.full(3, 0.5)
    adam.step({"w": p}, {"w": g})
    clone = create_optimizer("adam")
    clone.load_state_dict(adam.state_dict())
    q = p.copy()
    adam.step({"w": p}, {"w": g})
    clone.step({"w": q}, {"w": g})
    np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize(("x", "y", "message"), [
    (np.ones((4, 64)), np.array([0, 1, 2]), "4 samples but y has 3"),
    (np.full((2, 64), np.nan), np.array([0, 1]), "NaN"),
    (np.ones((2, 64)), np.array([0, 10]), "label 10 is out of range for 10 classes"),
    (np.ones((2, 64)), np.array([0.5, 1]), "whole numbers"),
    (np.ones((2, 63)), np.array([0, 1]), r"shape \(64,\)"),
])
def test_bad_training_data_is_rejected_before_training(x, y, message):
    net = small_net()
    before = {k: v.copy() for k, v in net.params.items()}
    with pytest.raises(DataError, match=message):
        net.fit(x, y, epochs=1, progress=False)
    for key, value in before.items():
        np.testing.assert_array_equal(net.params[key], value)


def test_losses_agree_with_their_definitions(rng):
    logits = rng.standard_normal((5, 4)) * 30  # large logits stay finite
    labels = rng.integers(0, 4, 5)
    ce = deltaprop.create_loss("softmax_cross_entropy")
    value, _ = ce.forward(logits, labels)
    shifted = logits - logits.max(axis=1, keepdims=True)
    expected = -(shifted[np.arange(5), labels] - np.log(np.exp(shifted).sum(axis=1))).mean()
    assert value == pytest.approx(expected)
    onehot = np.eye(4)[labels]
    assert ce.forward(logits, onehot)[0] == pytest.approx(expected)
    mse = deltaprop.create_loss("mse")
    assert mse.forward(logits, logits + 1)[0] == pytest.approx(1.0)
