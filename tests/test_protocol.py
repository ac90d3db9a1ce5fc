"""The layer and loss protocols as a plugin author meets them: a minimal layer (no
``rng`` in ``build``, no ``needs_grad`` in ``backward``) works everywhere; fusion is
decided by what a layer or loss declares (``loss_on_input``, ``after_softmax``,
``fusable``, ``fused_with``), never by its name; an error raised inside a plugin keeps
its class, object, arguments and frame, with the node named; and the memory report
covers recurrent networks."""

from __future__ import annotations

import traceback
import types

import numpy as np
import pytest

import deltaprop as dp
from deltaprop import Layer, Loss, hookimpl
from deltaprop.execution.passes import FusedActivation, LossFusion
from deltaprop.tensor import seeded


# -- forgiving minimal layers ----------------------------------------------------------------
class Scale(Layer):
    """y = x * w, one weight per feature: ``build`` without rng, ``backward`` without
    needs_grad."""

    name = "scale_minimal"

    def build(self, input_shapes):
        self.expect_inputs(input_shapes)
        (features,) = input_shapes[0]
        self.add_param("w", (features,), lambda shape, **_: np.linspace(0.5, 1.5, shape[0]),
                       None)
        return (tuple(input_shapes[0]),)

    def forward(self, inputs, *, train):
        x = inputs[0]
        return (x * self.params["w"],), (x if train else None)

    def backward(self, cache, grad_outputs):
        g = grad_outputs[0]
        return (g * self.params["w"],), {"w": (g * cache).sum(axis=0)}


class Cube(Layer):
    """y = x ** 3, no build at all (the default keeps the shape)."""

    name = "cube_minimal"

    def forward(self, inputs, *, train):
        x = inputs[0]
        return (x ** 3,), (x if train else None)

    def backward(self, cache, grad_outputs):
        return (3 * cache ** 2 * grad_outputs[0],), {}


def minimal_net(*, activation: str | None = None, seed: int = 0, **options) -> dp.Network:
    with seeded(seed):
        x = dp.Input((4,), name="x", dtype="float64")
        # first: its input takes no delta
        h = Scale(dtype="float64", label="scale")(x, name="scale")
        if activation:
            h = dp.create(activation, dtype="float64")(h, name="act")
        h = Cube(dtype="float64")(h, name="cube")
        h = Scale(dtype="float64", label="scale2")(h, name="scale2")
        y = dp.create("dense", units=3, dtype="float64")(h, name="out")
    return dp.Network(x, y, **options)


@pytest.mark.parametrize("options", [{}, {"fuse": False}, {"recompute": 1},
                                     {"plan_memory": False}],
                         ids=["default", "unfused", "recompute", "no_plan_memory"])
def test_minimal_layers_work_in_a_network(rng, options):
    net = minimal_net(activation="relu", **options)
    x = rng.standard_normal((5, 4))
    (y,) = net.forward(x, train=True)
    (dx,) = net.backward(np.ones_like(y))
    assert y.shape == (5, 3) and dx.shape == x.shape
    assert set(net.grads) == {"scale/w", "scale2/w", "out/W", "out/b"}  # the node's name
    reference = minimal_net(activation="relu", fuse=False, plan_memory=False)
    (y_ref,) = reference.forward(x, train=True)
    (dx_ref,) = reference.backward(np.ones_like(y_ref))
    np.testing.assert_allclose(y, y_ref, rtol=1e-12)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-15)
    for k in net.grads:
        np.testing.assert_allclose(net.grads[k], reference.grads[k], rtol=1e-12, atol=1e-15)


def test_minimal_layer_fused_with_the_activation_after_it(rng):
    net = minimal_net(activation="tanh")
    assert [s.name for s in net.plan] == ["scale+act", "cube", "scale2", "out"]
    x = rng.standard_normal((5, 4))
    (y,) = net.forward(x, train=True)
    net.backward(np.ones_like(y))
    assert np.all(np.isfinite(net.grads["scale/w"]))


def test_minimal_layers_train_with_fit(rng):
    net = minimal_net(activation="relu")
    x = rng.standard_normal((12, 4))
    labels = rng.integers(0, 3, 12)
    before = {k: v.copy() for k, v in net.params.items()}
    history = net.fit(x, labels, epochs=2, batch_size=4, seed=0, progress=False,
                      detect_anomaly=True)
    assert all(np.isfinite(history.loss))
    assert not np.array_equal(net.params["scale/w"], before["scale/w"])
    assert not np.array_equal(net.params["scale2/w"], before["scale2/w"])
    net.memory_report(batch=2)


@pytest.mark.parametrize(("cls", "shape"), [(Scale, (4,)), (Cube, (3,)), (Cube, (2, 3))])
def test_minimal_layers_pass_the_gradient_check(cls, shape):
    report = dp.testing.check_layer(cls, [shape])
    assert report.checked


def test_the_executor_asks_signatures_once_per_class():
    from deltaprop.layer import backward_takes_needs_grad, build_takes_rng

    assert not build_takes_rng(Scale) and not backward_takes_needs_grad(Scale)
    assert not backward_takes_needs_grad(Cube)
    dense = type(dp.create("dense", units=2))
    assert build_takes_rng(dense) and backward_takes_needs_grad(dense)
    net = minimal_net()
    by_name = {s.name: s for s in net.plan}
    assert by_name["scale"].pass_needs_grad is False
    assert by_name["out"].pass_needs_grad is True


# -- loss fusion by protocol -------------------------------------------------------------------
class CountingLogitsLoss(Loss):
    """Softmax cross-entropy of logits that counts how often training used it."""

    name = "counting_logits_ce"
    classification = True

    def __init__(self) -> None:
        self.inner = dp.create_loss("softmax_cross_entropy")
        self.calls = 0

    def check_target(self, prediction_shape, target):
        return self.inner.check_target(prediction_shape, target)

    def forward(self, prediction, target):
        return self.inner.forward(prediction, target)

    def backward(self, cache):
        return self.inner.backward(cache)

    def value_and_grad(self, prediction, target):
        self.calls += 1
        return self.inner.value_and_grad(prediction, target)


class ThirdPartyCE(Loss):
    """Cross-entropy of probabilities from a plugin: opts in to the fusion through
    ``after_softmax`` (or not, with ``opt_in=False``)."""

    name = "third_party_ce"
    classification = True

    def __init__(self, opt_in: bool = True) -> None:
        self.opt_in = opt_in
        self.logits_loss = CountingLogitsLoss()
        self.inner = dp.create_loss("cross_entropy")
        self.calls = 0

    def check_target(self, prediction_shape, target):
        return self.inner.check_target(prediction_shape, target)

    def forward(self, prediction, target):
        self.calls += 1
        return self.inner.forward(prediction, target)

    def backward(self, cache):
        return self.inner.backward(cache)

    def after_softmax(self):
        return self.logits_loss if self.opt_in else None


def softmax_net(head=None, *, seed: int = 0) -> dp.Network:
    """x -> dense "logits" -> ``head`` (default: the registered softmax) "probs"."""
    with seeded(seed):
        x = dp.Input((4,), name="x", dtype="float64")
        z = dp.create("dense", units=3, dtype="float64")(x, name="logits")
        layer = head if head is not None else dp.create("softmax", dtype="float64")
        y = layer(z, name="probs")
    return dp.Network(x, y)


def logits_slot(net: dp.Network) -> int:
    return net.plan[[s.name for s in net.plan].index("logits")].out_slots[0]


def test_builtin_cross_entropy_after_softmax_is_fused():
    net = softmax_net()
    fusion = net.plan.loss_fusion(0, dp.create_loss("cross_entropy"))
    assert isinstance(fusion, LossFusion)
    assert fusion.loss.name == "softmax_cross_entropy"
    assert fusion.slot == logits_slot(net)
    assert net.plan[fusion.skip].name == "probs"
    assert dp.create_loss("cross_entropy").after_softmax().name == "softmax_cross_entropy"
    assert dp.create_loss("mse").after_softmax() is None
    assert dp.create_loss("softmax_cross_entropy").after_softmax() is None


@pytest.mark.parametrize("loss", ["mse", "softmax_cross_entropy"])
def test_losses_without_after_softmax_are_not_fused(loss):
    net = softmax_net()
    fusion = net.plan.loss_fusion(0, dp.create_loss(loss))
    assert fusion.skip is None and fusion.loss.name == loss
    assert fusion.slot == net.plan.output_slots[0]


def test_a_third_party_loss_opts_in_through_after_softmax(rng):
    loss = ThirdPartyCE()
    net = softmax_net()
    fusion = net.plan.loss_fusion(0, loss)
    assert fusion.loss is loss.logits_loss
    assert fusion.slot == logits_slot(net)
    assert net.plan[fusion.skip].name == "probs"
    x = rng.standard_normal((6, 4))
    labels = rng.integers(0, 3, 6)
    net.train_step(x, labels, loss=loss, optimizer="sgd")
    assert loss.logits_loss.calls == 1
    assert loss.calls == 0  # training never ran the loss on probabilities
    net.evaluate(x, labels, loss=loss)  # evaluation reports the loss on the outputs
    assert loss.calls == 1


def test_fused_and_unfused_third_party_loss_train_alike(rng):
    x = rng.standard_normal((8, 4))
    labels = rng.integers(0, 3, 8)
    fused, plain = softmax_net(), softmax_net()
    opted_in, opted_out = ThirdPartyCE(), ThirdPartyCE(opt_in=False)
    assert plain.plan.loss_fusion(0, opted_out).skip is None
    for _ in range(3):
        va = fused.train_step(x, labels, loss=opted_in, optimizer=dp.create_optimizer(
            "sgd", lr=0.5))
        vb = plain.train_step(x, labels, loss=opted_out, optimizer=dp.create_optimizer(
            "sgd", lr=0.5))
        assert va == pytest.approx(vb, rel=1e-10)
    assert opted_in.logits_loss.calls == 3 and opted_out.calls == 3
    for k in fused.params:
        np.testing.assert_allclose(fused.params[k], plain.params[k], rtol=1e-10)


class LookAlikeSoftmax(Layer):
    """Computes a softmax and is called "softmax", but declares no ``loss_on_input``."""

    name = "softmax"

    def forward(self, inputs, *, train):
        x = inputs[0]
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        e /= e.sum(axis=-1, keepdims=True)
        return (e,), (e if train else None)

    def backward(self, cache, grad_outputs):
        y, g = cache, grad_outputs[0]
        return (y * (g - (g * y).sum(axis=-1, keepdims=True)),), {}


class RegisteredLookAlike(LookAlikeSoftmax):
    name = "softmax_lookalike"


class DeclaringSoftmax(LookAlikeSoftmax):
    """Not called softmax, but declares the fusion: that is what counts."""

    name = "my_normalizer"

    def loss_on_input(self, loss):
        return loss.after_softmax()


def plugin_module(name: str, **hooks) -> types.ModuleType:
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, hookimpl(fn))
    return module


def assert_unfused_training_is_exact(net: dp.Network, rng) -> None:
    fusion = net.plan.loss_fusion(0, dp.create_loss("cross_entropy"))
    assert fusion.skip is None
    assert fusion.loss.name == "cross_entropy"
    assert fusion.slot == net.plan.output_slots[0]
    x = rng.standard_normal((6, 4))
    labels = rng.integers(0, 3, 6)
    seen = []

    class Watch(dp.Hook):
        def forward_node(self, step, inputs, outputs, cache, cache_bytes):
            seen.append(step.name)

    net.train_step(x, labels, loss="cross_entropy", optimizer="sgd")
    with net.hooked(Watch()):
        net.train_step(x, labels, loss="cross_entropy", optimizer="sgd")
    assert seen == ["logits", "probs"]  # the look-alike ran: nothing was left out


def test_an_unregistered_layer_named_softmax_is_not_fused(rng):
    net = softmax_net(LookAlikeSoftmax(dtype="float64"))
    assert net.plan[-1].layer.name == "softmax"
    assert_unfused_training_is_exact(net, rng)


def test_a_registered_look_alike_is_not_fused(rng, fresh_registry):
    registry = fresh_registry()
    registry.register_plugin(plugin_module(
        "lookalike_plugin", deltaprop_register_layers=lambda: [RegisteredLookAlike]))
    layer = dp.create("softmax_lookalike", dtype="float64")
    layer.name = "softmax"  # looks like the built-in in every message, too
    net = softmax_net(layer)
    assert_unfused_training_is_exact(net, rng)


def test_a_layer_declaring_loss_on_input_is_fused_whatever_its_name(rng):
    net = softmax_net(DeclaringSoftmax(dtype="float64"))
    fusion = net.plan.loss_fusion(0, dp.create_loss("cross_entropy"))
    assert fusion.loss.name == "softmax_cross_entropy"
    assert fusion.slot == logits_slot(net)
    assert net.plan[fusion.skip].name == "probs"
    assert net.plan.loss_fusion(0, dp.create_loss("mse")).skip is None


def test_softmax_over_another_axis_is_not_fused():
    with seeded(0):
        x = dp.Input((3, 4), name="x", dtype="float64")
        z = dp.create("dense", units=5, dtype="float64")(x, name="logits")
        y = dp.create("softmax", axis=1, dtype="float64")(z, name="probs")
    net = dp.Network(x, y)
    assert net.plan.loss_fusion(0, dp.create_loss("cross_entropy")).skip is None
    last = dp.Network(x, dp.create("softmax", axis=-1, dtype="float64")(z))
    assert last.plan.loss_fusion(0, dp.create_loss("cross_entropy")).skip is not None


def test_softmax_whose_output_is_read_elsewhere_is_not_fused():
    with seeded(0):
        x = dp.Input((4,), name="x", dtype="float64")
        z = dp.create("dense", units=3, dtype="float64")(x, name="logits")
        p = dp.create("softmax", dtype="float64")(z, name="probs")
        other = dp.create("dense", units=2, dtype="float64")(p, name="other")
    net = dp.Network(x, [p, other])
    assert net.plan.loss_fusion(0, dp.create_loss("cross_entropy")).skip is None


# -- activation fusion by protocol -------------------------------------------------------------
class Linear(Layer):
    """A bias-free dense layer (tiny, third party)."""

    name = "tiny_linear"

    def __init__(self, units: int = 3, *, dtype: str = "float32", label=None) -> None:
        super().__init__(dtype=dtype, label=label)
        self.units = units

    def build(self, input_shapes, rng=None):
        self.expect_inputs(input_shapes, ndim=1)
        self.add_param("W", (input_shapes[0][0], self.units), "glorot_uniform", rng)
        return ((self.units,),)

    def forward(self, inputs, *, train):
        x = inputs[0]
        return (x @ self.params["W"],), (x if train else None)

    def backward(self, cache, grad_outputs, *, needs_grad=None):
        g = grad_outputs[0]
        return (g @ self.params["W"].T,), {"W": cache.T @ g}


class Unfusable(Linear):
    name = "tiny_linear_unfusable"
    fusable = False


class OwnFused(Layer):
    """``Linear`` then relu, as the layer's own fused node."""

    name = "own_fused"

    def __init__(self, layer: Linear) -> None:
        super().__init__(dtype=layer.dtype, label=layer.label)
        self.layer = layer
        self.params = layer.params
        self.input_shapes, self.output_shapes = layer.input_shapes, layer.output_shapes
        self.calls = 0

    def forward(self, inputs, *, train):
        self.calls += 1
        (z,), cache = self.layer.forward(inputs, train=train)
        y = np.maximum(z, 0)
        return (y,), ((cache, y) if train else None)

    def backward(self, cache, grad_outputs, *, needs_grad=None):
        inner, y = cache
        return self.layer.backward(inner, (grad_outputs[0] * (y > 0),), needs_grad=needs_grad)


class SelfFusing(Linear):
    name = "tiny_linear_self_fusing"

    def fused_with(self, activation):
        return OwnFused(self) if activation.name == "relu" else None


def relu_net(layer_class, *, seed: int = 0, **options) -> dp.Network:
    with seeded(seed):
        x = dp.Input((4,), name="x", dtype="float64")
        h = layer_class(3, dtype="float64", label="lin")(x, name="lin")
        h = dp.create("relu", dtype="float64")(h, name="act")
        y = dp.create("dense", units=2, dtype="float64")(h, name="out")
    return dp.Network(x, y, **options)


def assert_same_step(net: dp.Network, reference: dp.Network, x: np.ndarray, *,
                     grad_rtol: float = 1e-12) -> None:
    """A training forward and a backward of ones give ``reference``'s outputs (rtol
    1e-12) and parameter gradients."""
    (y,) = net.forward(x, train=True)
    net.backward(np.ones_like(y))
    (y_ref,) = reference.forward(x, train=True)
    reference.backward(np.ones_like(y_ref))
    np.testing.assert_allclose(y, y_ref, rtol=1e-12)
    for k in net.grads:
        np.testing.assert_allclose(net.grads[k], reference.grads[k], rtol=grad_rtol)


def test_a_fusable_layer_is_fused_with_the_relu_after_it():
    net = relu_net(Linear)
    assert [s.name for s in net.plan] == ["lin+act", "out"]
    assert isinstance(net.plan[0].layer, FusedActivation)
    assert [s.name for s in net.steps] == ["lin", "act", "out"]  # the user graph stays


def test_a_layer_with_fusable_false_is_not_fused_with_the_relu_after_it(rng):
    net = relu_net(Unfusable)
    assert [s.name for s in net.plan] == ["lin", "act", "out"]
    assert not any(isinstance(s.layer, FusedActivation) for s in net.plan)
    assert_same_step(net, relu_net(Linear), rng.standard_normal((5, 4)))


def test_a_layer_brings_its_own_fused_form(rng):
    net = relu_net(SelfFusing)
    assert [s.name for s in net.plan] == ["lin+act", "out"]
    fused = net.plan[0].layer
    assert isinstance(fused, OwnFused)
    assert_same_step(net, relu_net(Linear), rng.standard_normal((5, 4)))
    assert fused.calls == 1


def test_a_non_elementwise_layer_is_never_fused_into_its_producer():
    with seeded(0):
        x = dp.Input((4,), name="x", dtype="float64")
        h = Linear(3, dtype="float64")(x, name="lin")
        h = DeclaringSoftmax(dtype="float64")(h, name="norm")
        y = dp.create("dense", units=2, dtype="float64")(h, name="out")
    net = dp.Network(x, y)
    assert [s.name for s in net.plan] == ["lin", "norm", "out"]


# -- errors keep their cause -------------------------------------------------------------------
class TwoArgError(Exception):
    """An error whose constructor takes two required arguments."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message, code)
        self.code = code
        self.extra = {"code": code}


class Exploding(Layer):
    """Raises ``self.error`` from the method named by ``where``."""

    name = "exploding"

    def __init__(self, where: str = "forward", *, dtype: str = "float32", label=None) -> None:
        super().__init__(dtype=dtype, label=label)
        self.where = where
        self.error: BaseException | None = None

    def explode(self, what: str) -> None:
        if self.where == what:
            self.error = self.make_error(what)
            raise self.error

    def make_error(self, what: str) -> BaseException:
        return RuntimeError(f"boom in {what}")

    def build(self, input_shapes, rng=None):
        self.explode("build")
        self.add_param("w", (input_shapes[0][0],), "ones", rng)
        return (tuple(input_shapes[0]),)

    def forward(self, inputs, *, train):
        self.explode("forward")
        return (inputs[0] * self.params["w"],), (inputs[0] if train else None)

    def backward(self, cache, grad_outputs, *, needs_grad=None):
        self.explode("backward")
        g = grad_outputs[0]
        return (g * self.params["w"],), {"w": (g * cache).sum(axis=0)}


class ExplodingTwoArgs(Exploding):
    name = "exploding_two_args"

    def make_error(self, what):
        return TwoArgError(f"two-arg failure in {what}", 42)


class ExplodingKeyError(Exploding):
    name = "exploding_key_error"

    def make_error(self, what):
        return KeyError("missing_key")


def exploding_net(layer: Exploding) -> dp.Network:
    with seeded(0):
        x = dp.Input((3,), name="x", dtype="float64")
        h = dp.create("dense", units=3, dtype="float64")(x, name="before")
        h = layer(h, name="bad")
        y = dp.create("dense", units=2, dtype="float64")(h, name="after")
    return dp.Network(x, y)


def frames(exc: BaseException) -> list[tuple[str, str]]:
    return [(f.filename, f.name) for f in traceback.extract_tb(exc.__traceback__)]


def trigger(where: str, layer: Exploding, rng, via: str = "network") -> None:
    if where == "build":
        x = dp.Input((3,), name="x", dtype="float64")
        layer(x, name="bad")
        return
    net = exploding_net(layer)
    x = rng.standard_normal((4, 3))
    if via == "fit":
        net.fit(x, rng.integers(0, 2, 4), epochs=1, progress=False)
    elif via == "predict":
        net.predict(x)
    else:
        (y,) = net.forward(x, train=True)
        net.backward(np.ones_like(y))


@pytest.mark.parametrize("where", ["build", "forward", "backward"])
def test_an_error_in_a_plugin_keeps_its_class_object_and_frame(rng, where):
    layer = Exploding(where, dtype="float64")
    with pytest.raises(RuntimeError) as info:
        trigger(where, layer, rng)
    exc = info.value
    assert exc is layer.error
    assert type(exc) is RuntimeError
    assert str(exc) == f"node 'bad' (exploding): boom in {where}"
    assert (__file__, where) in frames(exc)
    assert (__file__, "explode") in frames(exc)


@pytest.mark.parametrize("where", ["build", "forward", "backward"])
def test_an_error_class_with_two_required_arguments_arrives_intact(rng, where):
    layer = ExplodingTwoArgs(where, dtype="float64")
    with pytest.raises(TwoArgError) as info:
        trigger(where, layer, rng)
    exc = info.value
    assert exc is layer.error
    assert exc.code == 42 and exc.extra == {"code": 42}
    assert exc.args == (f"node 'bad' (exploding_two_args): two-arg failure in {where}", 42)
    assert (__file__, where) in frames(exc)


@pytest.mark.parametrize(("where", "via"), [("forward", "fit"), ("backward", "fit"),
                                            ("forward", "predict")])
def test_errors_from_training_and_prediction_keep_their_cause(rng, where, via):
    layer = ExplodingTwoArgs(where, dtype="float64")
    with pytest.raises(TwoArgError) as info:
        trigger(where, layer, rng, via=via)
    exc = info.value
    assert exc is layer.error and exc.code == 42
    assert exc.args[0].startswith("node 'bad' (exploding_two_args): ")
    assert (__file__, where) in frames(exc)


def test_an_error_whose_message_is_not_its_first_argument_gets_a_note(rng):
    layer = ExplodingKeyError("forward", dtype="float64")
    with pytest.raises(KeyError) as info:
        trigger("forward", layer, rng)
    exc = info.value
    assert exc is layer.error and exc.args == ("missing_key",)
    assert "node 'bad' (exploding_key_error)" in getattr(exc, "__notes__", [])
    assert (__file__, "forward") in frames(exc)


def test_a_deltaprop_error_in_build_also_names_the_input_shapes():
    class Picky(Layer):
        name = "picky"

        def build(self, input_shapes):
            raise dp.ShapeError("wants something else")

    x = dp.Input((3,), name="x", dtype="float64")
    with pytest.raises(dp.ShapeError) as info:
        Picky(dtype="float64")(x, name="bad")
    message = str(info.value)
    assert message.startswith("node 'bad' (picky)")
    assert "(batch, 3)" in message and message.endswith("wants something else")


def test_the_network_works_again_after_a_plugin_error(rng):
    layer = Exploding("backward", dtype="float64")
    net = exploding_net(layer)
    x = rng.standard_normal((4, 3))
    (y,) = net.forward(x, train=True)
    with pytest.raises(RuntimeError):
        net.backward(np.ones_like(y))
    layer.where = "nowhere"
    (y,) = net.forward(x, train=True)
    (dx,) = net.backward(np.ones_like(y))
    assert dx.shape == x.shape


# -- the memory report on recurrent networks ---------------------------------------------------
def recurrent_net(kind: str) -> dp.Network:
    with seeded(0):
        x = dp.Input((5, 3), name="x", dtype="float64")
        if kind == "bidirectional":
            h = dp.create("bidirectional", cell="lstm", units=4, return_sequences=True,
                          dtype="float64")(x, name="rec")
        elif kind == "bidirectional_last":
            h = dp.create("bidirectional", cell="gru", units=4, dtype="float64")(x, name="rec")
        else:
            h = dp.create(kind, units=4, return_sequences=True, dtype="float64")(x, name="rec")
        if kind != "bidirectional_last":
            h = dp.create(kind if kind in ("rnn", "lstm", "gru") else "rnn", units=3,
                          dtype="float64")(h, name="rec2")
        h = dp.create("dense", units=2, dtype="float64")(h, name="out")
        y = dp.create("relu", dtype="float64")(h, name="act")
    return dp.Network(x, y)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru", "bidirectional", "bidirectional_last"])
@pytest.mark.parametrize("recompute", [False, True])
def test_memory_report_on_recurrent_networks(kind, recompute):
    net = recurrent_net(kind)
    net.configure(recompute=recompute)
    report = net.memory_report(batch=4)
    assert report.batch == 4
    rows = [n.node for n in report.nodes if n.node != "(inputs)"]
    assert rows == [s.name for s in net.plan]
    assert report.peak_bytes > 0
    by_node = {n.node: n for n in report.nodes}
    if not recompute:
        assert by_node["rec"].cached_bytes > 0
        assert report.total_cached_bytes == report.peak_bytes
    text = str(report)
    assert "rec" in text and "peak bytes held for backward" in text
    assert report.as_dict()["batch"] == 4


def test_memory_report_of_a_recurrent_network_matches_the_executor():
    net = recurrent_net("bidirectional")
    report = net.memory_report(batch=4)
    x = np.zeros((4, 5, 3))
    net.forward(x, train=True)
    assert net.peak_cache_bytes == report.peak_bytes


# -- element-wise activations by protocol ------------------------------------------------------
class Softplus(Layer):
    """A third-party activation: element-wise, derivative written from its output."""

    name = "softplus_third_party"
    elementwise = True

    def forward(self, inputs, *, train):
        y = np.logaddexp(0, inputs[0])
        return (y,), (y if train else None)

    def backward_from_output(self, y, grad):
        return grad * -np.expm1(-y)  # sigmoid(x) = 1 - exp(-softplus(x))

    def backward(self, cache, grad_outputs):
        return (self.backward_from_output(cache, grad_outputs[0]),), {}


class SoftplusNoShortcut(Softplus):
    """Element-wise, but no ``backward_from_output``: nothing to fuse with."""

    name = "softplus_no_shortcut"
    backward_from_output = Layer.backward_from_output

    def backward(self, cache, grad_outputs):
        return (grad_outputs[0] * -np.expm1(-cache),), {}


@pytest.mark.parametrize(("activation", "fused"), [(Softplus, True),
                                                   (SoftplusNoShortcut, False)])
def test_a_third_party_activation_fuses_when_it_declares_how(rng, activation, fused):
    with seeded(0):
        x = dp.Input((4,), name="x", dtype="float64")
        h = Linear(3, dtype="float64", label="lin")(x, name="lin")
        h = activation(dtype="float64")(h, name="act")
        y = dp.create("dense", units=2, dtype="float64")(h, name="out")
    net = dp.Network(x, y)
    unfused = dp.Network(x, y, fuse=False)
    names = [s.name for s in net.plan]
    assert names == (["lin+act", "out"] if fused else ["lin", "act", "out"])
    assert_same_step(net, unfused, rng.standard_normal((5, 4)), grad_rtol=1e-10)


# -- state carried by protocol -----------------------------------------------------------------
class RunningSum(Layer):
    """Cumulative sum over the time axis (axis 1); carries the running total."""

    name = "running_sum"

    def forward(self, inputs, *, train):
        return self.forward_with_state(inputs, train=train, state=None)[:2]

    def carries_state(self):
        return True

    def forward_with_state(self, inputs, *, train, state):
        x = inputs[0]
        start = state[0] if state is not None else np.zeros((x.shape[0], *x.shape[2:]))
        y = np.cumsum(x, axis=1) + start[:, None]
        return (y,), (True if train else None), [y[:, -1]]

    def backward(self, cache, grad_outputs):
        g = grad_outputs[0]
        return (np.flip(np.cumsum(np.flip(g, axis=1), axis=1), axis=1),), {}


def test_a_third_party_layer_carries_state_through_the_protocol(rng):
    x = dp.Input((3, 2), name="x", dtype="float64")
    net = dp.Network(x, RunningSum(dtype="float64")(x, name="sum"))
    seq = rng.standard_normal((4, 6, 2))
    whole = np.cumsum(seq, axis=1)
    state = dp.CarriedState()
    (first,) = net.forward(seq[:, :3], state=state)
    (second,) = net.forward(seq[:, 3:], state=state)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), whole, rtol=1e-12)
    assert len(state) == 1
    (fresh,) = net.forward(seq[:, 3:])  # no state given: the layer's usual start
    np.testing.assert_allclose(fresh, np.cumsum(seq[:, 3:], axis=1), rtol=1e-12)
    state.reset()
    (again,) = net.forward(seq[:, 3:], state=state)
    np.testing.assert_allclose(again, fresh, rtol=1e-12)
    (other_batch,) = net.forward(seq[:2, :3], state=state)  # another batch size: afresh
    np.testing.assert_allclose(other_batch, np.cumsum(seq[:2, :3], axis=1), rtol=1e-12)


def recurrent_pair(kind: str, steps: int, window: int):
    """The same cell (same weights) on whole sequences and on windows."""
    nets = []
    for t in (steps, window):
        with seeded(3):
            x = dp.Input((t, 2), name="x", dtype="float64")
            h = dp.create(kind, units=4, return_sequences=True, dtype="float64")(x, name="rec")
            y = dp.create("dense", units=3, dtype="float64")(h, name="out")
        nets.append(dp.Network(x, y))
    whole, windowed = nets
    for k in whole.params:
        assert np.array_equal(whole.params[k], windowed.params[k])
    return whole, windowed


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_recurrent_layers_continue_from_the_last_call(rng, kind):
    whole, windowed = recurrent_pair(kind, 6, 3)
    assert all(s.carries_state for s in windowed.plan if s.name == "rec")
    seq = rng.standard_normal((4, 6, 2))
    (expected,) = whole.forward(seq)
    state = dp.CarriedState()
    parts = [windowed.forward(seq[:, i:i + 3], state=state)[0] for i in (0, 3)]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), expected, rtol=1e-10)
    state = dp.CarriedState()
    parts = [windowed.predict(seq[:, i:i + 3], state=state) for i in (0, 3)]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), expected, rtol=1e-10)
    (restart,) = windowed.forward(seq[:, 3:])
    assert not np.allclose(restart, expected[:, 3:])


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_evaluate_with_bptt_reads_whole_sequences(rng, kind):
    whole, windowed = recurrent_pair(kind, 6, 3)
    seq = rng.standard_normal((5, 6, 2))
    labels = rng.integers(0, 3, (5, 6))
    expected = whole.evaluate(seq, labels)
    got = windowed.evaluate(seq, labels, bptt=3, batch_size=2)
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-10)
    assert got["accuracy"] == pytest.approx(expected["accuracy"])


def test_recurrent_layers_with_initial_state_inputs_do_not_carry_state():
    rnn = dp.create("rnn", units=2, initial_state=True, return_sequences=True)
    assert rnn.carries_state() is False
    assert dp.create("rnn", units=2).carries_state() is True
    assert dp.create("dense", units=2).carries_state() is False
