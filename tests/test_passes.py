"""Graph passes: activation fusion over every registered layer, softmax with
cross-entropy at the loss, recomputation, and the opt-out switches; each must give
the unfused results within float rounding."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_registry import build_around, fusable_activations, layer_examples

import deltaprop
from deltaprop import Input, Network, create
from deltaprop.execution.passes import FusedActivation
from deltaprop.testing import check_network_gradients

ACTIVATIONS = fusable_activations()


def run_once(net, xs, seed=0):
    """Outputs, input deltas and parameter gradients of one forward/backward."""
    outs = net.forward(xs, train=True)
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal(o.shape).astype(o.dtype) for o in outs]
    grad_in = net.backward(weights)
    return outs, grad_in, {k: v.copy() for k, v in net.grads.items()}


def assert_same(a, b, rtol=1e-10, atol=1e-12):
    outs_a, gin_a, gp_a = a
    outs_b, gin_b, gp_b = b
    for x, y in zip(outs_a, outs_b, strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)
    for x, y in zip(gin_a, gin_b, strict=True):
        assert (x is None) == (y is None)
        if x is not None:
            np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)
    assert gp_a.keys() == gp_b.keys()
    for key in gp_a:
        np.testing.assert_allclose(gp_a[key], gp_b[key], rtol=rtol, atol=atol)


def test_the_registry_offers_fusable_activations():
    assert {"relu", "sigmoid", "tanh"} <= set(ACTIVATIONS)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize(("layer_class", "example"), layer_examples())
def test_fusion_matches_unfused_for_every_layer(layer_class, example, activation):
    """Every registered layer followed by every fusable activation: the fused plan gives
    the same outputs, input deltas and parameter gradients as the user graph."""
    fused, xs = build_around(layer_class, example, dtype="float64", activation=activation)
    plain, _ = build_around(layer_class, example, dtype="float64", activation=activation,
                            fuse=False)
    assert len(plain.plan) == len(plain.steps)
    assert not any(isinstance(s.layer, FusedActivation) for s in plain.plan)
    single_float_output = len(fused.steps[0].out_slots) == 1 and np.issubdtype(
        np.dtype(fused.outputs[0].dtype), np.floating)
    if single_float_output:
        assert len(fused.plan) == 1 and isinstance(fused.plan[0].layer, FusedActivation)
    assert_same(run_once(fused, [x.copy() for x in xs]), run_once(plain, [x.copy() for x in xs]))
    # the user graph is what to_spec writes, whatever ran
    assert fused.to_spec() == plain.to_spec()


def test_fused_network_passes_the_finite_difference_check(rng):
    deltaprop.seed(3)
    x = Input(5, dtype="float64")
    h = create("sigmoid", dtype="float64")(create("dense", units=7, dtype="float64")(x))
    h = create("tanh", dtype="float64")(create("dense", units=4, dtype="float64")(h))
    net = Network(x, h)
    assert [type(s.layer) for s in net.plan] == [FusedActivation, FusedActivation]
    report = check_network_gradients(net, [rng.standard_normal((3, 5))])
    assert report.max_rel_error < 1e-5


def test_no_fusion_when_the_pre_activation_is_read_elsewhere():
    """Fan-out or a network output at the pre-activation keeps the two nodes apart."""
    x = Input(4)
    z = create("dense", units=3)(x)
    y = create("relu")(z)
    net = Network(x, [y, z])
    assert [s.layer.name for s in net.plan] == ["dense", "relu"]
    x = Input(4)
    z = create("dense", units=3)(x)
    net = Network(x, create("add")(create("relu")(z), z))
    assert [s.layer.name for s in net.plan] == ["dense", "relu", "add"]


def test_opt_out_and_configure_switch_fusion_off_and_on(rng):
    net = deltaprop.Sequential([create("dense", units=6), create("relu"),
                                create("dense", units=2)], input_shape=3, seed=0, fuse=False)
    assert [s.name for s in net.plan] == [s.name for s in net.steps]
    x = rng.standard_normal((5, 3)).astype(np.float32)
    before = net.forward(x)[0]
    net.configure(fuse=True)
    assert len(net.plan) == 2
    np.testing.assert_allclose(net.forward(x)[0], before, rtol=1e-6)


class KeepsOutput(deltaprop.Layer):
    """A test layer that caches its own output: fusion must not let the activation
    overwrite it in place."""

    name = "keeps_output"

    def forward(self, inputs, *, train):
        y = inputs[0] * 2.0
        return (y,), (y if train else None)

    def backward(self, cache, grad_outputs, *, needs_grad=None):
        assert np.all(cache == cache)  # the cached array must be what forward returned
        return (grad_outputs[0] * 2.0,), {}


def test_in_place_activation_never_overwrites_an_array_a_cache_holds(rng):
    x = Input(4, dtype="float64")
    layer = KeepsOutput(dtype="float64")
    y = create("relu", dtype="float64")(layer(x))
    net = Network(x, y)
    xs = rng.standard_normal((3, 4))
    executor = net.executor()
    executor.forward(xs, train=True)
    cached = executor.caches[0][0] if net.fuse else executor.caches[0]
    assert np.any(cached < 0), "the pre-activation held by the cache was overwritten"
    (dx,) = executor.backward(np.ones((3, 4)))
    np.testing.assert_allclose(dx, 2.0 * (xs > 0))


# -- softmax with cross-entropy ----------------------------------------------------------
@pytest.mark.parametrize("one_hot", [False, True])
@pytest.mark.parametrize("shape", [(6, 5), (3, 4, 5)])
def test_one_pass_softmax_cross_entropy_equals_forward_and_backward(rng, one_hot, shape):
    logits = rng.standard_normal(shape) * 30  # large logits: stability matters
    labels = rng.integers(0, 5, shape[:-1])
    target = np.eye(5)[labels] if one_hot else labels
    loss = deltaprop.create_loss("softmax_cross_entropy")
    value, cache = loss.forward(logits, target)
    grad = loss.backward(cache)
    fused_value, fused_grad = loss.value_and_grad(logits, target)
    assert fused_value == pytest.approx(value, rel=1e-12)
    np.testing.assert_allclose(fused_grad, grad, rtol=1e-10, atol=1e-14)


def softmax_net(fuse):
    deltaprop.seed(1)
    x = Input(6, dtype="float64")
    h = create("tanh", dtype="float64")(create("dense", units=8, dtype="float64")(x))
    y = create("softmax", dtype="float64")(create("dense", units=4, dtype="float64")(h))
    return Network(x, y, fuse=fuse)


@pytest.mark.parametrize("loss_name", ["cross_entropy", "softmax_cross_entropy"])
def test_train_steps_with_loss_fusion_equal_unfused(rng, loss_name):
    """softmax layer + cross_entropy trains on the logits with the fused loss; the steps
    (loss values and parameters) agree with the unfused graph within rounding."""
    fused, plain = softmax_net(True), softmax_net(False)
    x = rng.standard_normal((10, 6))
    y = rng.integers(0, 4, 10)
    opts = [deltaprop.create_optimizer("sgd", lr=0.5) for _ in range(2)]
    for _ in range(3):
        a = fused.train_step(x, y, loss=loss_name, optimizer=opts[0])
        b = plain.train_step(x, y, loss=loss_name, optimizer=opts[1])
        assert a == pytest.approx(b, rel=1e-9)
    for key, value in fused.params.items():
        np.testing.assert_allclose(value, plain.params[key], rtol=1e-9, atol=1e-12)
    loss = deltaprop.create_loss(loss_name)
    on_probabilities = loss_name == "cross_entropy"  # the softmax then runs in the loss
    assert fused.plan.loss_fusion(0, loss).skip == (
        len(fused.plan) - 1 if on_probabilities else None)
    assert plain.plan.loss_fusion(0, loss).skip is None


def test_a_new_loss_object_is_never_mistaken_for_an_old_one(rng):
    """Fusions are remembered per loss object; a later loss of another kind (which
    may reuse a freed object's id) must get its own decision."""
    net = deltaprop.Sequential([create("dense", units=3, dtype="float64")], input_shape=4,
                               seed=0)
    x = rng.standard_normal((5, 4))
    for _ in range(3):
        net.train_step(x, rng.integers(0, 3, 5),
                       loss=deltaprop.create_loss("softmax_cross_entropy"), optimizer="sgd")
        target = rng.standard_normal((5, 3))
        mse = deltaprop.create_loss("mse")
        expected = float(np.mean((net.forward(x)[0] - target) ** 2))
        assert net.train_step(x, target, loss=mse, optimizer="sgd") == pytest.approx(expected)


def test_cross_entropy_fusion_skips_the_softmax_node_and_caches_less(rng):
    net = softmax_net(True)
    x = rng.standard_normal((10, 6))
    y = rng.integers(0, 4, 10)
    net.train_step(x, y, loss="cross_entropy", optimizer="sgd")
    fusion = net.plan.loss_fusion(0, deltaprop.create_loss("cross_entropy"))
    assert fusion.skip == len(net.plan) - 1 and fusion.loss.name == "softmax_cross_entropy"
    assert net.plan[-1].layer.name == "softmax"
    # a plain backward after a fused step needs a fresh forward
    with pytest.raises(deltaprop.GraphError):
        net.backward(np.ones((10, 4)))


# -- recomputation ------------------------------------------------------------------------
def deep_mlp(depth, recompute, fuse=True, width=16):
    layers = []
    for _ in range(depth):
        layers += [create("dense", units=width, dtype="float64"), create("tanh", dtype="float64")]
    layers.append(create("dense", units=3, dtype="float64"))
    return deltaprop.Sequential(layers, input_shape=width, seed=2, fuse=fuse,
                                recompute=recompute)


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("recompute", [True, 1, 3, 50])
def test_recomputation_gives_the_same_gradients(rng, recompute, fuse):
    xs = rng.standard_normal((4, 16))
    base = run_once(deep_mlp(8, False, fuse), [xs])
    again = run_once(deep_mlp(8, recompute, fuse), [xs])
    assert_same(again, base)


def test_recomputation_on_a_dag_with_fan_out_shared_weights_and_several_outputs(rng):
    def build(recompute):
        deltaprop.seed(0)
        x = Input(6, name="x", dtype="float64")
        z = Input(3, name="z", dtype="float64")
        shared = create("dense", units=6, dtype="float64")
        a = shared(x)
        b = shared(create("tanh", dtype="float64")(a))
        left, right = create("split", sections=[2, 4], dtype="float64")(b)
        joined = create("concat", dtype="float64")(left, z)
        fan = create("sigmoid", dtype="float64")(a)
        total = create("add", dtype="float64")(
            create("dense", units=5, dtype="float64")(joined),
            create("dense", units=5, dtype="float64")(fan))
        return Network([x, z], [total, right], recompute=recompute)

    xs = [rng.standard_normal((3, 6)), rng.standard_normal((3, 3))]
    base = run_once(build(False), xs)
    for every in (1, 2, 3):
        net = build(every)
        assert_same(run_once(net, xs), base)
        assert net.cache_bytes == 0
    report = check_network_gradients(build(2), xs)
    assert report.max_rel_error < 1e-5


def test_recomputation_lowers_the_peak_on_a_deep_mlp(rng):
    xs = rng.standard_normal((32, 16))
    peaks = {}
    for recompute in (False, True):
        net = deep_mlp(16, recompute)
        run_once(net, [xs])
        peaks[recompute] = net.peak_cache_bytes
        assert net.cache_bytes == 0
    assert peaks[True] < 0.6 * peaks[False], peaks


class Noisy(deltaprop.Layer):
    """Random in training (like dropout): must never be recomputed."""

    name = "noisy"
    recomputable = False
    train_calls: list[int] = []

    def forward(self, inputs, *, train):
        if not train:
            return (inputs[0],), None
        Noisy.train_calls.append(id(self))
        mask = np.random.default_rng().random(inputs[0].shape) > 0.5
        return (inputs[0] * mask,), mask

    def backward(self, cache, grad_outputs, *, needs_grad=None):
        return (grad_outputs[0] * cache,), {}


def test_a_layer_that_is_not_recomputable_keeps_its_cache(rng):
    deltaprop.seed(0)
    x = Input(8, dtype="float64")
    h = x
    for _ in range(4):
        h = Noisy(dtype="float64")(create("dense", units=8, dtype="float64")(h))
    net = Network(x, h, recompute=2)
    assert any(seg.rerun for seg in net.plan.segments)
    xs = rng.standard_normal((5, 8))
    Noisy.train_calls.clear()
    (out,) = net.forward(xs, train=True)
    assert len(Noisy.train_calls) == 4
    net.backward(np.ones_like(out))
    assert len(Noisy.train_calls) == 4, "a random layer ran again in backward"
    assert net.cache_bytes == 0


def test_recomputation_with_the_fused_softmax_loss_trains_like_the_plain_graph(rng):
    def build(**options):
        layers = []
        for _ in range(5):
            layers += [create("dense", units=8, dtype="float64"), create("tanh", dtype="float64")]
        layers += [create("dense", units=4, dtype="float64"), create("softmax", dtype="float64")]
        return deltaprop.Sequential(layers, input_shape=6, seed=0, **options)

    fast, plain = build(recompute=2), build(fuse=False)
    x, y = rng.standard_normal((7, 6)), rng.integers(0, 4, 7)
    for _ in range(3):
        a = fast.train_step(x, y, loss="cross_entropy", optimizer="adam")
        b = plain.train_step(x, y, loss="cross_entropy", optimizer="adam")
        assert a == pytest.approx(b, rel=1e-12)
        assert fast.cache_bytes == 0
    for key, value in fast.params.items():
        np.testing.assert_allclose(value, plain.params[key], rtol=1e-10, atol=1e-14)
