"""No accidental float64: a float32 network around every registered layer (from its
``examples``) keeps every activation, cached array, delta, parameter gradient and
parameter float32, fused or not, through a training step of each optimizer."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_registry import build_around, fusable_activations, layer_examples

import deltaprop
from deltaprop.execution.memory import arrays_in

ACTIVATION = fusable_activations()[0] if fusable_activations() else None


def float_arrays(obj):
    return [a for a in arrays_in(obj) if np.issubdtype(a.dtype, np.floating)]


def assert_float32(arrays, what):
    for a in arrays:
        assert a.dtype == np.float32, f"{what} is {a.dtype}, shape {a.shape}"


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("activation", [None, ACTIVATION])
@pytest.mark.parametrize(("layer_class", "example"), layer_examples())
def test_everything_stays_float32(layer_class, example, activation, fuse):
    net, xs = build_around(layer_class, example, dtype="float32", activation=activation,
                           fuse=fuse)
    assert_float32([x for x in xs if np.issubdtype(x.dtype, np.floating)], "sample input")
    assert_float32(float_arrays(net.params), "parameter")
    executor = net.executor()
    outs = executor.forward(xs, train=True)
    assert_float32(float_arrays(outs), "training output")
    for k, cache in enumerate(executor.caches):
        assert_float32(float_arrays(cache), f"cache of {net.plan[k].name}")
    rng = np.random.default_rng(0)
    grad_in = executor.backward([rng.standard_normal(o.shape).astype(np.float32)
                                 for o in outs])
    assert_float32(float_arrays(grad_in), "input delta")
    assert_float32(float_arrays(executor.grads), "parameter gradient")
    assert_float32(float_arrays(net.forward(xs, train=False)), "inference output")
    for name in ("sgd", "adam"):
        config = {"momentum": 0.9, "weight_decay": 1e-3} if name == "sgd" else {}
        opt = deltaprop.create_optimizer(name, **config)
        for _ in range(2):
            net.forward(xs, train=True)
            net.backward([np.ones(o.shape, np.float32) for o in outs])
            opt.step(net.params, net.grads)
        assert_float32(float_arrays(net.params), f"parameter after {name}")


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "cross_entropy", "mse"])
@pytest.mark.parametrize("fuse", [True, False])
def test_train_steps_with_fused_losses_stay_float32(rng, loss, fuse):
    layers = [deltaprop.create("dense", units=8), deltaprop.create("tanh"),
              deltaprop.create("dense", units=4)]
    if loss == "cross_entropy":
        layers.append(deltaprop.create("softmax"))
    net = deltaprop.Sequential(layers, input_shape=5, seed=0, fuse=fuse)
    x = rng.standard_normal((6, 5)).astype(np.float32)
    y = rng.integers(0, 4, 6) if loss != "mse" else rng.standard_normal((6, 4)).astype(
        np.float32)
    for _ in range(2):
        value = net.train_step(x, y, loss=loss, optimizer="adam")
        assert np.isfinite(value)
        assert_float32(float_arrays(net.grads), "parameter gradient")
        assert_float32(float_arrays(net.params), "parameter")
