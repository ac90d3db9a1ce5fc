"""The executor: fan-out, multi-input, multi-output, shared weights, cache freeing,
inputs without gradients, and the errors that name the node at fault."""

from __future__ import annotations

import numpy as np
import pytest

import deltaprop
from deltaprop import GraphError, Input, Network, ShapeError, create
from deltaprop.testing import check_network_gradients


def f64(name, **config):
    return create(name, dtype="float64", **config)


def test_fan_out_multi_input_multi_output_and_shared_weights(rng):
    deltaprop.seed(0)
    x = Input(6, name="x", dtype="float64")
    z = Input(3, name="z", dtype="float64")
    shared = f64("dense", units=6)
    a = shared(x)                       # shared layer, first use
    b = shared(f64("tanh")(a))          # second use of the same weights
    left, right = f64("split", sections=[2, 4])(b)  # multi-output node
    joined = f64("concat")(left, z)     # multi-input node
    fan = f64("sigmoid")(a)             # `a` fans out to tanh and sigmoid
    total = f64("add")(f64("dense", units=5)(joined), f64("dense", units=5)(fan))
    net = Network([x, z], [total, right])
    assert sum(1 for s in net.steps if s.layer is shared) == 2
    assert [k for k in net.params if k.split("/")[0] == shared.label] == [
        f"{shared.label}/W", f"{shared.label}/b"]
    assert len(net.params) == 6  # the shared layer counts once
    report = check_network_gradients(net, [rng.standard_normal((4, 6)),
                                           rng.standard_normal((4, 3))])
    assert report.max_rel_error < 1e-5


def test_caches_are_freed_after_backward_and_none_kept_in_inference(rng):
    net = deltaprop.Sequential([create("dense", units=8), create("relu"),
                                create("dense", units=3)], input_shape=5, seed=1)
    x = rng.standard_normal((16, 5)).astype(np.float32)
    net.forward(x, train=False)
    assert net.cache_bytes == 0
    net.forward(x, train=True)
    held = net.cache_bytes
    # dense caches its input (16x5), relu its output (16x8), the last dense its input:
    # the same 16x8 array as relu's output, counted once (the memory really held)
    assert held == 4 * (16 * 5 + 16 * 8)
    net.backward(np.ones((16, 3), np.float32))
    assert net.cache_bytes == 0
    assert net.peak_cache_bytes == held


def test_fan_out_deltas_are_summed_in_executor_buffers_not_in_layer_arrays():
    """Both consumers get the same returned array from `add`; summing must not alias."""
    x = Input(3, name="x", dtype="float64")
    y = f64("add")(x, x)
    net = Network(x, y)
    xs = np.arange(6, dtype=np.float64).reshape(2, 3)
    net.forward(xs, train=True)
    g = np.ones((2, 3))
    (gx,) = net.backward([g])
    np.testing.assert_array_equal(gx, 2 * g)
    np.testing.assert_array_equal(g, np.ones((2, 3)))  # the caller's array is untouched


def test_input_without_gradient_and_train_step_skip_input_deltas(rng):
    dense = create("dense", units=2)
    net = deltaprop.Sequential([dense], input_shape=4, seed=0)
    net.forward(rng.standard_normal((3, 4)), train=True)
    (gx,) = net.backward(np.ones((3, 2), np.float32), input_grads=False)
    assert gx is None
    assert set(net.grads) == {f"{dense.label}/W", f"{dense.label}/b"}


def test_backward_without_forward_is_an_error():
    net = deltaprop.Sequential([create("dense", units=2)], input_shape=4)
    with pytest.raises(GraphError, match="forward"):
        net.backward(np.ones((1, 2)))


def test_shape_mismatch_at_build_names_node_and_shapes():
    x = Input(4, name="x")
    y = create("dense", units=3)(x, name="first")
    with pytest.raises(ShapeError, match=r"node 'joined' \(add\).*\(3,\) and \(4,\)"):
        create("add")(y, x, name="joined")


def test_shared_layer_with_other_shape_is_rejected():
    layer = create("dense", units=3)
    layer(Input(4))
    with pytest.raises(ShapeError, match="shared"):
        layer(Input(5))


def test_unconnected_output_names_the_missing_input():
    x, other = Input(4, name="x"), Input(4, name="other")
    y = create("add")(x, other)
    with pytest.raises(GraphError, match="'other'"):
        Network(x, y)


def test_wrong_number_or_shape_of_arrays():
    net = deltaprop.Sequential([create("dense", units=2)], input_shape=4)
    with pytest.raises(ShapeError, match="takes 1 input"):
        net.forward([np.ones((2, 4)), np.ones((2, 4))])
    with pytest.raises(ShapeError, match=r"input 'input' expects arrays of shape \(batch, 4\)"):
        net.forward(np.ones((2, 5)))


def test_calling_a_layer_on_an_array_is_explained():
    with pytest.raises(GraphError, match="symbolic tensors"):
        create("dense", units=2)(np.ones((2, 3)))


def test_deep_chain_orders_without_recursion():
    x = Input(2)
    y = x
    for _ in range(3000):
        y = create("tanh")(y)
    net = Network(x, y)
    assert len(net.steps) == 3000
    out = net.forward(np.zeros((1, 2)))
    assert out[0].shape == (1, 2)


def test_duplicate_labels_are_rejected():
    x = Input(2)
    a = create("dense", units=2, label="fc")(x)
    b = create("dense", units=2, label="fc")(a)
    with pytest.raises(GraphError, match="'fc'"):
        Network(x, b)


def test_float32_stays_float32(rng):
    net = deltaprop.Sequential([create("dense", units=4), create("sigmoid"),
                                create("dense", units=3), create("softmax")],
                               input_shape=5, seed=0)
    (y,) = net.forward(rng.standard_normal((2, 5)), train=True)
    assert y.dtype == np.float32
    (gx,) = net.backward(np.ones((2, 3), np.float32))
    assert gx.dtype == np.float32
    assert all(g.dtype == np.float32 for g in net.grads.values())


def test_summary_lists_nodes_and_parameters():
    net = deltaprop.Sequential([create("dense", units=4, label="hidden")], input_shape=3)
    text = net.summary()
    assert "hidden" in text and "16" in text
