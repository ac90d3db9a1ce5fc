"""Outputs are safe to hold: after a training forward, writing into an output can never
change what backward computes, for every registered layer (each of its examples). An
Input takes its dtype from the layers that read it unless given."""

from __future__ import annotations

import numpy as np
import pytest

import deltaprop as dp
from deltaprop.testing.kit import layer_cases, make_layer, sample_inputs


def _network(layer_class, example):
    shapes = [tuple(s) for s in example["input_shapes"]]
    layer = make_layer(layer_class, shapes, **{**example.get("config", {}),
                                               "dtype": "float64"})
    layer.input_shapes = None  # built by make_layer; let the functional call record it
    inputs = [dp.Input(s, name=f"in{i}", dtype="float64") for i, s in enumerate(shapes)]
    outputs = layer(*inputs)
    outputs = list(outputs) if isinstance(outputs, tuple) else [outputs]
    return dp.Network(inputs, outputs, fuse=False), shapes


def _backward(net, xs, grads, scribble: bool):
    outs = net.forward(xs, train=True)
    if scribble:
        for out in outs:
            assert not out.flags.writeable, "a training forward's output is writable"
            with pytest.raises(ValueError, match="read-only"):
                out[...] = 0
    deltas = net.backward(grads)
    return [d for d in deltas if d is not None], {k: v.copy() for k, v in net.grads.items()}


CASES = layer_cases(dp.get_registry().get("layer", n) for n in dp.get_registry().names())


@pytest.mark.parametrize(("layer_class", "example"), CASES,
                         ids=[f"{c.name}-{i}" for i, (c, _) in enumerate(CASES)])
def test_no_output_of_a_training_forward_can_be_written(layer_class, example):
    net, shapes = _network(layer_class, example)
    xs = sample_inputs(layer_class, shapes, batch=3, dtype="float64", seed=0)
    rng = np.random.default_rng(1)
    probe = net.forward(xs, train=True)
    net.backward([np.zeros_like(o) for o in probe])
    grads = [rng.standard_normal(o.shape) for o in probe]
    if not layer_class.recomputable:  # a random draw per call: compare one call only
        _backward(net, xs, grads, scribble=True)
        return
    clean = _backward(net, xs, grads, scribble=False)
    scribbled = _backward(net, xs, grads, scribble=True)
    for a, b in zip(clean[0], scribbled[0]):
        np.testing.assert_array_equal(a, b)
    for key in clean[1]:
        np.testing.assert_array_equal(clean[1][key], scribbled[1][key])


def test_the_issue_case_sigmoid_after_dense():
    x = dp.Input(3)
    net = dp.Network(x, dp.create("sigmoid")(dp.create("dense", units=2)(x)))
    (y,) = net.forward(np.ones((1, 3), np.float32), train=True)
    with pytest.raises(ValueError, match="read-only"):
        y += 1
    (y,) = net.forward(np.ones((1, 3), np.float32))  # inference keeps nothing: writable
    assert y.flags.writeable


def test_an_input_takes_the_dtype_of_the_layers_that_read_it():
    x = dp.Input(4)
    h = dp.create("dense", units=3, dtype="float64")(x)
    net = dp.Network(x, dp.create("tanh", dtype="float64")(h))
    assert x.dtype == "float64"
    data = np.random.default_rng(0).standard_normal((2, 4))  # float64: not rounded
    (y,) = net.forward(data)
    W, b = net.params["dense/W"], net.params["dense/b"]
    np.testing.assert_array_equal(y, np.tanh(data @ W + b))


def test_readers_of_two_dtypes_are_an_error_that_says_so():
    x = dp.Input(4, name="pixels")
    dp.create("dense", units=3, dtype="float64")(x)
    with pytest.raises(dp.GraphError, match=r"input 'pixels' has no dtype of its own.*"
                                            r"float64.*float32.*Input\(\.\.\., dtype="):
        dp.create("dense", units=3)(x)


def test_a_given_dtype_is_kept():
    x = dp.Input(4, dtype="float32")
    dp.create("dense", units=3, dtype="float64")(x)
    dp.create("dense", units=3)(x)  # no error: the input converts to float32 once
    assert x.dtype == "float32"
    assert dp.Input(4).dtype == "float32"  # read by nobody yet
